"""Compiled dense-layer rules against lrp_ext.reference evaluated in float64.

Every rule x dtype x bias x sign of a x code path (CPU: fused/gemm x each SIMD ISA, and auto;
CUDA: auto/fused/gemm) is one test; inside it, every small shape x memory layout is checked
(and reported together on failure).  Tolerances: lrp_ext.testing.tolerance.
"""
import math
import os
import zlib

import pytest
import torch

import lrp_ext
from lrp_ext import reference, testing
from lrp_ext.testing import RULES, call_rule, check_against_reference, make_case

DTYPE_IDS = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16"}
DTYPES = list(DTYPE_IDS)

# (batch dims, I, O): one row; 1-D a/R without batch dim; leading dims; sizes that are not
# multiples of any vector width; exact multiples of 16; tiny; a batch of 9 rows.
SMALL_SHAPES = [((1,), 37, 13), ((), 37, 13), ((2, 3), 37, 13), ((5,), 16, 64), ((4,), 3, 2),
                ((9,), 70, 19)]
LAYOUTS = testing.LAYOUTS  # contiguous, transposed, strided, expanded (stride-0 rows of a)
# I or O >= 1000: checked on a thinner set (bias, one sign and layout per shape)
LARGE_CASES = [((3,), 1030, 21, True, "contiguous"), ((2,), 23, 1001, False, "transposed")]


def _seed(*parts):
    """A seed that is the same in every run (str hashes are randomised per process)."""
    return zlib.crc32(repr(parts).encode())


def test_compiled_ops_present():
    """CI builds the extension and sets LRP_EXT_REQUIRE_COMPILED=1: then a missing CPU (or, on
    a GPU machine, CUDA) kernel is a failure, not a skip."""
    required = os.environ.get("LRP_EXT_REQUIRE_COMPILED") == "1"
    from lrp_ext import ops
    why = ops._load_error or "some lrp_ext ops have no kernel for the device"
    for dev in ["cpu"] + (["cuda"] if testing.cuda_available() else []):
        if lrp_ext.has_compiled_ops(dev):
            for name in ops.OP_NAMES:
                assert hasattr(torch.ops.lrp_ext, name)
            continue
        if required:
            pytest.fail(f"LRP_EXT_REQUIRE_COMPILED=1 but compiled {dev} ops are missing: {why}")
        pytest.skip(f"compiled {dev} ops are not built ({why})")


@pytest.mark.parametrize("sign", ["pos", "mixed"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("rule", RULES)
def test_matches_reference(kernel, rule, dtype, bias, sign):
    failures = []
    for shape in SMALL_SHAPES:
        for layout in LAYOUTS:
            batch, I, O = shape
            if layout == "expanded" and not batch:
                continue  # no rows to broadcast
            case = testing.cached_case(rule, batch, I, O, dtype, kernel.device, sign == "pos",
                                       bias, layout, _seed(rule, dtype, bias, sign, shape, layout))
            try:
                out = call_rule(rule, case.R, case.a, case.W, case.b, **case.params)
                check_against_reference(rule, out, case)
            except (AssertionError, RuntimeError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
    assert not failures, f"{len(failures)} case(s) failed:\n" + "\n".join(failures)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("rule", RULES)
def test_large_features(kernel, rule, dtype):
    """I >= 1000 (long reductions over inputs) and O >= 1000 (long reductions over outputs)."""
    for k, (batch, I, O, bias, layout) in enumerate(LARGE_CASES):
        case = testing.cached_case(rule, batch, I, O, dtype, kernel.device, k == 0, bias, layout,
                                   _seed("large", rule, dtype, k))
        out = call_rule(rule, case.R, case.a, case.W, case.b, **case.params)
        check_against_reference(rule, out, case)


@pytest.mark.parametrize("rule", RULES)
def test_batch_sizes(kernel, rule):
    """Batches around any fused/GEMM switch-over point the automatic path may use."""
    for B in (1, 2, 3, 8, 31, 64, 129, 300):
        case = testing.cached_case(rule, (B,), 45, 29, torch.float32, kernel.device, B % 2 == 0,
                                   B % 3 != 0, "contiguous", _seed("batch", rule, B))
        out = call_rule(rule, case.R, case.a, case.W, case.b, **case.params)
        check_against_reference(rule, out, case)


# non-default rule parameters (the random tests use testing.DEFAULT_PARAMS)
PARAM_SETS = [
    ("zero", {}),
    ("epsilon", {"epsilon": 1e-6}),
    ("epsilon", {"epsilon": 2.0}),
    ("gamma", {"gamma": 0.0, "stabilizer": 1e-6}),
    ("gamma", {"gamma": 1.5, "stabilizer": 0.3}),
    ("gamma", {}),
    ("alpha_beta", {}),
    ("alpha_beta", {"alpha": 1.0, "beta": 0.0}),
    ("alpha_beta", {"alpha": 1.5, "beta": 0.5, "stabilizer": 0.7}),
    ("alpha_beta", {"alpha": 3, "beta": 2}),
    ("z_plus", {}),
    ("z_plus", {"stabilizer": 0.5}),
    ("flat", {}),
    ("flat", {"stabilizer": 3.0}),
    ("w_square", {}),
    ("w_square", {"stabilizer": 0.25}),
    ("z_box", {"low": 0.0, "high": 1.0}),
    ("z_box", {"low": -1, "high": 4, "stabilizer": 0.2}),
]


@pytest.mark.parametrize("rule,params", PARAM_SETS,
                         ids=[f"{r}-{i}" for i, (r, _) in enumerate(PARAM_SETS)])
def test_rule_parameters(kernel, rule, params):
    for dtype in (torch.float64, torch.float32):
        for positive in (True, False):
            case = make_case(rule, (6,), 21, 11, dtype, kernel.device, positive=positive,
                             params=params, seed=_seed("params", rule, params, dtype, positive))
            out = call_rule(rule, case.R, case.a, case.W, case.b, **case.params)
            check_against_reference(rule, out, case)


# ------------------------------------------------------------------------------------------
# z_box bounds
# ------------------------------------------------------------------------------------------
def _bounds(kind, batch, I, dtype, device, seed):
    """low/high of the given broadcasting kind; tensors are in dtype on device."""
    g = torch.Generator().manual_seed(seed)
    lo = -1.5 - torch.rand(batch + (I,), generator=g, dtype=torch.float64)
    hi = 1.5 + torch.rand(batch + (I,), generator=g, dtype=torch.float64)
    if kind == "float":
        return -2.0, 2.5
    if kind == "0-d":
        lo, hi = torch.tensor(-2.0), torch.tensor(2.5)
    elif kind == "per-feature":  # (I,)
        lo, hi = lo.reshape(-1, I)[0], hi.reshape(-1, I)[0]
    elif kind == "row":  # (1, I)
        lo, hi = lo.reshape(-1, I)[:1], hi.reshape(-1, I)[:1]
    elif kind == "float-low":  # a float and a per-feature tensor
        return -2.0, hi.reshape(-1, I)[0].to(dtype=dtype, device=device)
    elif kind == "non-contiguous":  # full shape, column-major storage
        lo = lo.transpose(-1, -2).contiguous().transpose(-1, -2)
        hi = hi.transpose(-1, -2).contiguous().transpose(-1, -2)
    return lo.to(dtype=dtype, device=device), hi.to(dtype=dtype, device=device)


@pytest.mark.parametrize("kind", ["float", "0-d", "per-feature", "row", "full", "float-low",
                                  "non-contiguous"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_z_box_bounds(kernel, kind, dtype):
    batch, I, O = (4, 3), 19, 7
    low, high = _bounds(kind, batch, I, dtype, kernel.device, _seed("zbox", kind))
    if kind == "non-contiguous":
        assert not low.is_contiguous()
    for bias in (True, False):
        case = make_case("z_box", batch, I, O, dtype, kernel.device, bias=bias,
                         params={"low": low, "high": high, "stabilizer": 1e-6},
                         seed=_seed("zbox", kind, dtype, bias))
        out = lrp_ext.z_box(case.R, case.a, case.W, case.b, **case.params)
        check_against_reference("z_box", out, case)
        # the bias cancels in z^B: it never changes the result
        if bias:
            out_nb = lrp_ext.z_box(case.R, case.a, case.W, None, **case.params)
            assert torch.equal(out, out_nb)


def test_z_box_bounds_on_other_dtype(kernel):
    """Tensor bounds of another dtype (float64 for a float32 a) are converted to a's dtype."""
    case = make_case("z_box", (5,), 12, 6, torch.float32, kernel.device, seed=3)
    low = torch.full((12,), -2.5, dtype=torch.float64, device=kernel.device)
    high = torch.full((1, 12), 3.0, dtype=torch.float64, device=kernel.device)
    out = lrp_ext.z_box(case.R, case.a, case.W, low=low, high=high)
    out2 = lrp_ext.z_box(case.R, case.a, case.W, low=-2.5, high=3.0)
    testing.assert_close_norm(out, out2, 1e-6, msg="float64 bounds vs float bounds")


# ------------------------------------------------------------------------------------------
# edge cases: empty shapes, non-finite input
# ------------------------------------------------------------------------------------------
def _args(rule, R, a, W, b):
    params = dict(testing.DEFAULT_PARAMS[rule])
    return (R, a, W, b), params


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("rule", RULES)
def test_empty_batch(kernel, rule, dtype):
    """No rows: an empty result of shape (0, I) (and (2, 0, I) for leading dims)."""
    opts = dict(dtype=dtype, device=kernel.device)
    W, b = torch.randn(5, 4, **opts), torch.randn(5, **opts)
    for batch in ((0,), (2, 0)):
        args, params = _args(rule, torch.empty(batch + (5,), **opts),
                             torch.empty(batch + (4,), **opts), W, b)
        out = call_rule(rule, *args, **params)
        assert out.shape == batch + (4,) and out.dtype == dtype
        assert out.device.type == kernel.device


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("rule", RULES)
def test_no_outputs(kernel, rule, dtype):
    """O = 0: no relevance to distribute, so zeros of a's shape."""
    opts = dict(dtype=dtype, device=kernel.device)
    for a in (torch.randn(3, 4, **opts), torch.randn(4, **opts)):
        for bias in (torch.empty(0, **opts), None):
            args, params = _args(rule, torch.empty(a.shape[:-1] + (0,), **opts), a,
                                 torch.empty(0, 4, **opts), bias)
            out = call_rule(rule, *args, **params)
            assert out.shape == a.shape and out.dtype == dtype
            assert torch.equal(out, torch.zeros_like(a)), f"O=0 gave {out}"


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("rule", RULES)
def test_no_inputs(kernel, rule, dtype):
    """I = 0: a result without entries, (3, 0)."""
    opts = dict(dtype=dtype, device=kernel.device)
    args, params = _args(rule, torch.randn(3, 5, **opts), torch.empty(3, 0, **opts),
                         torch.empty(5, 0, **opts), torch.randn(5, **opts))
    out = call_rule(rule, *args, **params)
    assert out.shape == (3, 0) and out.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("rule", RULES)
def test_non_finite_input(kernel, rule, dtype):
    """NaN/Inf in a: no crash; a result row is non-finite exactly when the reference's row is
    (rows whose a holds NaN or +-Inf for the rules that use a; none for flat and w_square,
    which ignore a's values), and the finite rows match the reference.  Entries inside a
    non-finite row are not compared one by one: NaN-propagation of max/min instructions may
    legitimately differ there."""
    batch, I, O = (6,), 23, 9
    for bias in (True, False):
        case = make_case(rule, batch, I, O, dtype, kernel.device, bias=bias,
                         positive=not bias, seed=_seed("nonfinite", rule, dtype, bias))
        a = case.a.clone()
        a[1, 3] = math.nan
        a[2, 5] = math.inf
        a[3, 0] = -math.inf
        a[4, 7] = math.nan
        a[4, 8] = math.inf
        out = call_rule(rule, case.R, a, case.W, case.b, **case.params)
        ref = testing.reference64(rule, case.R, a, case.W, case.b, **case.params)
        assert out.shape == a.shape
        bad_out = ~torch.isfinite(out).all(-1)
        bad_ref = ~torch.isfinite(ref).all(-1).to(bad_out.device)
        assert torch.equal(bad_out, bad_ref), \
            f"non-finite rows {bad_out.tolist()} vs reference {bad_ref.tolist()}"
        if rule in ("flat", "w_square"):
            assert not bad_ref.any()
        else:
            assert bad_ref.tolist() == [False, True, True, True, True, False]
        good = (~bad_ref).nonzero().flatten().tolist()
        sub = testing.Case(case.R[good], a[good], case.W, case.b, case.params, case.desc)
        check_against_reference(rule, out[good], sub)


# ------------------------------------------------------------------------------------------
# API behaviour
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", RULES)
def test_inputs_untouched_and_no_autograd(backend, rule):
    case = make_case(rule, (4,), 10, 6, torch.float32, backend.device, seed=1)
    R, a, W, b = (t.clone().requires_grad_() for t in (case.R, case.a, case.W, case.b))
    before = [t.detach().clone() for t in (R, a, W, b)]
    out = call_rule(rule, R, a, W, b, **case.params)
    for t, t0 in zip((R, a, W, b), before):
        assert torch.equal(t.detach(), t0)
    assert not out.requires_grad and out.grad_fn is None
    check_against_reference(rule, out, testing.Case(R.detach(), a.detach(), W.detach(),
                                                    b.detach(), case.params, case.desc))


@pytest.mark.parametrize("rule", RULES)
def test_float16(backend, rule):
    """float16 (no CPU kernel: reference fallback; CUDA: a kernel) matches the reference."""
    case = make_case(rule, (3,), 14, 5, torch.float16, backend.device, seed=2)
    out = call_rule(rule, case.R, case.a, case.W, case.b, **case.params)
    check_against_reference(rule, out, case)


@pytest.mark.parametrize("rule", RULES)
def test_reference_fallback_float64_direct(rule):
    """The reference itself on the testing inputs (layout independence)."""
    base = make_case(rule, (2, 3), 9, 4, torch.float64, seed=5)
    ref = call_rule(rule, base.R, base.a, base.W, base.b, impl=reference, **base.params)
    for layout in LAYOUTS[1:3]:
        case = make_case(rule, (2, 3), 9, 4, torch.float64, layout=layout, seed=5)
        out = call_rule(rule, case.R, case.a, case.W, case.b, impl=reference, **case.params)
        testing.assert_close_norm(out, ref, 1e-14, msg=f"{rule} {layout}")
