"""Whole-model LRP cost: lrp_ext.explain vs gradient×input, zennit 0.5.1 and Captum LRP.

For each model and batch size, every method runs on the same random input (torchvision models
with random weights; random BatchNorm statistics) and is timed as the median of ``--repeats``
runs; the ratios to gradient×input are measured in the same run.  The timed runs go round all methods in turn, ``--repeats`` rounds, with the default
allocator. Peak memory is measured in separate, untimed runs (after a warm-up run): on CPU in a
child process per method, as the peak increase of its resident set size (sampled every
millisecond from /proc/self/statm, with glibc's mmap threshold fixed so that freed buffers go
back to the OS and RSS follows live memory — a setting that would slow the timed runs); on
CUDA with ``torch.cuda.max_memory_allocated``.

Methods
- ``grad_x_input``: ``x * d out[target] / dx`` (autograd, input gradient only).
- ``lrp_ext:<composite>``: ``lrp_ext.explain(model, x, target, composite=...)``.
- ``Explainer:<composite>`` (CNNs): ``lrp_ext.Explainer(model, composite)`` called again on
  the same model, as over a data set: the merged and signed weights kept from the warm-up
  call (its peak memory counts only what a call adds to them).
- ``zennit:<composite>``: ``zennit.attribution.Gradient`` with the same composite (and
  ``ResNetCanonizer`` / ``SequentialMergeBatchNorm``).
- ``captum:<...>``: ``captum.attr.LRP`` with per-layer rules set to the nearest Captum has
  (GammaRule for convs / EpsilonRule for Linear — Captum has no z^B rule; Alpha1_Beta0_Rule for
  convs — no flat rule), on a deep copy of the model (Captum writes rule attributes into it).
  Captum has no rule for residual sums, so on ResNets its numbers are a timing reference only.
  A method that raises is reported as n/a.

Vision transformers (``--models vit_b_16``): ``lrp_ext:attnlrp`` and ``lrp_ext:attnlrp_gamma``
against gradient×input; for vit_b_16 at 224² also ``lxt:attnlrp`` and ``lxt:attnlrp_gamma``
(LXT 2.1's efficient AttnLRP, with zennit's Gamma on the linear layers for the second, as LXT
explains vision transformers), timed in a child process (``_LXT_CHILD``).

Text models (``--models gpt2``): a GPT-2-small-size model (12 layers, 768 wide, random
weights) on ``--tokens`` random input embeddings, explaining the last position's logit of one
token: ``grad_x_input`` at ``inputs_embeds``, ``lrp_ext:attnlrp`` / ``lrp_ext:cp_lrp``, and
``lxt:attnlrp`` — LXT 2.1's efficient mode, timed in a child process (its monkey_patch
rewrites transformers' classes for the whole process) against gradient×input of the
unpatched model in that process, beside lrp_ext's attnlrp timed there too ("(LXT process)"
rows), so that LXT and lrp_ext are compared within one process.

Usage::

    PYTHONPATH=. python benchmarks/bench_models.py                   # vgg16,resnet50; batch 1,8
    PYTHONPATH=. python benchmarks/bench_models.py --models gpt2 --tokens 128,512
    PYTHONPATH=. python benchmarks/bench_models.py --quick           # small smoke run
    PYTHONPATH=. python benchmarks/bench_models.py --device cuda --batch 1,8,32

For the CNNs it also prints each preset's algebraic floor (``floor_ratio``: the convolutions
the rules cannot do without, timed layer by layer at the model's own shapes) and the time of
``explain`` and of the ``Explainer`` over it.
"""
from __future__ import annotations

import argparse
import copy
import csv
import os
import statistics
import sys
import threading
import time
import warnings

import torch  # noqa: E402
import torchvision  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lrp_ext.explain import explain  # noqa: E402

COMPOSITES = ("epsilon_gamma_box", "epsilon_plus_flat")
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


# ---------------------------------------------------------------------------------------------
def _rss_bytes():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory increase during a block (CPU: sampled RSS; CUDA: allocator statistics)."""

    def __init__(self, device):
        self.device = device
        self.peak = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.base = _rss_bytes()
        self.max = self.base
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self.max = max(self.max, _rss_bytes())
                time.sleep(0.001)
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.max = max(self.max, _rss_bytes())
            self._stop.set()
            self._thread.join()
            self.peak = self.max - self.base
        return False


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
def _gpt2(device, seed=0):
    import transformers
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257,
                                  attn_implementation="sdpa", resid_pdrop=0.0, embd_pdrop=0.0,
                                  attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg).eval().to(device)


def _text_methods(model, x, target, device):
    def last(o):
        return o.logits[:, -1]

    def grad_x_input():
        xx = x.detach().requires_grad_(True)
        y = last(model(inputs_embeds=xx))
        g, = torch.autograd.grad(y[:, target].sum(), xx)
        return g * x
    out = {"grad_x_input": grad_x_input}
    for comp in ("attnlrp", "cp_lrp"):
        out[f"lrp_ext:{comp}"] = (lambda comp=comp: explain(
            model, {"inputs_embeds": x}, target, composite=comp, output=last))
    return out


def _vit_methods(model, x, target):
    """Vision transformers: gradient×input, AttnLRP (LRP-0 on linear layers) and AttnLRP with
    γ on the linear layers and the patch embedding."""
    def grad_x_input():
        xx = x.detach().requires_grad_(True)
        y = model(xx)
        g, = torch.autograd.grad(y[:, target].sum(), xx)
        return g * x
    out = {"grad_x_input": grad_x_input}
    for comp in ("attnlrp", "attnlrp_gamma"):
        out[f"lrp_ext:{comp}"] = (lambda comp=comp: explain(model, x, target, composite=comp))
    return out


# LXT 2.1's efficient AttnLRP in a child process (its monkey_patch rewrites transformers' and
# torch.nn's classes for the whole process): GPT-2 (T tokens, LXT's own patch map) or
# torchvision's vit_b_16 at 224² (the AttnLRP map of the parity tests, tests/lxt_oracle.py; with
# zennit's Gamma on the linear layers and the patch embedding through
# lxt.efficient.monkey_patch_zennit, LXT's way for vision transformers). Gradient×input and
# lrp_ext run first in interleaved rounds on the unpatched model, then LXT on the patched one:
# every ratio of a row is within that process. Prints one "name median min" line per method.
_LXT_CHILD = r"""
import os, statistics, sys, time, torch
root, kind = sys.argv[1], sys.argv[2]
bs, T, repeats, threads = map(int, sys.argv[3:7])
sys.path[:0] = [root, os.path.join(root, "tests")]
from lrp_ext.explain import explain
if threads:
    torch.set_num_threads(threads)
if kind == "gpt2":
    import transformers
    def build():
        torch.manual_seed(0)
        cfg = transformers.GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257,
                                      attn_implementation="sdpa", resid_pdrop=0.0,
                                      embd_pdrop=0.0, attn_pdrop=0.0)
        return transformers.GPT2LMHeadModel(cfg).eval()
    x = torch.randn(bs, T, 768, generator=torch.Generator().manual_seed(bs))
    sel = lambda o: o.logits[:, -1]
    fwd = lambda m, xx: sel(m(inputs_embeds=xx))
    ours = {"lrp_ext:attnlrp": lambda m: explain(m, {"inputs_embeds": x}, 7,
                                                  composite="attnlrp", output=sel)}
    def patch():
        from lxt.efficient import monkey_patch
        monkey_patch(transformers.models.gpt2.modeling_gpt2)
        return {"lxt:attnlrp": None}
else:
    import torchvision
    def build():
        torch.manual_seed(0)
        return torchvision.models.vit_b_16().eval()
    x = torch.randn(bs, 3, 224, 224, generator=torch.Generator().manual_seed(bs))
    fwd = lambda m, xx: m(xx)
    ours = {f"lrp_ext:{c}": (lambda m, c=c: explain(m, x, 7, composite=c))
            for c in ("attnlrp", "attnlrp_gamma")}
    def patch():
        import lxt_oracle
        import zennit.rules as zr
        from zennit.composites import LayerMapComposite
        lxt_oracle.patch_all([{"kind": "vit", "gamma": {"conv": 0.25, "linear": 0.25}}],
                             "attnlrp")
        return {"lxt:attnlrp": None, "lxt:attnlrp_gamma": LayerMapComposite(
            [(torch.nn.Conv2d, zr.Gamma(0.25)), (torch.nn.Linear, zr.Gamma(0.25))])}
def grad_x_input(m, composite=None):
    xx = x.detach().requires_grad_(True)
    if composite is not None:
        composite.register(m)
    try:  # the input's gradient only, as every method here (no parameter gradients)
        g, = torch.autograd.grad(fwd(m, xx)[:, 7].sum(), xx)
    finally:
        if composite is not None:
            composite.remove()
    return g * x
def timed(methods, model):
    for f in methods.values():
        f(model)
    ts = {k: [] for k in methods}
    for _ in range(repeats):
        for k, f in methods.items():
            t0 = time.perf_counter(); f(model); ts[k].append(time.perf_counter() - t0)
    for k, v in ts.items():
        print(k, statistics.median(v), min(v), flush=True)
model = build()
timed({"grad_x_input": grad_x_input, **ours}, model)
lxt = patch()
model = build()
timed({k: (lambda m, c=c: grad_x_input(m, c)) for k, c in lxt.items()}, model)
"""


def _lxt_times(name, bs, T, repeats, threads):
    """Rows ``(method, median s, × g×i, min s, × g×i (min))`` from LXT's process (see
    ``_LXT_CHILD``) for ``gpt2`` at T tokens or ``vit_b_16``; None if it fails."""
    import subprocess
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    cmd = [sys.executable, "-c", _LXT_CHILD, root, name, str(bs), str(T or 0), str(repeats),
           str(threads)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        vals = {f[0]: (float(f[1]), float(f[2])) for f in
                (ln.split() for ln in r.stdout.splitlines()) if len(f) == 3}
    except Exception:
        return None
    if "grad_x_input" not in vals or len(vals) < 3:
        return None
    (pl, plmin) = vals.pop("grad_x_input")
    return [(k, t, t / pl, tmin, tmin / plmin) for k, (t, tmin) in vals.items()]


def _model(name, device, seed=0):
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)()
    gen = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            n = mod.num_features
            mod.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
            mod.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            mod.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            mod.bias.data.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
    return model.eval().to(device)


# ---------------------------------------------------------------------------------------------
# The algebraic floor of each preset (issue text and README): per Linear/conv layer, the
# convolutions its rule cannot do without, timed one by one at the layer's own shapes, against
# the two that gradient×input runs (the forward and the input gradient); everything else in the
# network (activations, pooling, BatchNorm) is counted as in gradient×input.
#   gradient, LRP-0, ε:  forward + backward (O channels)                     (= gradient×input)
#   z⁺, a ≥ 0:           forward, P = a∗W⁺, backward with W⁺
#   z⁺, mixed signs:     forward, P = [a⁺, a⁻]∗[W⁺, W⁻], backward to [a⁺, a⁻]
#   γ / αβ, a ≥ 0:       forward, P = a∗W⁺, backward of [c⁺; c⁻] with [W⁺; W⁻] (2O channels)
#   γ, mixed signs:      forward, S = |a|∗|W|, backward with W and with |W| (O channels each)
#   αβ, mixed signs:     forward, P = [a⁺, a⁻]∗[W⁺, W⁻], backward with the 2×2 block weight
#   z^B:                 forward, backward of c with [W, W⁺, W⁻] (to 3C channels; the low and
#                        high terms of its forward are the same for every sample: not counted)
#   flat:                forward (its backward does not read W)
def _layer_floor(spec, a, rule, repeats):
    W = spec.weight
    with torch.no_grad():
        z = spec.fwd(a, W, spec.bias)
        nonneg = bool(a.amin() >= 0)
        Wp, Wn = W.clamp(min=0), W.clamp(max=0)
        c = torch.randn_like(z)
        N = a.shape[0]

        def med(fn):
            fn()
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            return statistics.median(ts)
        fwd = med(lambda: spec.fwd(a, W, spec.bias))
        bwd = med(lambda: spec.bwd(c, a.shape, W))
        gxi = fwd + bwd
        if rule in ("gradient", "zero", "epsilon", "pass"):
            return gxi, gxi
        if rule == "flat":
            return gxi, fwd
        shape2 = (N, 2 * a.shape[1]) + tuple(a.shape[2:])
        if rule == "z_box":
            c3 = spec.stack_weights([[W, Wp, Wn]])
            shape3 = (N, 3 * a.shape[1]) + tuple(a.shape[2:])
            return gxi, fwd + med(lambda: spec.bwd(c, shape3, c3))
        if rule == "gamma" and not nonneg:
            aa, Wa = a.abs(), W.abs()
            return gxi, (fwd + med(lambda: spec.fwd(aa, Wa)) + bwd
                         + med(lambda: spec.bwd(c, a.shape, Wa)))
        if nonneg:
            P = med(lambda: spec.fwd(a, Wp))
        else:
            x2 = spec.stack_inputs([a.clamp(min=0), a.clamp(max=0)])
            w2 = spec.stack_weights([[Wp, Wn]])
            P = med(lambda: spec.fwd(x2, w2))
        if rule == "z_plus":
            if nonneg:
                return gxi, fwd + P + med(lambda: spec.bwd(c, a.shape, Wp))
            return gxi, fwd + P + med(lambda: spec.bwd(c, shape2, spec.stack_weights([[Wp, Wn]])))
        c2 = torch.randn((N, 2 * z.shape[1]) + tuple(z.shape[2:]))
        if nonneg:
            pm = spec.stack_weights([[Wp], [Wn]])
            return gxi, fwd + P + med(lambda: spec.bwd(c2, a.shape, pm))
        blk = spec.stack_weights([[Wp, Wn], [Wn, Wp]])
        return gxi, fwd + P + med(lambda: spec.bwd(c2, shape2, blk))


def floor_ratio(model, x, composite, t_gxi, repeats=3):
    """The preset's floor as a ratio to gradient×input's measured time ``t_gxi``."""
    from lrp_ext import conv as lconv
    from lrp_ext.composite import get_composite
    comp = get_composite(composite)
    recs = []
    hooks = [mod.register_forward_hook(
        lambda m, inp, out, n=n: recs.append((n, m, inp[0].detach())))
        for n, mod in model.named_modules()
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    layers_gxi = layers_floor = 0.0
    for i, (n, mod, a) in enumerate(recs):
        r = comp.rule_for(n, mod, first=i == 0)
        rule = "gradient" if r is None else r.name
        if rule == "alpha_beta" and r.params["beta"] == 0:
            rule = "z_plus"
        if isinstance(mod, torch.nn.Linear):
            spec = lconv.LinearSpec(mod.weight.detach(), None if mod.bias is None
                                    else mod.bias.detach())
            a = a.reshape(-1, a.shape[-1])
        else:
            spec = lconv.conv_spec(mod)
            if spec.pre_pad is not None:
                a = torch.nn.functional.pad(a, *spec.pre_pad)
        g, f = _layer_floor(spec, a, rule, repeats)
        layers_gxi += g
        layers_floor += f
    other = max(t_gxi - layers_gxi, 0.0)
    return (layers_floor + other) / t_gxi, layers_floor / layers_gxi


def _methods(name, model, x, target, device, with_zennit, with_captum):
    low = ((0 - MEAN) / STD).to(device)
    high = ((1 - MEAN) / STD).to(device)
    tgt = torch.full((x.shape[0],), target, dtype=torch.long, device=device)
    out = {}

    def grad_x_input():
        xx = x.detach().requires_grad_(True)
        y = model(xx)
        g, = torch.autograd.grad(y[:, target].sum(), xx)
        return g * x
    out["grad_x_input"] = grad_x_input

    for comp in COMPOSITES:
        kw = dict(low=low, high=high) if comp == "epsilon_gamma_box" else {}
        out[f"lrp_ext:{comp}"] = (lambda comp=comp, kw=kw:
                                  explain(model, x, tgt, composite=comp, **kw))
    from lrp_ext.explain import Explainer  # here: profile_model.py --tree imports older trees
    for comp in COMPOSITES:  # repeated calls: the weights' derived tensors kept between them
        kw = dict(low=low, high=high) if comp == "epsilon_gamma_box" else {}
        ex = Explainer(model, comp, **kw)
        out[f"Explainer:{comp}"] = lambda ex=ex: ex(x, tgt)

    if with_zennit:
        from zennit.attribution import Gradient
        from zennit.canonizers import SequentialMergeBatchNorm
        from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat
        from zennit.torchvision import ResNetCanonizer
        can = ResNetCanonizer if name.startswith("resnet") else SequentialMergeBatchNorm
        zmodel = copy.deepcopy(model)  # a failing canonizer may leave itself applied

        def zen(cls, kw):
            composite = cls(canonizers=[can()], **kw)
            with Gradient(zmodel, composite) as attributor:
                y = torch.zeros(x.shape[0], 1000, device=device)
                y[:, target] = 1.0
                _, rel = attributor(x.detach().requires_grad_(True),
                                    lambda o: o * y)
            return rel
        out["zennit:epsilon_gamma_box"] = lambda: zen(EpsilonGammaBox, dict(low=low, high=high))
        out["zennit:epsilon_plus_flat"] = lambda: zen(EpsilonPlusFlat, {})

    if with_captum:
        from captum.attr import LRP
        from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule

        def cap(conv_rule):
            def run():
                m = copy.deepcopy(model)  # Captum sets rule attributes on the modules
                for mod in m.modules():
                    if isinstance(mod, torch.nn.Conv2d):
                        mod.rule = conv_rule()
                    elif isinstance(mod, torch.nn.Linear):
                        mod.rule = EpsilonRule(1e-6)
                    elif isinstance(mod, torch.nn.ReLU):
                        mod.inplace = False
                return LRP(m).attribute(x.detach().requires_grad_(True), target=target)
            return run
        out["captum:gamma/epsilon"] = cap(lambda: GammaRule(0.25))
        out["captum:z_plus/epsilon"] = cap(Alpha1_Beta0_Rule)
    return out


def _zennit_child(args, name, bs):
    """Rows for the zennit in ``args.zennit_path``, timed in a child process against its own
    gradient×input (ratios comparable with this run's)."""
    import subprocess
    cmd = [sys.executable, os.path.abspath(__file__), "--models", name, "--batch", str(bs),
           "--size", str(args.size), "--threads", str(args.threads), "--repeats",
           str(args.repeats), "--no-captum", "--zennit-only", "--csv", os.devnull]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [args.zennit_path] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=7200)
    ver = subprocess.run([sys.executable, "-c", "import importlib.metadata as m; "
                          "print(m.version('zennit'))"], capture_output=True, text=True,
                         env=env).stdout.strip() or "?"
    out = []
    for ln in r.stdout.splitlines():
        f = ln.split()
        if len(f) >= 9 and f[2].startswith("zennit:") and f[3] != "n/a":
            out.append(dict(model=name, batch=bs, size=args.size, device="cpu",
                            method=f"zennit{ver}:{f[2].split(':', 1)[1]}",
                            median_s=float(f[3]), ratio_time=float(f[4]), min_s=float(f[5]),
                            ratio_min=float(f[6]), peak_mb=float(f[7]), ratio_mem=float(f[8]),
                            error="", tokens=None))
    return out


def _child_peak(args, name, bs, T, method):
    """Peak memory (MB) of ``method`` on this case, from a child process with a fixed mmap
    threshold (RSS then follows live memory)."""
    import subprocess
    cmd = [sys.executable, os.path.abspath(__file__), "--models", name, "--batch", str(bs),
           "--size", str(args.size), "--threads", str(args.threads), "--peak-of", method]
    if T is not None:
        cmd += ["--tokens", str(T)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("PEAK ")), None)
    if line is None:
        raise RuntimeError(f"peak-memory child failed: {r.stderr.strip().splitlines()[-1:]}")
    return float(line.split()[1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="vgg16,resnet50")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--tokens", default="128", help="sequence lengths for text models")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--quick", action="store_true",
                   help="vgg11/resnet18 at 64x64, batch 1, 2 repeats")
    p.add_argument("--no-zennit", action="store_true")
    p.add_argument("--zennit-path", default=None, metavar="DIR",
                   help="also time the zennit found in DIR (e.g. 1.0.0, installed with pip "
                        "--target DIR), in a child process against its own gradient×input")
    p.add_argument("--zennit-only", action="store_true", help=argparse.SUPPRESS)  # that child
    p.add_argument("--no-captum", action="store_true")
    p.add_argument("--csv", default="bench_models.csv")
    p.add_argument("--peak-of", default=None, help=argparse.SUPPRESS)  # child: one method's peak
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.batch, args.size, args.repeats = "vgg11,resnet18", "1", 64, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    device = torch.device(args.device)
    rows = []
    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")),
                       "")
    except OSError:
        pass
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  device={device} ({dev_name}), "
          f"torch threads={torch.get_num_threads()}, torch {torch.__version__}", flush=True)
    hdr = (f"{'model':10s} {'batch':>5s} {'method':28s} {'median s':>9s} {'× g×i':>7s} "
           f"{'min s':>8s} {'× g×i':>7s} {'peak MB':>9s} {'mem × g×i':>9s}")
    print(hdr)
    print("-" * len(hdr), flush=True)
    cases = []
    for name in args.models.split(","):
        for bs in [int(b) for b in args.batch.split(",")]:
            for T in ([int(t) for t in args.tokens.split(",")] if name == "gpt2" else [None]):
                cases.append((name, bs, T))
    model = model_name = None
    for name, bs, T in cases:
        if model is None or model_name != name:
            model = _gpt2(device) if name == "gpt2" else _model(name, device)
            model_name = name
        if True:  # one case: a model, a batch size, a sequence length
            gen = torch.Generator().manual_seed(bs)
            lxt = None
            if name == "gpt2":
                x = torch.randn(bs, T, 768, generator=gen).to(device)
                methods = _text_methods(model, x, 7, device)
                if device.type == "cpu" and not args.peak_of:
                    lxt = _lxt_times(name, bs, T, args.repeats, args.threads)
            elif name.startswith(("vit_", "swin_")):
                x = torch.randn(bs, 3, args.size, args.size, generator=gen).to(device)
                methods = _vit_methods(model, x, 7)
                if name == "vit_b_16" and args.size == 224 and device.type == "cpu" and \
                        not args.peak_of:
                    lxt = _lxt_times(name, bs, None, args.repeats, args.threads)
            else:
                x = torch.randn(bs, 3, args.size, args.size, generator=gen).to(device)
                methods = _methods(name, model, x, 7, device, not args.no_zennit,
                                   not args.no_captum)
                if args.zennit_only:
                    methods = {k: v for k, v in methods.items()
                               if k == "grad_x_input" or k.startswith("zennit:")}
            base_t = base_m = base_min = None
            # warm-up and peak memory (untimed), then timed rounds over all methods in turn,
            # so that a changing machine load affects every method alike
            errors, peaks, times = {}, {}, {m: [] for m in methods}
            if args.peak_of:  # a child measuring one method's peak memory
                fn = methods[args.peak_of]
                fn()
                _sync(device)
                with PeakMemory(device) as pm:
                    fn()
                print(f"PEAK {pm.peak / 2**20}")
                return
            for mname, fn in methods.items():
                try:
                    fn()
                    _sync(device)
                    if device.type == "cpu":
                        peaks[mname] = _child_peak(args, name, bs, T, mname)
                    else:
                        with PeakMemory(device) as pm:
                            fn()
                        peaks[mname] = pm.peak / 2**20
                except Exception as exc:  # e.g. Captum on ResNets
                    errors[mname] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:60]}"
            for _ in range(args.repeats):
                for mname, fn in methods.items():
                    if mname in errors:
                        continue
                    _sync(device)
                    t0 = time.perf_counter()
                    fn()
                    _sync(device)
                    times[mname].append(time.perf_counter() - t0)
            for mname in methods:
                err = errors.get(mname, "")
                if err:
                    t = tmin = peak = float("nan")
                else:
                    t = statistics.median(times[mname])
                    tmin = min(times[mname])
                    peak = peaks[mname]
                if mname == "grad_x_input":
                    base_t, base_m, base_min = t, peak, tmin
                rt = t / base_t if base_t else float("nan")
                rmin = tmin / base_min if base_min else float("nan")
                rm = peak / base_m if base_m else float("nan")
                row = dict(model=name, batch=bs, size=args.size, device=str(device),
                           method=mname, median_s=t, ratio_time=rt, min_s=tmin,
                           ratio_min=rmin, peak_mb=peak,
                           ratio_mem=rm, error=err)
                row["tokens"] = T
                rows.append(row)
                label = name if T is None else f"{name}/{T}"
                if err:
                    print(f"{label:10s} {bs:5d} {mname:28s} {'n/a':>9s}  ({err})", flush=True)
                else:
                    print(f"{label:10s} {bs:5d} {mname:28s} {t:9.3f} {rt:7.2f} {tmin:8.3f} "
                          f"{rmin:7.2f} {peak:9.1f} {rm:9.2f}", flush=True)
            if name != "gpt2" and not name.startswith(("vit_", "swin_")) and base_t:
                for comp in COMPOSITES:
                    mrows = [r for r in rows if r["method"] in (f"lrp_ext:{comp}",
                                                                f"Explainer:{comp}")
                             and r["model"] == name and r["batch"] == bs and not r["error"]]
                    if not mrows:
                        continue
                    fl, fl_layers = floor_ratio(model, x, comp, base_t)
                    for mrow in mrows:
                        mrow["floor"], mrow["ratio_to_floor"] = fl, mrow["ratio_time"] / fl
                    got = "; ".join(f"{r['method'].split(':')[0]} / floor = "
                                    f"{r['ratio_to_floor']:.2f}" for r in mrows)
                    print(f"{label:10s} {bs:5d} {'floor:' + comp:28s} {'':9s} {fl:7.2f}   "
                          f"(layers alone {fl_layers:.2f}; {got})", flush=True)
            if args.zennit_path and name != "gpt2" and not name.startswith(("vit_", "swin_")):
                for zrow in _zennit_child(args, name, bs):
                    rows.append(zrow)
                    print(f"{label:10s} {bs:5d} {zrow['method']:28s} {zrow['median_s']:9.3f} "
                          f"{zrow['ratio_time']:7.2f} {zrow['min_s']:8.3f} "
                          f"{zrow['ratio_min']:7.2f}   (own process)", flush=True)
            for mname, lt, rt, ltmin, rmin in lxt or ():
                print(f"{label:10s} {bs:5d} {mname + ' (LXT process)':28s} {lt:9.3f} "
                      f"{rt:7.2f} {ltmin:8.3f} {rmin:7.2f} {'':>9s} {'':>9s}", flush=True)
                rows.append(dict(model=name, batch=bs, size=args.size, device=str(device),
                                 method=mname + " (LXT process)", median_s=lt, ratio_time=rt,
                                 min_s=ltmin,
                                 ratio_min=rmin, peak_mb=float("nan"), ratio_mem=float("nan"),
                                 error="", tokens=T))
    with open(args.csv, "w", newline="") as fh:
        fields = list(dict.fromkeys(k for r in rows for k in r))
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    print(f"# wrote {args.csv}")


if __name__ == "__main__":
    main()
