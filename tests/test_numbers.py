"""Numbers as the API takes them: float16 without overflow, any real scalar as a rule
parameter, and what a shape error looks like under torch.compile."""
import math

import numpy as np
import pytest
import torch

import lrp_ext
from lrp_ext import _checks, reference
from lrp_ext.testing import DEFAULT_PARAMS, RULES, make_case, reference64

IMPLS = [lrp_ext, reference]
IMPL_IDS = ["public", "reference"]


# --------------------------------------------------------------------------- float16
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_z_plus_does_not_overflow(impl, dtype):
    """z⁺ of output 1 is 0: R / stab(0) = 1 / 1e-6 overflows float16 (max 65504); the hand
    result is a = (1, 1), W⁺ = [[1, 0], [0, 0]] -> (1 / (1 + 1e-6), 0) = (1, 0) once rounded."""
    W = torch.tensor([[1., -1.], [-1., -1.]])
    a = torch.tensor([[1., 1.]])
    R = torch.tensor([[1., 1.]])
    got = impl.z_plus(R.to(dtype), a.to(dtype), W.to(dtype))
    assert got.dtype == dtype
    assert got.float().tolist() == [[1.0, 0.0]]


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
@pytest.mark.parametrize("rule", RULES)
def test_half_is_float32_rounded_once(impl, rule):
    """float16 and bfloat16 results equal the float64 reference rounded to that dtype, up to
    the float32 arithmetic inside (a few float32 ulps before the one final rounding)."""
    for dtype in (torch.float16, torch.bfloat16):
        c = make_case(rule, (5,), 9, 4, dtype, "cpu", seed=3)
        params = dict(DEFAULT_PARAMS[rule])
        got = getattr(impl, rule)(c.R, c.a, c.W, c.b, **params)
        ref = reference64(rule, c.R, c.a, c.W, c.b, **params)
        assert got.dtype == dtype and torch.isfinite(got).all()
        eps = torch.finfo(dtype).eps
        # one rounding: |got - ref| <= ulp(ref) / 2, with a little slack for float32 sums
        err = (got.double() - ref).abs()
        assert (err <= ref.abs() * eps * 0.5 * (1 + 1e-3) + 1e-5 * ref.abs().max()).all(), \
            (rule, dtype, float(err.max()))


def test_half_large_relevance_no_nan():
    """R / 1e-6 = 1e6 is beyond float16: every rule still gives finite numbers."""
    for rule in RULES:
        c = make_case(rule, (3,), 6, 4, torch.float16, "cpu", seed=7)
        b = None if rule in ("flat", "z_box") else torch.zeros(4, dtype=torch.float16)
        a = c.a.clone()
        a[:, :] = 0                                  # every z is 0: only the stabiliser remains
        for impl in IMPLS:
            got = getattr(impl, rule)(c.R, a, c.W, b, **DEFAULT_PARAMS[rule])
            assert not torch.isnan(got).any(), (rule, impl.__name__)


# --------------------------------------------------------------------------- real scalars
SCALARS = [1e-3, 1, np.float32(1e-3), np.float64(1e-3), np.int64(1), torch.tensor(1e-3),
           torch.tensor(1e-3, dtype=torch.float64), torch.tensor(1)]


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
@pytest.mark.parametrize("value", SCALARS, ids=[repr(v) for v in SCALARS])
def test_any_real_scalar_is_a_parameter(impl, value):
    c = make_case("gamma", (3,), 6, 4, torch.float32, "cpu", seed=1)
    want = float(value)
    for rule, kw in [("epsilon", "epsilon"), ("gamma", "gamma"), ("gamma", "stabilizer"),
                     ("z_plus", "stabilizer"), ("flat", "stabilizer"),
                     ("w_square", "stabilizer"), ("z_box", "low")]:
        params = dict(DEFAULT_PARAMS[rule])
        got = getattr(impl, rule)(c.R, c.a, c.W, None if rule == "z_box" else c.b,
                                  **{**params, kw: value})
        ref = reference64(rule, c.R, c.a, c.W, None if rule == "z_box" else c.b,
                          **{**params, kw: want})
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-5)
    got = impl.alpha_beta(c.R, c.a, c.W, c.b, alpha=np.float32(2.0), beta=torch.tensor(1.0))
    ref = reference64("alpha_beta", c.R, c.a, c.W, c.b, alpha=2.0, beta=1.0)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", ["0.1", None, True, np.bool_(True), torch.tensor(True),
                                 torch.tensor([0.1]), torch.tensor(1 + 1j), 1j, [0.1]],
                         ids=repr)
def test_not_a_real_scalar(bad):
    with pytest.raises(ValueError, match="stabilizer must be a real number"):
        _checks.stabilizer(bad, "stabilizer")


@pytest.mark.parametrize("bad", [math.nan, np.float32("nan"), torch.tensor(math.inf)], ids=repr)
def test_non_finite_scalar(bad):
    with pytest.raises(ValueError, match="gamma must be a finite number"):
        _checks.finite(bad, "gamma")


# --------------------------------------------------------------------------- torch.compile
@pytest.fixture
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("fullgraph", [False, True])
def test_compile_shape_error(_fresh_dynamo, fullgraph):
    """What a bad shape gives under torch.compile (docs/CLI.md is silent; README "torch.compile"):
    without fullgraph the check runs in eager mode after a graph break and raises the documented
    ValueError; with fullgraph=True Dynamo refuses to compile the raise and reports
    ``torch._dynamo.exc.Unsupported``, whose ``__cause__`` carries the ValueError's message."""
    def fn(R, a, W, b):
        return lrp_ext.epsilon(R, a, W, b)

    compiled = torch.compile(fn, fullgraph=fullgraph, backend="aot_eager")
    R, a, W = torch.rand(3, 5), torch.rand(3, 4), torch.rand(6, 4)
    msg = "epsilon: R's last dim must equal W's out_features O=6; got R (3, 5) and W (6, 4)"
    if not fullgraph:
        with pytest.raises(ValueError) as e:
            compiled(R, a, W, None)
        assert str(e.value) == msg
        return
    from torch._dynamo.exc import Unsupported
    with pytest.raises(Unsupported) as e:
        compiled(R, a, W, None)
    assert msg in str(e.value.__cause__)
    # the same compiled function still works on good shapes
    good = compiled(torch.rand(3, 6), a, W, None)
    assert good.shape == (3, 4)


def test_perturbation_baseline_must_be_finite():
    from lrp_ext import evaluate as ev
    model = torch.nn.Linear(4, 2)
    x = torch.rand(3, 4)
    for bad in (math.nan, np.float32("inf"), torch.tensor([0.0, 0.0, math.nan, 0.0])):
        with pytest.raises(ValueError, match="baseline must be finite"):
            ev.perturbation_curve(model, x, torch.rand(3, 4), baseline=bad, steps=2)
    curves, _ = ev.perturbation_curve(model, x, torch.rand(3, 4), baseline=np.float32(0.5),
                                      steps=2)
    assert np.isfinite(curves).all()
