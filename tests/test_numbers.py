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


BAD_CALLS = [
    ("epsilon", lambda f: f(torch.rand(3, 5), torch.rand(3, 4), torch.rand(6, 4), None),
     ValueError, "epsilon: R's last dim must equal W's out_features O=6; got R (3, 5) and W (6, 4)"),
    ("z_box", lambda f: f(torch.rand(3, 6), torch.rand(3, 4), torch.rand(6, 4), None, low=0.0,
                          high=torch.ones(5)),
     ValueError, "z_box: high of shape (5,) is not broadcastable to a (3, 4)"),
    ("gamma", lambda f: f(torch.rand(3, 6), torch.rand(3, 4), torch.rand(6, 4), None,
                          gamma=-math.inf),
     ValueError, "gamma must be a finite number, got -inf"),
    ("flat", lambda f: f(torch.rand(3, 6), torch.rand(3, 4).double(), torch.rand(6, 4), None),
     ValueError, "flat: dtype mismatch"),
    ("w_square", lambda f: f(torch.rand(3, 6), torch.ones(3, 4, dtype=torch.long),
                             torch.rand(6, 4), None),
     TypeError, "w_square: a must be a floating tensor, got dtype torch.int64"),
]


COMPILE_CONFIGS = [(impl, fullgraph, "aot_eager") for impl in IMPLS for fullgraph in (False, True)
                   ] + [(lrp_ext, True, "inductor")]      # inductor: slow to compile, once


@pytest.mark.parametrize("impl,fullgraph,backend", COMPILE_CONFIGS,
                         ids=[f"{i.__name__}-fullgraph={f}-{b}" for i, f, b in COMPILE_CONFIGS])
@pytest.mark.parametrize("rule,call,exc,msg", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_compile_argument_errors(_fresh_dynamo, impl, fullgraph, backend, rule, call, exc, msg):
    """Under torch.compile, fullgraph=True included, a bad argument raises the exception eager
    mode raises, with the same message."""
    fn = getattr(impl, rule)

    def wrapped(*args, **kw):
        return fn(*args, **kw) * 2

    compiled = torch.compile(wrapped, fullgraph=fullgraph, backend=backend)
    with pytest.raises(exc) as e:
        call(compiled)
    assert msg in str(e.value)
    with pytest.raises(exc) as eager:
        call(wrapped)
    assert str(eager.value) == str(e.value)


def test_compile_as_the_first_call():
    """A fresh process whose first call of a rule is compiled (the kernel lookup is traced)."""
    import subprocess
    import sys
    code = ("import torch, lrp_ext\n"
            "f = torch.compile(lrp_ext.z_plus, fullgraph=True, backend='aot_eager')\n"
            "W = torch.tensor([[1., -1.], [-1., -1.]])\n"
            "print(f(torch.ones(1, 2), torch.ones(1, 2), W).tolist())\n"
            "try:\n"
            "    f(torch.ones(1, 3), torch.ones(1, 2), W)\n"
            "except ValueError as e:\n"
            "    print('ValueError', e)\n")
    root = __import__("os").path.dirname(__import__("os").path.dirname(__file__))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=root or ".")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[0] == str([[1.0 / (1 + 1e-6), 0.0]]) or lines[0].startswith("[[0.99999"), lines
    assert lines[1].startswith("ValueError z_plus: R's last dim must equal W's out_features"), \
        lines


def test_compile_still_computes_after_an_error(_fresh_dynamo):
    compiled = torch.compile(lrp_ext.epsilon, fullgraph=True, backend="aot_eager")
    W = torch.rand(6, 4)
    with pytest.raises(ValueError):
        compiled(torch.rand(3, 5), torch.rand(3, 4), W, None)
    c = make_case("epsilon", (3,), 4, 6, torch.float32, "cpu", seed=2)
    got = compiled(c.R, c.a, c.W, c.b, epsilon=0.1)
    torch.testing.assert_close(got.double(), reference64("epsilon", c.R, c.a, c.W, c.b,
                                                         epsilon=0.1), rtol=1e-5, atol=1e-6)


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


def test_compile_error_after_dynamic_recompile(_fresh_dynamo):
    """Sizes are symbolic once a second shape was seen: the message still names the numbers."""
    compiled = torch.compile(lrp_ext.gamma, fullgraph=True, backend="aot_eager")
    for n in (3, 5):
        compiled(torch.rand(n, 6), torch.rand(n, 4), torch.rand(6, 4), None)
    with pytest.raises(ValueError, match=r"^gamma: batch dims of R and a differ: R \(7, 6\) vs "
                                         r"a \(8, 4\)$"):
        compiled(torch.rand(7, 6), torch.rand(8, 4), torch.rand(6, 4), None)


# --------------------------------------------------------------------------- conv rules
CONV_RULES = ("zero", "epsilon", "gamma", "alpha_beta", "z_plus", "flat", "w_square", "z_box")


@pytest.mark.parametrize("rule", CONV_RULES)
@pytest.mark.parametrize("impl", ["conv", "conv_reference"])
def test_conv_half_in_float32(rule, impl):
    """Conv rules in float16/bfloat16: computed in float32 and rounded once — finite where
    R / 1e-6 overflows float16, and close to the float64 reference."""
    import lrp_ext
    from lrp_ext import conv_reference
    fn = getattr(lrp_ext.conv if impl == "conv" else conv_reference, rule)
    g = torch.Generator().manual_seed(5)
    a = torch.rand(2, 3, 6, 6, generator=g)
    W = torch.randn(4, 3, 3, 3, generator=g)
    R = torch.rand(2, 4, 4, 4, generator=g)
    kw = dict(low=0.0, high=1.0) if rule == "z_box" else {}
    for dtype in (torch.float16, torch.bfloat16):
        got = fn(R.to(dtype), a.to(dtype), W.to(dtype), **kw)
        assert got.dtype == dtype and torch.isfinite(got).all(), (rule, dtype)
        # inputs rounded to dtype move the result by a few of its ulps
        want = getattr(conv_reference, rule)(R.to(dtype).double(), a.to(dtype).double(),
                                             W.to(dtype).double(), **kw)
        err = (got.double() - want).abs().max() / want.abs().max()
        assert err <= 4 * torch.finfo(dtype).eps, (rule, dtype, float(err))
    zero_a = torch.zeros_like(a).half()  # every z is 0: only the stabiliser remains
    assert not torch.isnan(fn(R.half(), zero_a, W.half(), **kw)).any()


@pytest.mark.parametrize("value", SCALARS, ids=[repr(v) for v in SCALARS])
def test_conv_and_composite_take_any_real_scalar(value):
    import lrp_ext
    g = torch.Generator().manual_seed(2)
    a, W, R = torch.rand(1, 2, 5, 5, generator=g), torch.randn(3, 2, 3, 3, generator=g), \
        torch.rand(1, 3, 3, 3, generator=g)
    want = lrp_ext.conv.gamma(R, a, W, gamma=float(value), stabilizer=float(value))
    torch.testing.assert_close(lrp_ext.conv.gamma(R, a, W, gamma=value, stabilizer=value), want)
    rule = lrp_ext.composite.Gamma(value, value)
    assert rule.params == {"gamma": float(value), "stabilizer": float(value)}
