"""Faithfulness of attributions by perturbation (pixel flipping / region perturbation).

Regions (single pixels or ``patch_size`` x ``patch_size`` patches) are ranked by their summed
relevance and replaced by a baseline, most relevant first (MoRF) or least relevant first (LeRF),
while the model's score for the explained class is recorded (Bach et al. 2015; Samek et al.
2017). A faithful attribution makes the MoRF curve fall fast and the LeRF curve stay high:

* ``aopc(curve) = mean_k (f(x_0) - f(x_k))`` over steps k = 0..L (higher is better for MoRF,
  lower is better for LeRF);
* ``area_between(morf, lerf) = mean_k (f_LeRF(x_k) - f_MoRF(x_k))`` (ABPC, higher is better).

The functions take numpy arrays or torch tensors and any callable model (torch modules, or a
function mapping a batch to scores), and return numpy arrays and floats, so attributions from
other toolkits can be scored the same way.
"""
import csv
import math

import numpy as np
import torch


def _t(a, dtype=torch.float32):
    if isinstance(a, torch.Tensor):
        return a.detach()
    return torch.as_tensor(np.asarray(a), dtype=dtype)


def region_ids(shape, patch_size=1):
    """Region index of every element of one sample of ``shape`` (without the batch dim):
    (C, H, W) -> patch_size x patch_size spatial patches shared by all channels; (C, L) -> runs
    of ``patch_size`` along L; (D,) -> runs of ``patch_size`` features. Returns
    ``(ids, num_regions)`` with ``ids`` of ``shape``."""
    p = int(patch_size)
    if p < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    shape = tuple(shape)
    if len(shape) == 3:
        c, h, w = shape
        nw = math.ceil(w / p)
        hh = torch.arange(h)[:, None] // p
        ww = torch.arange(w)[None, :] // p
        ids = (hh * nw + ww).expand(c, h, w)
        return ids, math.ceil(h / p) * nw
    if len(shape) == 2:
        c, n = shape
        ids = (torch.arange(n) // p).expand(c, n)
        return ids, math.ceil(n / p)
    if len(shape) == 1:
        return torch.arange(shape[0]) // p, math.ceil(shape[0] / p)
    raise ValueError(f"inputs of per-sample shape {shape} are not supported (expected (D,), "
                     "(C, L) or (C, H, W))")


def _scores(model, x, target, score, batch_size):
    outs = []
    for i in range(0, len(x), batch_size):
        with torch.no_grad():
            o = model(x[i:i + batch_size])
        o = _t(o)
        if o.dim() == 1:
            o = o[:, None]
        outs.append(o.float())
    out = torch.cat(outs)
    if score == "prob":
        out = out.softmax(1)
    elif score != "logit":
        raise ValueError(f"score must be 'logit' or 'prob', got {score!r}")
    return out, (out.gather(1, target[:, None])[:, 0] if target is not None else None)


def perturbation_curve(model, x, relevance, target=None, *, order="morf", steps=16,
                       fraction=1.0, patch_size=1, baseline=0.0, score="logit", batch_size=256,
                       seed=0):
    """Scores of the explained class while regions are removed in relevance order.

    Args:
        model: callable, batch (B, ...) tensor -> (B, classes) scores (or (B,) for one output).
        x: inputs (N, ...); relevance: attributions of the same shape.
        target: class per sample (int or (N,)); default: the model's predicted class.
        order: ``"morf"`` (most relevant first) or ``"lerf"`` (least relevant first).
        steps: number of perturbation steps L; step k removes ``round(k * fraction * P / L)``
            of the P regions (ties in relevance are broken by region index).
        baseline: value removed regions get: a number, ``"mean"`` (each sample's mean per
            channel), ``"uniform"`` (noise uniform in the data's range, seeded), or an array
            broadcastable to ``x``.
        score: ``"logit"`` (raw output) or ``"prob"`` (softmax).

    Returns ``(curves, removed_fraction)``: curves (N, L + 1) with column 0 the unperturbed
    score, and the fraction of regions removed at each step (L + 1,).
    """
    x = _t(x)
    rel = _t(relevance).to(x.device, torch.float64)
    if rel.shape != x.shape:
        raise ValueError(f"relevance shape {tuple(rel.shape)} != input shape {tuple(x.shape)}")
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")
    if not (0 < fraction <= 1):
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    n = x.shape[0]
    ids, nreg = region_ids(x.shape[1:], patch_size)
    ids = ids.to(x.device)
    flat_ids = ids.reshape(-1).expand(n, -1)
    reg_rel = torch.zeros(n, nreg, dtype=torch.float64, device=x.device)
    reg_rel.scatter_add_(1, flat_ids, rel.reshape(n, -1))
    key = -reg_rel if order == "morf" else reg_rel
    order_idx = torch.sort(key, dim=1, stable=True).indices          # regions, first removed first
    rank = torch.empty_like(order_idx)
    rank.scatter_(1, order_idx, torch.arange(nreg, device=x.device).expand(n, -1))
    pix_rank = rank.gather(1, flat_ids).reshape(x.shape)              # removal position per element

    if isinstance(baseline, str):
        if baseline == "mean":
            dims = tuple(range(2, x.dim())) if x.dim() > 2 else (1,)
            base = x.mean(dim=dims, keepdim=True).expand_as(x)
        elif baseline == "uniform":
            g = torch.Generator().manual_seed(seed)
            lo, hi = x.min(), x.max()
            base = (lo + (hi - lo) * torch.rand(x.shape, generator=g)).to(x)
        else:
            raise ValueError(f"baseline must be a number, 'mean', 'uniform' or an array, "
                             f"got {baseline!r}")
    else:
        base = _t(baseline).to(x).expand_as(x)
        if not torch.isfinite(base).all():
            raise ValueError("baseline must be finite (a NaN or infinite baseline makes every "
                             "score NaN)")

    counts = [int(round(k * fraction * nreg / steps)) for k in range(int(steps) + 1)]
    if target is None:
        out, _ = _scores(model, x, None, score, batch_size)
        tgt = out.argmax(1)
    else:
        tgt = torch.as_tensor(target, dtype=torch.long).reshape(-1)
        tgt = tgt.expand(n) if tgt.numel() == 1 else tgt
        if tgt.numel() != n:
            raise ValueError(f"{tgt.numel()} targets for {n} inputs")
    tgt = tgt.to(x.device)
    curves = torch.empty(n, len(counts), dtype=torch.float64)
    for k, c in enumerate(counts):
        xk = torch.where(pix_rank < c, base, x)
        _, sk = _scores(model, xk, tgt, score, batch_size)
        curves[:, k] = sk.double().cpu()
    return curves.numpy(), np.asarray(counts, dtype=np.float64) / nreg


def aopc(curves):
    """Area over the perturbation curve: ``mean_k (f_0 - f_k)``, averaged over samples.
    ``curves``: (N, L + 1) or (L + 1,)."""
    c = np.atleast_2d(np.asarray(curves, dtype=np.float64))
    return float((c[:, :1] - c).mean())


def area_between(morf, lerf):
    """Area between the LeRF and MoRF curves, ``mean_k (f_LeRF - f_MoRF)`` (ABPC)."""
    m = np.atleast_2d(np.asarray(morf, dtype=np.float64))
    l_ = np.atleast_2d(np.asarray(lerf, dtype=np.float64))
    if m.shape != l_.shape:
        raise ValueError(f"curve shapes differ: {m.shape} vs {l_.shape}")
    return float((l_ - m).mean())


def random_attribution(x, seed=0):
    """Uniform random relevance with ``x``'s shape (the chance baseline), seeded."""
    x = _t(x)
    g = torch.Generator().manual_seed(seed)
    return torch.rand(x.shape, generator=g, dtype=torch.float32)


def evaluate_attributions(model, x, attributions, target=None, **kwargs):
    """MoRF and LeRF curves, AOPCs and ABPC for several attributions of the same inputs.

    ``attributions``: dict name -> relevance (x's shape). Keyword arguments go to
    ``perturbation_curve``. Returns dict name -> {"fraction", "morf", "lerf" (mean curves),
    "aopc_morf", "aopc_lerf", "abpc", "n"}.
    """
    results = {}
    for name, rel in attributions.items():
        morf, frac = perturbation_curve(model, x, rel, target, order="morf", **kwargs)
        lerf, _ = perturbation_curve(model, x, rel, target, order="lerf", **kwargs)
        results[name] = {"fraction": frac, "morf": morf.mean(0), "lerf": lerf.mean(0),
                         "aopc_morf": aopc(morf), "aopc_lerf": aopc(lerf),
                         "abpc": area_between(morf, lerf), "n": int(morf.shape[0])}
    return results


def format_table(results):
    """Plain-text table of the summary numbers."""
    w = max([len("method")] + [len(k) for k in results])
    lines = [f"{'method':<{w}}  {'AOPC MoRF':>10}  {'AOPC LeRF':>10}  {'ABPC':>10}  "
             f"{'n':>5}"]
    for name, r in results.items():
        lines.append(f"{name:<{w}}  {r['aopc_morf']:10.4f}  {r['aopc_lerf']:10.4f}  "
                     f"{r['abpc']:10.4f}  {r['n']:5d}")
    return "\n".join(lines)


def write_csv(results, path):
    """One row per (method, curve, step) plus the summary numbers on every row of a method."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "curve", "step", "fraction_removed", "score", "aopc_morf",
                    "aopc_lerf", "abpc", "n"])
        for name, r in results.items():
            for curve in ("morf", "lerf"):
                for k, (f, s) in enumerate(zip(r["fraction"], r[curve])):
                    w.writerow([name, curve, k, f"{f:.6g}", f"{s:.8g}", f"{r['aopc_morf']:.8g}",
                                f"{r['aopc_lerf']:.8g}", f"{r['abpc']:.8g}", r["n"]])


def plot(results, path, title=None):
    """MoRF (solid) and LeRF (dashed) mean curves of every method in one figure (matplotlib)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=90)
    for i, (name, r) in enumerate(results.items()):
        col = f"C{i}"
        axes[0].plot(r["fraction"], r["morf"], color=col, lw=1.6,
                     label=f"{name} ({r['aopc_morf']:.2f})")
        axes[1].plot(r["fraction"], r["lerf"], color=col, lw=1.6, ls="--",
                     label=f"{name} ({r['aopc_lerf']:.2f})")
    axes[0].set_title("most relevant first (AOPC, higher is better)", fontsize=9)
    axes[1].set_title("least relevant first (AOPC, lower is better)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("fraction of regions removed")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("score of the explained class")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
