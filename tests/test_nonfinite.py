"""Infinite and NaN values and the argument checks of the compiled ops, on every code path.

The spec's formulas decide where a result is NaN or ±inf: lrp_ext.reference computes them
literally. A kernel that forms a⁺W⁺ + a⁻W⁻ where the reference forms aWᵀ (inf·0 = NaN for an
infinite input), or that drops the a⁻ ⊙ t2 = 0·t2 term when a >= 0 (NaN where t2 is not finite),
or that forms the β term of z⁺ (0/0 with stabilizer 0), differs from it here.
"""
from __future__ import annotations

import pytest
import torch

import lrp_ext
from lrp_ext import reference

INF, NAN = float("inf"), float("nan")
KW = {"gamma": dict(gamma=0.25), "alpha_beta": dict(alpha=2.0, beta=1.0),
      "z_box": dict(low=-1.0, high=1.0), "epsilon": {}, "z_plus": {}}


def _call(mod, rule, R, a, W, b, **kw):
    return getattr(mod, rule)(R, a, W, b, **{**KW[rule], **kw})


def assert_same_pattern(out, ref, what=""):
    """NaN where the reference has NaN, the same infinities, the finite values within a
    norm-wise relative 1e-10 (float64) or 1e-3 (float32: 1/z of the epsilon rule amplifies the
    rounding of z)."""
    assert out.shape == ref.shape, what
    tol = 1e-10 if out.dtype == torch.float64 else 1e-3
    out, ref = out.double().cpu(), ref.double().cpu()
    assert torch.equal(torch.isnan(out), torch.isnan(ref)), f"{what}: NaN pattern\n{out}\n{ref}"
    inf = torch.isinf(ref)
    assert torch.equal(torch.isinf(out), inf), f"{what}: inf pattern\n{out}\n{ref}"
    assert torch.equal(out[inf], ref[inf]), f"{what}: signs of inf"
    fin = torch.isfinite(ref)
    err = ((out[fin] - ref[fin]).norm() / ref[fin].norm().clamp_min(1e-300)).item()
    assert err <= tol, f"{what}: relative error {err:.3g} of the finite values"


def _case(batch, O, I, device, dtype, seed, signed):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(batch, I, generator=g, dtype=torch.float64) + 0.1
    if signed:
        a = a * torch.where(torch.rand(batch, I, generator=g) < 0.5, -1.0, 1.0).double()
    W = torch.randn(O, I, generator=g, dtype=torch.float64)
    R = torch.randn(batch, O, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype) for t in (R, a, W)]


@pytest.mark.parametrize("rule", ["gamma", "z_box"])
def test_one_infinite_input_spec_example(kernel, rule):
    # a = [0, inf, 0]: aWᵀ = ±inf for every output (no weight is 0), so every coefficient is
    # R / ±inf = ±0 and R_in = a ⊙ (s W) = [0·0, inf·0, 0·0] = [0, nan, 0] (z_box likewise:
    # z = aWᵀ − low W⁺ᵀ − high W⁻ᵀ = ±inf, R_in = a⊙sW − low⊙sW⁺ − high⊙sW⁻)
    W = torch.tensor([[0.5, 1.0, -2.0], [-1.5, -0.25, 3.0]], dtype=torch.float64,
                     device=kernel.device)
    a = torch.tensor([[0.0, INF, 0.0]], dtype=torch.float64, device=kernel.device)
    R = torch.tensor([[1.0, -2.0]], dtype=torch.float64, device=kernel.device)
    out = _call(lrp_ext, rule, R, a, W, None)
    assert torch.isnan(out[0, 1]) and torch.equal(out[0, [0, 2]].cpu(),
                                                  torch.zeros(2, dtype=torch.float64))
    assert_same_pattern(out, _call(reference, rule, R, a, W, None), rule)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("value", [INF, -INF, NAN], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("signed", [False, True], ids=["a_nonneg", "a_mixed"])
@pytest.mark.parametrize("batch", [3, 70], ids=["N3", "N70"])  # both sides of the path choice
@pytest.mark.parametrize("rule", list(KW))
def test_nonfinite_input_follows_reference(kernel, rule, batch, signed, value, dtype):
    R, a, W = _case(batch, 9, 21, kernel.device, dtype, seed=batch + 7, signed=signed)
    a[1, 4] = value
    if value == -INF and not signed:
        a[1, 4] = INF  # keep a >= 0: the a⁻ shortcut is what this case tests
    b = None if rule == "z_box" else torch.linspace(-0.5, 0.5, 9, dtype=dtype,
                                                    device=kernel.device)
    out = _call(lrp_ext, rule, R, a, W, b)
    ref = _call(reference, rule, R, a, W, b)
    assert_same_pattern(out, ref, f"{rule} a[1, 4] = {value}")


@pytest.mark.parametrize("rule", ["gamma", "alpha_beta", "z_plus", "epsilon"])
def test_infinite_relevance_on_nonneg_input(kernel, rule):
    # one R = inf makes every coefficient of its row non-finite; the reference's a⁻ ⊙ t2 term is
    # then 0·(±inf or NaN) = NaN for every input of the row even though a >= 0
    R, a, W = _case(40, 12, 33, kernel.device, torch.float64, seed=3, signed=False)
    R[2, 5] = INF
    out = _call(lrp_ext, rule, R, a, W, None)
    ref = _call(reference, rule, R, a, W, None)
    if rule != "epsilon":  # epsilon has no a⁻ term: a ⊙ (s W) keeps its ±inf
        assert torch.isnan(ref[2]).all()
    assert_same_pattern(out, ref, f"{rule} R = inf")


@pytest.mark.parametrize("batch", [2, 64], ids=["N2", "N64"])
def test_z_plus_zero_stabilizer_no_beta_term(kernel, batch):
    # W ≥ 0 in row 0: z⁻ = 0 there, and the β term would be 0/0 = NaN with stabilizer 0. z⁺ has no
    # β term: finite wherever z⁺ ≠ 0 (a > 0 and every row has a positive weight)
    R, a, W = _case(batch, 10, 24, kernel.device, torch.float64, seed=11, signed=False)
    W[0] = W[0].abs()
    W[:, 0] = W[:, 0].abs() + 0.1
    out = lrp_ext.z_plus(R, a, W, None, stabilizer=0.0)
    ref = reference.z_plus(R, a, W, None, stabilizer=0.0)
    assert torch.isfinite(ref).all()
    assert_same_pattern(out, ref, "z_plus stabilizer 0")


# ------------------------------------------------------------------------------------------
# argument checks of the compiled ops, called directly (one place, csrc/lrp.cpp, for every
# backend)
# ------------------------------------------------------------------------------------------
def _ops(device):
    if not lrp_ext.has_compiled_ops(device):
        pytest.skip(f"compiled {device} ops are not built")
    return torch.ops.lrp_ext


@pytest.mark.parametrize("alpha,beta", [(1.5, 1.0), (-1.0, -2.0), (0.5, -0.5), (INF, INF),
                                        (2.0, NAN)])
def test_op_alpha_beta_checks(device, alpha, beta):
    ops = _ops(device)
    R, a, W = _case(2, 3, 4, device, torch.float32, seed=0, signed=True)
    with pytest.raises(RuntimeError, match="alpha"):
        ops.alpha_beta(R, a, W, None, alpha, beta, 1e-6)


@pytest.mark.parametrize("op", ["epsilon", "gamma", "alpha_beta", "flat", "w_square", "z_box"])
@pytest.mark.parametrize("bad", [-1e-3, INF, NAN], ids=["negative", "inf", "nan"])
def test_op_stabilizer_checks(device, op, bad):
    ops = _ops(device)
    R, a, W = _case(2, 3, 4, device, torch.float32, seed=0, signed=True)
    args = {"epsilon": (R, a, W, None, bad), "gamma": (R, a, W, None, 0.25, bad),
            "alpha_beta": (R, a, W, None, 2.0, 1.0, bad), "flat": (R, a, W, bad),
            "w_square": (R, a, W, None, bad),
            "z_box": (R, a, W, torch.full_like(a, -1.0), torch.full_like(a, 1.0), bad)}[op]
    with pytest.raises(RuntimeError, match="epsilon|stabilizer"):
        getattr(ops, op)(*args)


def test_op_gamma_must_be_finite(device):
    ops = _ops(device)
    R, a, W = _case(2, 3, 4, device, torch.float32, seed=0, signed=True)
    with pytest.raises(RuntimeError, match="gamma must be a finite"):
        ops.gamma(R, a, W, None, INF, 1e-6)
