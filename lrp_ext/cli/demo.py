"""``lrp-ext demo``: train a small CNN on scikit-learn's bundled 8x8 digits (nothing downloaded,
fixed seeds, seconds on a CPU), explain test digits with LRP composites and gradient x input, and
report accuracy, conservation and faithfulness.

Writes to ``out``: ``heatmaps.png`` (one row per digit: input | one heatmap per method),
``evaluation.png`` / ``evaluation.csv`` (perturbation curves), ``digits_cnn.pt`` (the trained
model, ``torch.save``) and ``digits_test.pt`` (the test split, ``{"x", "y"}``) for use with
``lrp-ext explain`` / ``evaluate``.
"""
import os
import time

import numpy as np
import torch

from .. import evaluate as ev
from .. import viz
from .models import GRADIENT_X_INPUT, RANDOM, attribute, load_digits_split, train_digits_cnn
from .dataset import atomic_path

DEMO_METHODS = ("epsilon_gamma_box", "epsilon_plus", "epsilon_alpha2_beta1", GRADIENT_X_INPUT)
SHORT = {"epsilon_gamma_box": "eps-gamma-box", "epsilon_plus": "eps-plus",
         "epsilon_alpha2_beta1": "eps-a2b1", GRADIENT_X_INPUT: "grad x input", RANDOM: "random"}


def _one_per_class(y, classes=10):
    idx = []
    for c in range(classes):
        hits = (y == c).nonzero()
        if len(hits):
            idx.append(int(hits[0]))
    return torch.tensor(idx)


def run_demo(out="lrp-ext-demo", epochs=8, quick=False, seed=0, cmap="bwr", eval_samples=300,
             log=print):
    viz.colormap(cmap)                       # an unknown name fails now, not after training
    for name, v in (("epochs", epochs), ("eval_samples", eval_samples)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    # the model is tiny: one thread is fastest (more only add synchronisation, which is costly
    # on a busy machine) and keeps the numbers independent of the core count
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(out, epochs, quick, seed, cmap, eval_samples, log)
    finally:
        torch.set_num_threads(threads)


def _run(out, epochs, quick, seed, cmap, eval_samples, log):
    t0 = time.perf_counter()
    if quick:
        epochs = min(epochs, 2)
        eval_samples = min(eval_samples, 40)
    torch.manual_seed(seed)
    data = load_digits_split(seed)
    log(f"digits (scikit-learn, bundled): {len(data[1])} train / {len(data[3])} test images, "
        f"8x8, values scaled to [0, 1]")
    model, acc, (x_te, y_te) = train_digits_cnn(epochs=epochs, seed=seed, data=data)
    log(f"trained DigitsCNN for {epochs} epochs: test accuracy {acc * 100:.1f}% "
        f"({time.perf_counter() - t0:.1f} s)")

    # explanations: LRP relevance of the target logit, box bounds = the pixel range [0, 1]
    low, high = 0.0, 1.0
    n_eval = min(eval_samples, len(y_te))
    x_ev, y_ev = x_te[:n_eval], y_te[:n_eval]
    rel = {}
    for m in DEMO_METHODS + (RANDOM,):
        r, out_, t = attribute(model, x_ev, m, target=None, low=low, high=high, seed=seed)
        rel[m] = r
    logits = out_.gather(1, t[:, None])[:, 0]

    # conservation: sum of input relevance vs the relevance put on the output (the target logit)
    log("\nconservation: sum of input relevance / target logit over "
        f"{n_eval} test digits (1.0 = conserved; biases and the epsilon stabiliser absorb some)")
    log(f"{'method':<14} {'mean':>7} {'min':>7} {'max':>7}")
    for m in DEMO_METHODS:
        ratio = rel[m].reshape(n_eval, -1).sum(1) / logits
        log(f"{SHORT[m]:<14} {ratio.mean():7.3f} {ratio.min():7.3f} {ratio.max():7.3f}")

    grid_idx = _one_per_class(y_ev)
    log("\nper digit (grid rows): target logit and sum of input relevance")
    log(f"{'digit':>5} {'pred':>4} {'logit':>8} " + " ".join(f"{SHORT[m]:>13}"
                                                           for m in DEMO_METHODS))
    for i in grid_idx.tolist():
        sums = " ".join(f"{float(rel[m][i].sum()):13.3f}" for m in DEMO_METHODS)
        log(f"{int(y_ev[i]):>5} {int(t[i]):>4} {float(logits[i]):8.3f} {sums}")

    # faithfulness: pixel flipping (pixels set to 0 = ink removed), most / least relevant first
    results = ev.evaluate_attributions(model, x_ev, {m: rel[m] for m in DEMO_METHODS + (RANDOM,)},
                                       target=t, steps=16, patch_size=1, baseline=0.0)
    log(f"\nfaithfulness (pixel flipping on {n_eval} test digits, 16 steps, removed pixels -> 0;"
        " AOPC MoRF and ABPC: higher is better)")
    log(ev.format_table({SHORT[k]: v for k, v in results.items()}))

    os.makedirs(out, exist_ok=True)
    labels = ["input"] + [SHORT[m] for m in DEMO_METHODS]
    blocks = [viz.heatmap_grid(x_ev[part], [rel[m][part] for m in DEMO_METHODS], cmap, scale=12,
                               col_labels=labels)
              for part in (grid_idx[:(len(grid_idx) + 1) // 2], grid_idx[(len(grid_idx) + 1) // 2:])
              if len(part)]
    if len(blocks) == 2 and blocks[1].shape[0] < blocks[0].shape[0]:
        pad = np.full((blocks[0].shape[0] - blocks[1].shape[0],) + blocks[1].shape[1:], 255,
                      np.uint8)
        blocks[1] = np.concatenate([blocks[1], pad])
    gap = np.full((blocks[0].shape[0], 16, 3), 255, np.uint8)
    img = np.concatenate([blocks[0], gap, blocks[1]], 1) if len(blocks) == 2 else blocks[0]
    paths = {"heatmaps": os.path.join(out, "heatmaps.png"),
             "evaluation": os.path.join(out, "evaluation.png"),
             "csv": os.path.join(out, "evaluation.csv"),
             "model": os.path.join(out, "digits_cnn.pt"),
             "test": os.path.join(out, "digits_test.pt")}
    with atomic_path(paths["heatmaps"]) as tmp:
        from PIL import Image
        Image.fromarray(img).save(tmp, format="PNG", optimize=True)
    with atomic_path(paths["evaluation"]) as tmp:
        ev.plot({SHORT[k]: v for k, v in results.items()}, tmp,
                title=f"DigitsCNN (test accuracy {acc * 100:.1f}%), {n_eval} test digits")
    with atomic_path(paths["csv"]) as tmp:
        ev.write_csv(results, tmp)
    with atomic_path(paths["model"]) as tmp:
        torch.save(model, tmp)
    with atomic_path(paths["test"]) as tmp:
        torch.save({"x": x_te, "y": y_te}, tmp)
    log(f"\nwrote {', '.join(paths.values())}")
    log(f"try: lrp-ext evaluate --model {paths['model']} --data {paths['test']}")
    log(f"done in {time.perf_counter() - t0:.1f} s")
    return 0

