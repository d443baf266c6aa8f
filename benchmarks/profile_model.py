"""Where the time of one ``explain`` call goes: torch.profiler self times bucketed into
convolutions / matmuls, lrp_ext's fused ops, other ATen ops (elementwise passes, copies,
pooling, ...) and the rest (Python: the engine's bookkeeping, the rule nodes, autograd),
beside gradient×input's, for one model, preset and batch size.

Usage::

    PYTHONPATH=. python benchmarks/profile_model.py --model resnet50 --batch 1 --threads 1

``--tree DIR`` profiles the lrp_ext of another built checkout (an older commit, for a
before/after table), with gradient×input timed beside it in the same process.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

HERE = os.path.dirname(os.path.abspath(__file__))
CONV = ("conv", "mkldnn_convolution", "addmm", "mm", "bmm", "matmul", "linear")


def _bucket(name):
    if name.startswith("lrp_ext::"):
        return "lrp_ext fused ops"
    if name.startswith("aten::"):
        return "convolutions, matmuls" if any(k in name for k in CONV) else "other ATen ops"
    return None


def buckets(fn, reps):
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        wall = (time.perf_counter() - t0) / reps
    out = {"convolutions, matmuls": 0.0, "lrp_ext fused ops": 0.0, "other ATen ops": 0.0}
    for e in prof.key_averages():
        b = _bucket(e.key)
        if b is not None:
            out[b] += e.self_cpu_time_total / 1e6 / reps
    out["Python, autograd, rest"] = max(wall - sum(out.values()), 0.0)
    return out, wall


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--composite", default="epsilon_gamma_box")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--tree", default=os.path.dirname(HERE), metavar="DIR",
                   help="import lrp_ext from this built checkout (default: this one)")
    args = p.parse_args(argv)
    sys.path.insert(0, args.tree)
    sys.path.insert(1, HERE)
    from lrp_ext.explain import explain  # from args.tree, before bench_models adds this tree
    from bench_models import MEAN, STD, _model
    torch.set_num_threads(args.threads)
    model = _model(args.model, "cpu")
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    kw = dict(low=(0 - MEAN) / STD, high=(1 - MEAN) / STD) \
        if args.composite == "epsilon_gamma_box" else {}

    def gxi():
        xx = x.detach().requires_grad_(True)
        g, = torch.autograd.grad(model(xx)[:, 7].sum(), xx)
        return g * x

    def lrp():
        return explain(model, x, 7, composite=args.composite, **kw)
    g, gw = buckets(gxi, args.reps)
    r, rw = buckets(lrp, args.reps)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {args.model} b{args.batch} {args.composite}, "
          f"lrp_ext of {os.path.dirname(os.path.dirname(sys.modules['lrp_ext'].__file__))}, "
          f"torch threads={torch.get_num_threads()} (profiled: times include the profiler's "
          f"overhead)")
    print(f"| {'ms per call':28s} | gradient×input | lrp_ext |")
    print("|---|---|---|")
    for k in r:
        print(f"| {k:28s} | {g[k] * 1e3:14.1f} | {r[k] * 1e3:7.1f} |")
    print(f"| {'total (wall)':28s} | {gw * 1e3:14.1f} | {rw * 1e3:7.1f} |")


if __name__ == "__main__":
    main()
