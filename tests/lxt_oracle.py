"""LXT 2.1 (efficient mode) as an oracle, run in its own process.

    python tests/lxt_oracle.py MODEL_DIR OUT_FILE [MODEL_DIR OUT_FILE ...] --rule attnlrp|cp_lrp

``--rule`` may be given twice (``--rule attnlrp --rule cp_lrp``); OUT_FILE then holds ``{rule}``,
and each rule runs in a child forked after the imports (LXT's patches of the two rules cannot
live in one process), in parallel.  A pair is skipped for a rule whose OUT_FILE is named in
``--skip`` (e.g. a model LXT has no map for under that rule).

Each MODEL_DIR is written by ``tests/_tiny_transformers.save`` (spec.json, state.pt, inputs.pt);
the spec also holds ``target`` (the logit index), ``output`` ("last": ``logits[:, -1]``,
"logits": ``logits``) and for the ViT ``gamma`` (None, or ``{"conv": g, "linear": g}`` for
zennit's Gamma rule on ``nn.Conv2d`` / ``nn.Linear`` modules through ``lxt.efficient.
monkey_patch_zennit``, the way LXT explains vision transformers).

LXT's ``monkey_patch`` rewrites transformers' and torch's classes for the whole process, so it
must never run inside the test process: this script applies the patch map of the rule first,
then builds every model from its saved spec and state (classes looked up after patching, as
LXT requires), and writes ``{"relevance", "output", "logits_unpatched"}`` to OUT_FILE with
``torch.save``: the relevance at ``inputs_embeds`` (HF models) or at the pixels (ViT) is
``x * x.grad`` after backpropagating ``sum over the batch of output[:, target]`` (LXT's usage: the
target logit with gradient 1).  ``logits_unpatched`` is the model output before patching, which
the tests compare with their own to make sure both processes explain the same model.

Where LXT 2.1 ships no patch map for a (model, rule), the run fails with a message; the ViT's
"attnlrp" map below is composed of LXT's own primitives (``divide_gradient`` at the inputs of
``nn.MultiheadAttention``, as ``lxt.efficient.patches.wrap_attention_forward`` does for HF
attention), since LXT 2.1 only ships a CP-LRP map for torchvision's ViT.
"""
import argparse
import importlib
import os
import sys
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _tiny_transformers as T  # noqa: E402

LXT_MODULES = {  # transformers module -> lxt.efficient.models submodule
    "transformers.models.gpt2.modeling_gpt2": "gpt2",
    "transformers.models.bert.modeling_bert": "bert",
    "transformers.models.llama.modeling_llama": "llama",
    "transformers.models.qwen2.modeling_qwen2": "qwen2",
    "transformers.models.gemma3.modeling_gemma3": "gemma3",
}
MAP_NAME = {"attnlrp": "attnLRP", "cp_lrp": "cp_LRP"}


def _vit_attnlrp_map():
    from torchvision.models import vision_transformer

    from lxt.efficient.patches import layer_norm_forward, non_linear_forward, patch_method
    from lxt.efficient.rules import divide_gradient

    def mha_forward(self, query, key, value, *args, **kwargs):
        # the uniform rule on q·kᵀ (½) and on A·v (½): q, k get ¼, v gets ½ of the gradient
        return self.original_forward(divide_gradient(query, 4), divide_gradient(key, 4),
                                     divide_gradient(value, 2), *args, **kwargs)

    from functools import partial
    return {
        vision_transformer.nn.GELU: partial(patch_method, non_linear_forward, keep_original=True),
        vision_transformer.nn.LayerNorm: partial(patch_method, layer_norm_forward),
        vision_transformer.nn.MultiheadAttention: partial(patch_method, mha_forward,
                                                          keep_original=True),
    }


def patch_all(specs, rule):
    from lxt.efficient import monkey_patch
    done = set()
    for spec in specs:
        key = spec["module"] if spec["kind"] == "hf" else "vit"
        if key in done:
            continue
        done.add(key)
        if spec["kind"] == "hf":
            lxt_mod = importlib.import_module("lxt.efficient.models." + LXT_MODULES[key])
            if not hasattr(lxt_mod, MAP_NAME[rule]):
                raise SystemExit(f"LXT 2.1 has no {MAP_NAME[rule]} patch map for {key}")
            patch_map = getattr(lxt_mod, MAP_NAME[rule])
        else:
            if rule == "cp_lrp":
                from lxt.efficient.models.vit_torch import cp_LRP as patch_map
            else:
                patch_map = _vit_attnlrp_map()
            if any(s.get("gamma") for s in specs if s["kind"] == "vit"):
                from lxt.efficient import monkey_patch_zennit
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    monkey_patch_zennit()
        with warnings.catch_warnings():
            # torch.nn.LayerNorm / Dropout are shared by several maps: "already patched"
            warnings.simplefilter("ignore")
            monkey_patch(importlib.import_module(key) if spec["kind"] == "hf" else None,
                         patch_map)


def _select(spec, out):
    logits = out.logits if hasattr(out, "logits") else out
    if spec.get("output", "last") == "last" and logits.dim() == 3:
        return logits[:, -1]
    return logits


def relevance(model, spec, inputs):
    composite = None
    if spec["kind"] == "hf":
        x = inputs["inputs_embeds"].clone().requires_grad_(True)
        out = model(inputs_embeds=x, attention_mask=inputs["attention_mask"])
    else:
        x = inputs.clone().requires_grad_(True)
        if spec.get("gamma"):
            import zennit.rules as z_rules
            from zennit.composites import LayerMapComposite
            composite = LayerMapComposite([
                (torch.nn.Conv2d, z_rules.Gamma(spec["gamma"]["conv"])),
                (torch.nn.Linear, z_rules.Gamma(spec["gamma"]["linear"])),
            ])
            composite.register(model)
        out = model(x)
    y = _select(spec, out)
    y[:, spec["target"]].sum().backward()
    if composite is not None:
        composite.remove()
    return (x * x.grad).detach(), y.detach()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+", help="MODEL_DIR OUT_FILE pairs")
    ap.add_argument("--rule", choices=sorted(MAP_NAME), required=True, action="append")
    ap.add_argument("--skip", action="append", default=[], help="OUT_FILE not to write")
    args = ap.parse_args(argv)
    if len(args.paths) % 2:
        ap.error("MODEL_DIR OUT_FILE come in pairs")
    rules = list(dict.fromkeys(args.rule))
    if len(rules) > 1 and not all("{rule}" in o for o in args.paths[1::2]):
        ap.error("with several --rule, every OUT_FILE must contain {rule}")
    jobs = list(zip(args.paths[::2], args.paths[1::2]))
    torch.set_num_threads(1)
    # import everything the patch maps need before forking (shared by the children)
    import lxt.efficient  # noqa: F401
    import lxt.efficient.models  # noqa: F401

    import json
    specs = []
    for d, _ in jobs:
        with open(os.path.join(d, "spec.json")) as fh:
            specs.append(json.load(fh))
    # the unpatched output of every model, before LXT touches any class
    plain = []
    for d, _ in jobs:
        model, spec, inputs = T.load(d)
        with torch.no_grad():
            if spec["kind"] == "hf":
                out = model(inputs_embeds=inputs["inputs_embeds"],
                            attention_mask=inputs["attention_mask"])
            else:
                out = model(inputs)
        plain.append(_select(spec, out).detach())
        del model

    def run(rule):
        todo = [(d, o.format(rule=rule), before, spec)
                for (d, o), before, spec in zip(jobs, plain, specs)
                if o.format(rule=rule) not in args.skip]
        patch_all([t[3] for t in todo], rule)
        for d, out_file, before, _ in todo:
            model, spec, inputs = T.load(d)  # classes looked up after patching
            rel, y = relevance(model, spec, inputs)
            torch.save({"relevance": rel, "output": y, "logits_unpatched": before}, out_file)

    if len(rules) == 1:
        run(rules[0])
        return
    pids = {}
    for rule in rules:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                run(rule)
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        pids[pid] = rule
    failed = []
    for pid, rule in pids.items():
        _, status = os.waitpid(pid, 0)
        if status:
            failed.append(rule)
    if failed:
        raise SystemExit(f"lxt_oracle: rule(s) {', '.join(failed)} failed")


if __name__ == "__main__":
    main()
