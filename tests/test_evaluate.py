import numpy as np
import pytest
import torch

from lrp_ext import evaluate as ev


def _linear(seed=0, n=6, d=12):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    model = lambda b: (b.double() @ w)[:, None]   # one output: f(x) = w . x  # noqa: E731
    return model, x, w


def test_morf_lerf_exact_on_linear_model():
    """f(x) = w.x, baseline 0: removing feature i lowers f by exactly w_i x_i, so with the true
    relevance w*x the MoRF curve is f minus the k largest contributions, LeRF the k smallest."""
    model, x, w = _linear()
    contrib = (x * w).numpy()
    f0 = contrib.sum(1)
    d = x.shape[1]
    morf, frac = ev.perturbation_curve(model, x, x * w, target=0, order="morf", steps=d)
    lerf, _ = ev.perturbation_curve(model, x, x * w, target=0, order="lerf", steps=d)
    desc = -np.sort(-contrib, axis=1)
    cum = np.concatenate([np.zeros((len(x), 1)), np.cumsum(desc, 1)], 1)
    np.testing.assert_allclose(morf, f0[:, None] - cum, atol=1e-12)
    asc = np.sort(contrib, axis=1)
    cum = np.concatenate([np.zeros((len(x), 1)), np.cumsum(asc, 1)], 1)
    np.testing.assert_allclose(lerf, f0[:, None] - cum, atol=1e-12)
    np.testing.assert_allclose(frac, np.arange(d + 1) / d)
    # every feature removed: the score of the all-zero input
    np.testing.assert_allclose(morf[:, -1], 0.0, atol=1e-12)
    # AOPC from its definition: mean over k = 0..L of f_0 - f_k
    assert ev.aopc(morf) == pytest.approx(np.mean(f0[:, None] - morf))
    assert ev.area_between(morf, lerf) == pytest.approx(np.mean(lerf - morf))


def test_true_relevance_is_optimal_and_beats_random():
    model, x, w = _linear(seed=1, n=20, d=16)
    true = ev.evaluate_attributions(model, x, {"true": x * w}, target=0, steps=16)["true"]
    for seed in range(3):
        rnd = ev.random_attribution(x, seed=seed)
        other = ev.evaluate_attributions(model, x, {"r": rnd}, target=0, steps=16)["r"]
        # removing the k largest contributions is the lowest any ranking can reach
        assert (true["morf"] <= other["morf"] + 1e-12).all()
        assert (true["lerf"] >= other["lerf"] - 1e-12).all()
        assert true["aopc_morf"] > other["aopc_morf"]
        assert true["abpc"] > other["abpc"] + 1.0
    # the reversed ranking is the worst one: MoRF and LeRF swap
    rev = ev.evaluate_attributions(model, x, {"rev": -(x * w)}, target=0, steps=16)["rev"]
    np.testing.assert_allclose(rev["morf"], true["lerf"])
    assert rev["abpc"] == pytest.approx(-true["abpc"])


def test_numpy_inputs_steps_and_fraction():
    model, x, w = _linear(seed=2, n=4, d=10)
    np_model = lambda b: (np.asarray(b) @ w.numpy())[:, None]  # noqa: E731
    c1, f1 = ev.perturbation_curve(np_model, x.numpy(), (x * w).numpy(), 0, steps=5,
                                   fraction=0.5)
    c2, _ = ev.perturbation_curve(model, x, x * w, 0, steps=10)
    np.testing.assert_allclose(f1, [0, 0.1, 0.2, 0.3, 0.4, 0.5])
    np.testing.assert_allclose(c1, c2[:, :6], atol=1e-6)


def test_patches_and_channels():
    ids, n = ev.region_ids((2, 4, 5), patch_size=2)
    assert n == 2 * 3
    assert ids[0, 0, 0] == 0 and ids[1, 1, 1] == 0 and ids[0, 0, 2] == 1 and ids[0, 2, 4] == 5
    assert ids.shape == (2, 4, 5)
    # a model summing the top-left 2x2 patch of channel 1; relevance all in that patch
    model = lambda b: b[:, 1, :2, :2].sum((1, 2))[:, None]  # noqa: E731
    x = torch.ones(1, 2, 4, 4)
    rel = torch.zeros_like(x)
    rel[0, 1, :2, :2] = 1.0
    morf, frac = ev.perturbation_curve(model, x, rel, 0, steps=4, patch_size=2)
    np.testing.assert_allclose(morf[0], [4, 0, 0, 0, 0])
    lerf, _ = ev.perturbation_curve(model, x, rel, 0, order="lerf", steps=4, patch_size=2)
    np.testing.assert_allclose(lerf[0], [4, 4, 4, 4, 0])


def test_baselines_scores_and_targets():
    x = torch.tensor([[1.0, 3.0]])
    model = lambda b: torch.stack([b.sum(1), -b.sum(1)], 1)  # noqa: E731
    rel = torch.tensor([[0.0, 1.0]])
    c, _ = ev.perturbation_curve(model, x, rel, steps=2, baseline="mean")
    np.testing.assert_allclose(c[0], [4, 3, 4])               # default target = argmax = 0
    c, _ = ev.perturbation_curve(model, x, rel, target=1, steps=2, baseline=10.0)
    np.testing.assert_allclose(c[0], [-4, -11, -20])
    c, _ = ev.perturbation_curve(model, x, rel, target=0, steps=1, score="prob")
    assert c[0, 0] == pytest.approx(torch.softmax(torch.tensor([4.0, -4.0]), 0)[0].item())


def test_bad_arguments():
    model, x, w = _linear()
    with pytest.raises(ValueError, match="relevance shape"):
        ev.perturbation_curve(model, x, x[:, :3], 0)
    with pytest.raises(ValueError, match="order"):
        ev.perturbation_curve(model, x, x, 0, order="up")
    with pytest.raises(ValueError, match="baseline"):
        ev.perturbation_curve(model, x, x, 0, baseline="blur")
    with pytest.raises(ValueError, match="patch_size"):
        ev.region_ids((3, 4, 4), 0)
    with pytest.raises(ValueError, match="shapes differ"):
        ev.area_between(np.zeros(3), np.zeros(4))


def test_csv_table_and_plot(tmp_path):
    model, x, w = _linear()
    res = ev.evaluate_attributions(model, x, {"true": x * w, "random": ev.random_attribution(x)},
                                   target=0, steps=4)
    p = tmp_path / "e.csv"
    ev.write_csv(res, p)
    rows = p.read_text().strip().splitlines()
    assert rows[0].startswith("method,curve,step")
    assert len(rows) == 1 + 2 * 2 * 5
    assert "true" in ev.format_table(res)
    pytest.importorskip("matplotlib")
    ev.plot(res, tmp_path / "e.png")
    assert (tmp_path / "e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
