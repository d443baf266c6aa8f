"""Several targets per input: relevance maps per second of one ``explain`` call with a (1, T)
target (one forward, one backward with the rules at batch T·N) against T separate calls.

For each model, batch size N and T, both ways run on the same random input (torchvision models
with random weights and random BatchNorm statistics, as in bench_models.py), timed as medians
of ``--repeats`` interleaved rounds; maps = N·T relevance maps per call (or per T calls).

Usage::

    PYTHONPATH=. python benchmarks/bench_targets.py                       # vgg16,resnet50
    PYTHONPATH=. python benchmarks/bench_targets.py --models resnet18 --size 64 --targets 1,4
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_models import MEAN, STD, _model  # noqa: E402
from lrp_ext.explain import explain  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="vgg16,resnet50")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--targets", default="1,4,10")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--composite", default="epsilon_gamma_box")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    low, high = (0 - MEAN) / STD, (1 - MEAN) / STD
    kw = dict(composite=args.composite, low=low, high=high)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  {args.composite}, torch threads="
          f"{torch.get_num_threads()}, torch {torch.__version__}")
    hdr = (f"{'model':10s} {'N':>3s} {'T':>3s} {'one call s':>11s} {'T calls s':>10s} "
           f"{'maps/s one':>11s} {'maps/s T':>9s} {'speed-up':>9s}")
    print(hdr)
    print("-" * len(hdr), flush=True)
    for name in args.models.split(","):
        model = _model(name, "cpu")
        for n in [int(b) for b in args.batch.split(",")]:
            x = torch.randn(n, 3, args.size, args.size, generator=torch.Generator().manual_seed(n))
            for T in [int(t) for t in args.targets.split(",")]:
                tg = torch.arange(T).reshape(1, T) * 7 % 1000

                def one():
                    return explain(model, x, tg, **kw)

                def separate():
                    return [explain(model, x, int(t), **kw) for t in tg[0]]
                one()
                separate()
                ts = {"one": [], "sep": []}
                for _ in range(args.repeats):
                    for k, fn in (("one", one), ("sep", separate)):
                        t0 = time.perf_counter()
                        fn()
                        ts[k].append(time.perf_counter() - t0)
                a, b = statistics.median(ts["one"]), statistics.median(ts["sep"])
                print(f"{name:10s} {n:3d} {T:3d} {a:11.3f} {b:10.3f} {n * T / a:11.2f} "
                      f"{n * T / b:9.2f} {b / a:9.2f}", flush=True)


if __name__ == "__main__":
    main()
