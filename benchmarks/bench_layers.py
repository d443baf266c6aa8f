"""Per-rule timing of one dense layer: lrp_ext (compiled) vs lrp_ext.reference vs zennit vs the
two-matmul floor (``a @ V.T`` and ``s @ V`` with V prepared in advance).

The implementations are timed round-robin (one call of each per round), so load from other
processes hits them alike; medians over the rounds are reported, with ratios to the floor and
zennit's time over ours. Prints a table and writes CSV.

    python benchmarks/bench_layers.py                  # CPU, fp32, a >= 0, the full grid
    python benchmarks/bench_layers.py --quick          # a small grid
    python benchmarks/bench_layers.py --device cuda --dtype bfloat16
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import lrp_ext  # noqa: E402
from lrp_ext import reference  # noqa: E402

try:
    import zennit.rules as zrules
except Exception:  # zennit is optional
    zrules = None

RULES = ["epsilon", "zero", "z_plus", "w_square", "flat", "gamma", "alpha_beta", "z_box"]
SINGLE = {"epsilon", "zero", "z_plus", "w_square", "flat"}


def call(mod, rule, R, a, W, b):
    if rule == "z_box":
        return mod.z_box(R, a, W, b, low=0.0, high=1.0)
    return getattr(mod, rule)(R, a, W, b)


def zennit_rule(rule):
    return {"epsilon": lambda: zrules.Epsilon(epsilon=1e-6),
            "zero": lambda: zrules.Epsilon(epsilon=1e-9),
            "z_plus": lambda: zrules.ZPlus(),
            "w_square": lambda: zrules.WSquare(),
            "flat": lambda: zrules.Flat(),
            "gamma": lambda: zrules.Gamma(gamma=0.25),
            "alpha_beta": lambda: zrules.AlphaBeta(alpha=2.0, beta=1.0),
            "z_box": lambda: zrules.ZBox(low=0.0, high=1.0)}[rule]()


def make_zennit(rule, W, b):
    layer = torch.nn.Linear(W.shape[1], W.shape[0], bias=b is not None,
                            device=W.device, dtype=W.dtype)
    with torch.no_grad():
        layer.weight.copy_(W)
        if b is not None:
            layer.bias.copy_(b)
    layer.requires_grad_(False)
    zennit_rule(rule).register(layer)

    def run(R, a, W_, b_):
        x = a.detach().requires_grad_(True)
        out = layer(x)
        (g,) = torch.autograd.grad(out, x, grad_outputs=R)
        return g
    return run


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round_robin(fns, device, budget_s, min_rounds=5, max_rounds=200):
    for f in fns.values():  # warm-up
        f()
    sync(device)
    times = {k: [] for k in fns}
    t_start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() - t_start < budget_s and
                                  rounds < max_rounds):
        for k, f in fns.items():
            sync(device)
            t0 = time.perf_counter()
            f()
            sync(device)
            times[k].append(time.perf_counter() - t0)
        rounds += 1
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16",
                                                           "float64"])
    ap.add_argument("--mixed", action="store_true", help="mixed-sign a (default: a >= 0)")
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--batches", default=None, help="comma list of N (default 1,16,256)")
    ap.add_argument("--shapes", default=None, help="comma list of OxI (default 4096x4096,1000x4096)")
    ap.add_argument("--quick", action="store_true", help="small grid, short budget")
    ap.add_argument("--budget", type=float, default=None, help="seconds per configuration")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--csv", default=None)
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    rules = [r for r in args.rules.split(",") if r]
    batches = [int(n) for n in (args.batches or ("1,16" if args.quick else "1,16,256")).split(",")]
    if device.type == "cuda" and args.batches is None and not args.quick:
        batches = [1, 16, 256, 4096]
    shapes_s = args.shapes or ("1024x1024" if args.quick else "4096x4096,1000x4096")
    shapes = [tuple(int(v) for v in s.split("x")) for s in shapes_s.split(",")]
    budget = args.budget if args.budget is not None else (0.3 if args.quick else 1.5)
    compiled = lrp_ext.has_compiled_ops(device)

    print(f"# lrp_ext layer benchmark: device={device} dtype={args.dtype} "
          f"a={'mixed' if args.mixed else '>=0'} threads={torch.get_num_threads()} "
          f"compiled={compiled}")
    if device.type == "cuda":
        print(f"# {torch.cuda.get_device_name(device)}")
    else:
        cpu = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as fh:
                cpu = next(l.split(":", 1)[1].strip() for l in fh if l.startswith("model name"))
        except Exception:
            pass
        print(f"# {cpu}, {os.cpu_count()} cores")
    print(f"# torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"zennit {'yes' if zrules else 'not installed'}")

    rows = []
    g = torch.Generator(device="cpu").manual_seed(0)
    for (O, I) in shapes:
        W = (torch.randn(O, I, generator=g) / I ** 0.5).to(device, dtype)
        b = (torch.randn(O, generator=g) * 0.1).to(device, dtype)
        for N in batches:
            a = torch.randn(N, I, generator=g)
            a = (a if args.mixed else a.abs()).to(device, dtype)
            R = torch.randn(N, O, generator=g).to(device, dtype)
            V = W.clone()  # the floor's prepared weight
            s = R.clone()
            floor = lambda: (a @ V.t(), s @ V)  # noqa: E731
            for rule in rules:
                fns = {"floor": floor,
                       "ours": lambda: call(lrp_ext, rule, R, a, W, b)}
                if not args.no_reference:
                    fns["reference"] = lambda: call(reference, rule, R, a, W, b)
                if zrules is not None:
                    zr = make_zennit(rule, W, b)
                    fns["zennit"] = lambda: zr(R, a, W, b)
                t = time_round_robin(fns, device, budget)
                row = {"rule": rule, "O": O, "I": I, "N": N, "dtype": args.dtype,
                       "device": str(device), "a": "mixed" if args.mixed else "nonneg",
                       **{f"{k}_ms": v * 1e3 for k, v in t.items()},
                       "ours_over_floor": t["ours"] / t["floor"],
                       "reference_over_floor": t.get("reference", float("nan")) / t["floor"],
                       "zennit_over_floor": t.get("zennit", float("nan")) / t["floor"],
                       "zennit_over_ours": t.get("zennit", float("nan")) / t["ours"]}
                rows.append(row)
                print(f"  {rule:>10} {O}x{I} N={N}: ours {row['ours_ms']:.3f} ms, "
                      f"floor {row['floor_ms']:.3f} ms", flush=True)

    out = args.csv or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                   f"bench_layers_{device.type}_{args.dtype}.csv")
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)

    print(f"\n# times are medians; ratios are over the two-matmul floor; CSV: {out}")
    hdr = f"| rule | O×I | N | floor ms | ours ms | ours/floor | reference/floor | zennit/floor | zennit/ours |"
    print(hdr)
    print("|" + "---|" * 9)
    for r in rows:
        print(f"| {r['rule']} | {r['O']}×{r['I']} | {r['N']} | {r['floor_ms']:.3f} | "
              f"{r['ours_ms']:.3f} | {r['ours_over_floor']:.2f} | "
              f"{r['reference_over_floor']:.2f} | {r['zennit_over_floor']:.2f} | "
              f"{r['zennit_over_ours']:.2f} |")


if __name__ == "__main__":
    main()
