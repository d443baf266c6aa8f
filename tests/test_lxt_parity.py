"""explain() on transformers against LXT 2.1's efficient mode (the AttnLRP authors' library).

LXT's ``monkey_patch`` rewrites transformers' and torch's classes for the whole process, so its
numbers come from ``tests/lxt_oracle.py`` run in a subprocess on the same saved models
(``tests/_tiny_transformers.py``): tiny seeded random-weight GPT-2, BERT, Llama (RMSNorm,
rotary, gated MLP, GQA), Qwen2, Gemma 3 and a torchvision ViT, eager and SDPA attention, a batch
of two with a padded sequence.  LXT explains the target logit with gradient 1 and reports
``inputs_embeds * grad`` (pixels for the ViT); ``explain`` must give the same within 1e-4
relative (float32) and leave the model byte-identical.

Where LXT 2.1 ships no patch map (BERT with CP-LRP), the reference is ``_plain_rules`` below: the
rules written plainly as forward hooks on an unpatched float64 copy (std/rms held constant,
identity rule g·y/x on activations, q·kᵀ and A·v uniform ½ — i.e. q, k get ¼ and v ½ of the
gradient — or q, k detached for CP-LRP, the gated product ½ or the gate detached).
``test_plain_rules_reproduce_lxt`` checks that this reference equals LXT wherever LXT runs.
LXT has no AttnLRP map for torchvision's ViT; the oracle composes one from LXT's primitives.
"""
import copy
import hashlib
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _tiny_transformers as T  # noqa: E402

nn = torch.nn
RTOL = 1e-4
TARGET = 3
GAMMA = {"conv": 0.25, "linear": 0.1}

# case id -> (builder name, attention implementation or None, extra spec)
CASES = {}
for _name in ("gpt2", "bert", "llama", "qwen2", "gemma3"):
    for _attn in ("eager", "sdpa"):
        CASES[f"{_name}-{_attn}"] = (_name, _attn, {
            "target": TARGET, "output": "logits" if _name == "bert" else "last"})
CASES["vit"] = ("vit", None, {"target": TARGET})
CASES["vit-gamma"] = ("vit", None, {"target": TARGET, "gamma": GAMMA})
RULES = ("attnlrp", "cp_lrp")
NO_LXT_MAP = {("bert-eager", "cp_lrp"), ("bert-sdpa", "cp_lrp")}  # LXT 2.1 has no BERT cp_LRP


def _build(case):
    name, attn, extra = CASES[case]
    if name == "vit":
        model, spec = T.vit()
        inputs = T.image_inputs(spec)
    else:
        model, spec = T.BUILDERS[name](attn)
        inputs = T.text_inputs(model)
    return model, dict(spec, **extra), inputs


@pytest.fixture(scope="module")
def lxt(tmp_path_factory):
    """{(case, rule): LXT's result dict} and {case: (model, spec, inputs)}; one oracle process
    (it forks one child per rule)."""
    root = tmp_path_factory.mktemp("lxt")
    built, outs = {}, {}
    for case in CASES:
        model, spec, inputs = _build(case)
        built[case] = (model, spec, inputs)
        T.save(str(root / case), model, spec, inputs)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    args, skip = [], []
    for case in CASES:
        args += [str(root / case), str(root / f"{case}.{{rule}}.pt")]
        for rule in RULES:
            if (case, rule) in NO_LXT_MAP:
                skip += ["--skip", str(root / f"{case}.{rule}.pt")]
            else:
                outs[(case, rule)] = root / f"{case}.{rule}.pt"
    p = subprocess.run(
        [sys.executable, os.path.join(HERE, "lxt_oracle.py"), *args,
         *sum((["--rule", r] for r in RULES), []), *skip],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=300)
    if p.returncode:
        raise RuntimeError(f"lxt_oracle.py failed:\n{p.stdout.decode()[-4000:]}")
    results = {key: torch.load(path) for key, path in outs.items()}
    return results, built


# ---------------------------------------------------------------------------------------------
# the rules written plainly (forward hooks on an unpatched copy), the reference where LXT has
# no patch map


def _gradscale(x, s):
    """x in the forward, s·g in the backward."""
    d = x.detach()
    return d + s * (x - d)


def _identity_rule(mod, inp, out):
    x = inp[0]
    ratio = (out / (x + 1e-10)).detach()
    return out.detach() + (x - x.detach()) * ratio


def _layer_norm(mod, inp, out):
    x = inp[0]
    mean = x.mean(-1, keepdim=True)
    std = ((x - mean) ** 2).mean(-1, keepdim=True).add(mod.eps).sqrt()
    y = (x - mean) / std.detach()
    if mod.weight is not None:
        y = y * mod.weight
    if mod.bias is not None:
        y = y + mod.bias
    return y


def _rms_norm(mod, inp, out):
    x = inp[0]
    eps = getattr(mod, "variance_epsilon", getattr(mod, "eps", None))
    r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps).detach()
    if type(mod).__name__.startswith("Gemma"):
        return x * r * (1.0 + mod.weight)
    return mod.weight * (x * r)


def _plain_rules(model, rule):
    """Register the rule hooks on ``model`` (a copy); returns the handles."""
    hs = []
    if rule == "cp_lrp":
        def qk(t):
            return t.detach()

        def v(t):
            return t
    else:
        def qk(t):
            return _gradscale(t, 0.25)

        def v(t):
            return _gradscale(t, 0.5)
    for name, mod in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(mod, nn.LayerNorm):
            hs.append(mod.register_forward_hook(_layer_norm))
        elif type(mod).__name__.endswith("RMSNorm"):
            hs.append(mod.register_forward_hook(_rms_norm))
        elif leaf in ("act", "intermediate_act_fn", "activation") or isinstance(mod, nn.GELU):
            hs.append(mod.register_forward_hook(_identity_rule))
        elif leaf == "act_fn" and rule == "attnlrp":
            hs.append(mod.register_forward_hook(_identity_rule))
        elif leaf == "down_proj" and rule == "attnlrp":
            hs.append(mod.register_forward_pre_hook(lambda m, a: (_gradscale(a[0], 0.5),)))
        elif leaf == "gate_proj" and rule == "cp_lrp":
            hs.append(mod.register_forward_hook(lambda m, a, o: o.detach()))
        elif leaf in ("q_proj", "k_proj", "query", "key"):
            hs.append(mod.register_forward_hook(lambda m, a, o: qk(o)))
        elif leaf in ("v_proj", "value"):
            hs.append(mod.register_forward_hook(lambda m, a, o: v(o)))
        elif leaf == "c_attn":  # GPT-2's fused q|k|v projection
            def split(m, a, o):
                q, k, vv = o.split(o.shape[-1] // 3, dim=-1)
                return torch.cat([qk(q), qk(k), v(vv)], -1)
            hs.append(mod.register_forward_hook(split))
        elif isinstance(mod, nn.MultiheadAttention):
            hs.append(mod.register_forward_pre_hook(
                lambda m, a: (qk(a[0]), qk(a[1]), v(a[2])) + tuple(a[3:])))
    return hs


class _GammaFrame(torch.autograd.Function):
    """zennit 0.5.1's Gamma rule as LXT's monkey_patch_zennit runs it: R_out = g ⊙ z, then
    Gamma, then g_in = R_in / stab(x) (x + sign(x)·1e-10, 0 counted positive)."""

    @staticmethod
    def forward(ctx, x, mod, gamma):
        ctx.save_for_backward(x)
        ctx.mod, ctx.gamma = mod, gamma
        return mod.forward(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        mod, gm = ctx.mod, ctx.gamma
        w = mod.weight.detach()
        b = None if mod.bias is None else mod.bias.detach()

        def f(inp, w, bias):
            if isinstance(mod, nn.Linear):
                return torch.nn.functional.linear(inp, w, bias)
            return torch.nn.functional.conv2d(inp, w, bias, mod.stride, mod.padding,
                                              mod.dilation, mod.groups)

        def stab(t, e):
            return t + ((t == 0).to(t) + t.sign()) * e

        def vjp(w, c):
            xx = x.detach().requires_grad_(True)
            with torch.enable_grad():
                return torch.autograd.grad(f(xx, w, None), xx, c)[0]

        wp, wn = w + gm * w.clamp(min=0), w + gm * w.clamp(max=0)
        bp = None if b is None else b + gm * b.clamp(min=0)
        bn = None if b is None else b + gm * b.clamp(max=0)
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        z = f(x, w, b)
        r = g * z
        cp = (z > 0).to(z) * r / stab(f(xp, wp, bp) + f(xn, wn, None), 1e-6)
        cn = (z < 0).to(z) * r / stab(f(xp, wn, bn) + f(xn, wp, None), 1e-6)
        r_in = xp * vjp(wp, cp) + xn * vjp(wn, cp) + xp * vjp(wn, cn) + xn * vjp(wp, cn)
        return r_in / stab(x, 1e-10), None, None


def _gamma_hooks(model, gamma):
    hs = []
    for mod in model.modules():
        if type(mod) in (nn.Linear, nn.Conv2d):  # modules that run as modules (not MHA's)
            gm = gamma["conv"] if isinstance(mod, nn.Conv2d) else gamma["linear"]
            hs.append(mod.register_forward_hook(
                lambda m, a, o, gm=gm: _GammaFrame.apply(a[0], m, gm)))
    return hs


def _plain_reference(model, spec, inputs, rule, dtype):
    m = copy.deepcopy(model).to(dtype)
    hs = _plain_rules(m, rule)
    if spec.get("gamma"):
        hs += _gamma_hooks(m, spec["gamma"])
    try:
        if spec["kind"] == "hf":
            x = inputs["inputs_embeds"].detach().to(dtype).clone().requires_grad_(True)
            out = m(inputs_embeds=x, attention_mask=inputs["attention_mask"]).logits
        else:
            x = inputs.detach().to(dtype).clone().requires_grad_(True)
            out = m(x)
        if out.dim() == 3:
            out = out[:, -1]
        out[:, spec["target"]].sum().backward()
    finally:
        for h in hs:
            h.remove()
    return (x * x.grad).detach()


# ---------------------------------------------------------------------------------------------


def _snapshot(model):
    """Everything explain must leave as it was: parameter and buffer bytes, dtypes, devices,
    requires_grad, every module's attribute names, hooks, training flags and class forwards."""
    state = {}
    for k, v in model.state_dict(keep_vars=True).items():
        t = v.detach().cpu().contiguous()
        state[k] = (t.dtype, tuple(t.shape), str(v.device), bool(v.requires_grad),
                    hashlib.sha1(t.view(torch.uint8).numpy().tobytes()).hexdigest())
    mods = {}
    for name, m in model.named_modules():
        hooks = tuple(len(getattr(m, h)) for h in (
            "_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
            "_backward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks"))
        mods[name] = (type(m), sorted(vars(m)), m.training, hooks,
                      getattr(type(m), "forward", None))
    cfg = model.config.to_dict() if hasattr(model, "config") else None
    return state, mods, cfg


def _ours(model, spec, inputs, composite):
    import lrp_ext
    if spec["kind"] == "hf":
        def output(o):
            return o.logits[:, -1] if o.logits.dim() == 3 else o.logits
        res = lrp_ext.explain(model, dict(inputs), target=spec["target"], output=output,
                              composite=composite)
        assert set(res) == {"inputs_embeds"}, sorted(res)  # the integer mask gets none
        return res["inputs_embeds"]
    return lrp_ext.explain(model, inputs, target=spec["target"], composite=composite)


def _composite(spec, rule):
    """The preset, or for the γ ViT the preset with zennit's Gamma on nn.Conv2d / nn.Linear
    modules as LXT uses it (LXT leaves nn.MultiheadAttention's projections, which it calls
    functionally, at the plain gradient)."""
    if not spec.get("gamma"):
        return rule
    import lrp_ext
    from lrp_ext.composite import Gamma
    comp = lrp_ext.composite.get_composite(rule)
    comp.layer_map = [((nn.Conv2d,), Gamma(gamma=spec["gamma"]["conv"], stabilizer=1e-6)),
                      ((nn.Linear,), Gamma(gamma=spec["gamma"]["linear"], stabilizer=1e-6)),
                      ] + list(comp.layer_map)
    return comp


def _rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_lxt(lxt, case, rule):
    results, built = lxt
    model, spec, inputs = built[case]
    # both processes explain the same model: outputs before LXT's patching agree
    with torch.no_grad():
        if spec["kind"] == "hf":
            y = model(**inputs).logits
            y = y[:, -1] if y.dim() == 3 else y
        else:
            y = model(inputs)
    if (case, rule) in NO_LXT_MAP:
        ref = _plain_reference(model, spec, inputs, rule, torch.float64)
    else:
        res = results[(case, rule)]
        torch.testing.assert_close(res["logits_unpatched"], y, rtol=1e-5, atol=1e-6)
        ref = res["relevance"]
    assert torch.isfinite(ref).all() and ref.norm() > 0, "degenerate reference"
    before = _snapshot(model)
    ours = _ours(model, spec, inputs, _composite(spec, rule))
    assert _snapshot(model) == before, "explain changed the model"
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    assert torch.isfinite(ours).all()
    err = _rel_err(ours, ref)
    assert err <= RTOL, f"{case} {rule}: relative error {err:.2e} against LXT"


# BERT: both attention implementations (the reference stands in for LXT there); the others:
# one each (the rules do not depend on it), to keep the file fast
PLAIN_CASES = ("bert-eager", "bert-sdpa", "gpt2-eager", "llama-sdpa", "qwen2-eager",
               "gemma3-sdpa", "vit", "vit-gamma")


@pytest.mark.parametrize("case,rule", [(c, r) for c in PLAIN_CASES for r in RULES
                                       if (c, r) not in NO_LXT_MAP])
def test_plain_rules_reproduce_lxt(lxt, case, rule):
    """The hook reference (used where LXT has no map) is LXT's rule set, written plainly; for
    the γ ViT with zennit's Gamma rule in the gradient frame as well."""
    results, built = lxt
    model, spec, inputs = built[case]
    # float64 HF eager with a fully masked (left-padded) causal row gives NaN: use float32 there
    causal_eager = spec["kind"] == "hf" and spec["attn"] == "eager" and "bert" not in case
    dtype = torch.float32 if causal_eager else torch.float64
    ref = _plain_reference(model, spec, inputs, rule, dtype)
    err = _rel_err(ref, results[(case, rule)]["relevance"])
    assert err <= 1e-5, f"{case} {rule}: plain rules vs LXT {err:.2e}"


def test_cp_and_attnlrp_differ(lxt):
    """The two rule sets give different numbers on every model (the comparison is not vacuous)."""
    results, built = lxt
    for case in CASES:
        if any((case, r) in NO_LXT_MAP for r in RULES):
            continue
        a, b = results[(case, "attnlrp")]["relevance"], results[(case, "cp_lrp")]["relevance"]
        assert _rel_err(a, b) > 1e-2, case


def test_lxt_stays_out_of_this_process(lxt):
    """LXT's patches are process-global: it must only ever run in the oracle's process."""
    assert not any(m == "lxt" or m.startswith("lxt.") for m in sys.modules)
