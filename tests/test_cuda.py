"""CUDA kernels of the dense rules against lrp_ext.reference (float64 copies of the inputs).

Every rule x dtype x bias x sign of a x shape x memory layout x path (LRP_EXT_CUDA_PATH=fused
or gemm), plus z_box bounds as tensors, empty inputs, a second GPU, opcheck and streams.

Inputs are drawn so that no output's pre-activation z lies within 2% of its RMS of zero: there
R is set to 0 (for the rules whose z depends on a).  Near such points the rules themselves are
ill-conditioned (1/z, the sign masks of gamma), so rounding the low-precision inputs' products
differently from the float64 reference would move single entries by O(1) and say nothing about
the kernels.
"""
from __future__ import annotations

import math
import zlib

import pytest
import torch

import lrp_ext
from lrp_ext import ops, reference

if not torch.cuda.is_available():
    pytest.skip("CUDA kernels: no CUDA device", allow_module_level=True)

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}
RULES = ["epsilon", "zero", "gamma", "alpha_beta", "z_plus", "flat", "w_square", "z_box"]
# (batch dims, O, I): N = 1, leading dims with odd sizes, N above the fused threshold, 1000+
# rows with 16-byte aligned rows, an odd I past 1000 (element loads), many batch tiles.
SHAPES = [((1,), 5, 8), ((2, 3), 7, 3), ((37,), 33, 70), ((1,), 1000, 1024),
          ((5,), 130, 1029), ((300,), 20, 48)]
LOW, HIGH = -2.0, 2.0


@pytest.fixture(autouse=True)
def _compiled():
    if not ops.has_compiled_ops("cuda"):
        pytest.fail("lrp_ext was built without CUDA kernels (torch.ops.lrp_ext has no CUDA key)")


def _noncontig(t):
    """The same values in a non-contiguous tensor (every other element of a wider buffer)."""
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    wide[..., ::2] = t
    out = wide[..., ::2]
    assert not out.is_contiguous() or t.shape[-1] <= 1
    return out


def _z64(rule, R, a, W, b):
    a, W = a.double(), W.double()
    if rule == "z_box":
        return (a - LOW) @ W.clamp(min=0).t() + (a - HIGH) @ W.clamp(max=0).t()
    z = a @ W.t()
    return z if b is None else z + b.double()


def make_case(rule, dtype, batch, O, I, bias, signed, device="cuda", seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    a = torch.randn(*batch, I, generator=g, dtype=torch.float64)
    if not signed:
        a = a.abs()
    W = torch.randn(O, I, generator=g, dtype=torch.float64) / max(I, 1) ** 0.5
    b = torch.randn(O, generator=g, dtype=torch.float64) * 0.3 if bias else None
    R = torch.randn(*batch, O, generator=g, dtype=torch.float64)
    # round to the dtype first, so the reference sees exactly the kernel's inputs
    a, W, R = a.to(dtype), W.to(dtype), R.to(dtype)
    b = None if b is None else b.to(dtype)
    if rule in ("epsilon", "zero", "gamma", "z_box") and R.numel() and O > 0:
        z = _z64(rule, R, a, W, b)
        rms = z.pow(2).mean().sqrt()
        R = torch.where(z.abs() < 0.02 * rms, torch.zeros_like(R), R)
    mv = lambda t: None if t is None else t.to(device)  # noqa: E731
    return mv(R), mv(a), mv(W), mv(b)


def run(mod, rule, R, a, W, b, low=LOW, high=HIGH):
    if rule == "z_box":
        return mod.z_box(R, a, W, b, low=low, high=high)
    return getattr(mod, rule)(R, a, W, b)


def ref64(rule, R, a, W, b, low=LOW, high=HIGH):
    d = lambda t: None if t is None else t.double()  # noqa: E731
    if isinstance(low, torch.Tensor):
        low, high = low.double(), high.double()
    return run(reference, rule, d(R), d(a), d(W), d(b), low, high)


def rel_err(out, ref):
    return ((out.double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def assert_close(out, ref, dtype, what="", native=None):
    """``out`` within TOL[dtype] of the float64 ``ref`` (relative to its norm).  For half and
    bfloat16, ``native`` (the reference run in that dtype) may widen the bound to three times its
    own error, at most 0.25: a rule whose z passes through a 2-byte matmul output cannot be more
    accurate than that."""
    assert out.dtype == dtype and out.shape == ref.shape, (out.dtype, out.shape, ref.shape)
    out64 = out.double()
    bad_nan = torch.isnan(out64) & ~torch.isnan(ref)
    assert not bad_nan.any(), f"{what}: NaN where the reference has none"
    assert torch.isfinite(ref).all(), f"{what}: reference not finite (bad test data)"
    if ref.numel() == 0:
        return
    tol = TOL[dtype]
    if native is not None and dtype in (torch.float16, torch.bfloat16):
        native_err = rel_err(native, ref)
        if math.isfinite(native_err):  # a NaN/inf native result widens nothing
            tol = min(max(tol, 3 * native_err), 0.25)
    err = rel_err(out, ref)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("path", ["fused", "gemm"])
@pytest.mark.parametrize("contig", [True, False], ids=["contig", "strided"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[0])) + f"-{s[1]}x{s[2]}")
@pytest.mark.parametrize("signed", [False, True], ids=["a_nonneg", "a_mixed"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("rule", RULES)
def test_matches_reference(rule, dtype, bias, signed, shape, contig, path, monkeypatch):
    monkeypatch.setenv("LRP_EXT_CUDA_PATH", path)
    batch, O, I = shape
    R, a, W, b = make_case(rule, dtype, batch, O, I, bias, signed,
                           seed=zlib.crc32(repr((rule, dtype, bias, signed, shape)).encode()))
    ref = ref64(rule, R, a, W, b)
    native = run(reference, rule, R, a, W, b) if dtype in (torch.float16, torch.bfloat16) else None
    if not contig:
        R, a = _noncontig(R), _noncontig(a)
        W = W.t().contiguous().t()  # column-major W
        b = None if b is None else _noncontig(b)
    out = run(lrp_ext, rule, R, a, W, b)
    assert out.device == a.device
    assert_close(out, ref, dtype, f"{rule} {dtype} {shape} {path}", native)


@pytest.mark.parametrize("path", ["fused", "gemm"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16],
                         ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("bounds", ["row", "full"])
def test_z_box_tensor_bounds(bounds, dtype, path, monkeypatch):
    monkeypatch.setenv("LRP_EXT_CUDA_PATH", path)
    R, a, W, b = make_case("flat", dtype, (3, 4), 9, 24, False, True)
    g = torch.Generator(device="cpu").manual_seed(5)
    shape = (24,) if bounds == "row" else a.shape
    low = (-2.0 - torch.rand(shape, generator=g, dtype=torch.float64)).to(dtype).cuda()
    high = (2.0 + torch.rand(shape, generator=g, dtype=torch.float64)).to(dtype).cuda()
    out = lrp_ext.z_box(R, a, W, low=low, high=high)
    ref = ref64("z_box", R, a, W, None, low, high)
    native = reference.z_box(R, a, W, None, low, high)
    assert_close(out, ref, dtype, "z_box tensor bounds", native)


@pytest.mark.parametrize("path", ["fused", "gemm"])
@pytest.mark.parametrize("signed", [False, True], ids=["a_nonneg", "a_mixed"])
@pytest.mark.parametrize("rule", ["epsilon", "gamma", "alpha_beta", "z_plus"])
def test_float16_huge_coefficients(rule, signed, path, monkeypatch):
    # rows whose z (or z+, z-) is exactly 0 get coefficients R / 1e-6, past float16's range; they
    # meet only zero weights or zero inputs, so the result stays finite and must not turn NaN
    monkeypatch.setenv("LRP_EXT_CUDA_PATH", path)
    R, a, W, b = make_case("flat", torch.float16, (40,), 12, 32, False, signed)
    W[0] = -W[0].abs()  # no positive weight: z+ = 0 where a >= 0
    W[1] = 0            # z = z+ = z- = 0
    ref = ref64(rule, R, a, W, b)
    out = run(lrp_ext, rule, R, a, W, b)
    assert_close(out, ref, torch.float16, f"{rule} float16 huge coefficients {path}")


@pytest.mark.parametrize("path", ["fused", "gemm"])
@pytest.mark.parametrize("rule", RULES)
def test_empty(rule, path, monkeypatch):
    monkeypatch.setenv("LRP_EXT_CUDA_PATH", path)
    # empty batch: empty result of a's shape
    R, a, W, b = make_case(rule, torch.float32, (0,), 6, 5, True, True)
    out = run(lrp_ext, rule, R, a, W, b)
    assert out.shape == (0, 5) and out.device.type == "cuda"
    R, a, W, b = make_case(rule, torch.float32, (2, 0), 6, 5, True, True)
    assert run(lrp_ext, rule, R, a, W, b).shape == (2, 0, 5)
    # no outputs: nothing to distribute
    R, a, W, b = make_case(rule, torch.float32, (3,), 0, 5, True, True)
    out = run(lrp_ext, rule, R, a, W, b)
    assert out.shape == (3, 5)
    assert_close(out, ref64(rule, R, a, W, b), torch.float32, "O = 0")
    # no inputs
    R, a, W, b = make_case(rule, torch.float32, (3,), 4, 0, True, True)
    assert run(lrp_ext, rule, R, a, W, b).shape == (3, 0)


@pytest.mark.parametrize("rule", RULES)
def test_second_gpu(rule):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    R, a, W, b = make_case(rule, torch.float32, (4,), 17, 40, True, True, device="cuda:1")
    with torch.cuda.device(0):
        out = run(lrp_ext, rule, R, a, W, b)
    assert out.device == torch.device("cuda:1")
    assert_close(out, ref64(rule, R, a, W, b), torch.float32, "cuda:1")


@pytest.mark.parametrize("path", ["fused", "gemm"])
@pytest.mark.parametrize("rule", RULES)
def test_side_stream_and_repeat(rule, path, monkeypatch):
    monkeypatch.setenv("LRP_EXT_CUDA_PATH", path)
    R, a, W, b = make_case(rule, torch.float32, (6,), 300, 260, True, True)
    base = run(lrp_ext, rule, R, a, W, b)
    again = run(lrp_ext, rule, R, a, W, b)
    if path == "fused":  # fixed reduction order: bitwise reproducible
        assert torch.equal(base, again)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        side = run(lrp_ext, rule, R, a, W, b)
    s.synchronize()
    torch.testing.assert_close(side, base, rtol=1e-5, atol=1e-6 * base.abs().max().item())
    assert_close(side, ref64(rule, R, a, W, b), torch.float32, "side stream")


def test_zero_stabilizer_gives_inf_like_reference(monkeypatch):
    # a stabilizer of 0 is allowed: exact zeros of z then divide by zero in both implementations
    monkeypatch.setenv("LRP_EXT_CUDA_PATH", "fused")
    R = torch.ones(1, 2, device="cuda")
    a = torch.zeros(1, 3, device="cuda")
    W = torch.randn(2, 3, device="cuda")
    out = lrp_ext.epsilon(R, a, W, None, epsilon=0.0)
    ref = reference.epsilon(R, a, W, None, epsilon=0.0)
    assert torch.equal(torch.isnan(out), torch.isnan(ref))


def test_bad_path_variable(monkeypatch):
    monkeypatch.setenv("LRP_EXT_CUDA_PATH", "fastest")
    R, a, W, b = make_case("epsilon", torch.float32, (2,), 3, 4, False, False)
    with pytest.raises(RuntimeError, match="LRP_EXT_CUDA_PATH"):
        lrp_ext.epsilon(R, a, W, b)


OPS = {
    "epsilon": lambda R, a, W, b: (R, a, W, b, 1e-6),
    "gamma": lambda R, a, W, b: (R, a, W, b, 0.25, 1e-6),
    "alpha_beta": lambda R, a, W, b: (R, a, W, b, 2.0, 1.0, 1e-6),
    "flat": lambda R, a, W, b: (R, a, W, 1e-6),
    "w_square": lambda R, a, W, b: (R, a, W, b, 1e-6),
    "z_box": lambda R, a, W, b: (R, a, W, torch.full_like(a, LOW), torch.full_like(a, HIGH), 1e-6),
}


@pytest.mark.parametrize("op", list(OPS))
def test_opcheck(op):
    R, a, W, b = make_case(op, torch.float32, (2, 3), 7, 16, True, True)
    torch.library.opcheck(getattr(torch.ops.lrp_ext, op).default, OPS[op](R, a, W, b))


# ------------------------------------------------------------------------------------------
# one test per defect found by reading the kernels (see benchmarks/CUDA_NOTES.md)
# ------------------------------------------------------------------------------------------
def _mm_shapes(fn):
    """Input shapes of the aten::mm calls made by fn() (the gemm path's matrix products)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
        torch.cuda.synchronize()
    return [tuple(tuple(s) for s in e.input_shapes[:2]) for e in prof.events()
            if e.name == "aten::mm"]


def test_z_plus_gemm_uses_w_plus_only(monkeypatch):
    # z⁺ has one coefficient: for a >= 0 two products with W⁺ (O, I), not the stacked (2O, I)
    monkeypatch.setenv("LRP_EXT_CUDA_PATH", "gemm")
    R, a, W, b = make_case("z_plus", torch.float32, (64,), 24, 40, True, False)
    shapes = _mm_shapes(lambda: lrp_ext.z_plus(R, a, W, b))
    assert len(shapes) == 2, shapes
    assert all(48 not in s[0] + s[1] for s in shapes), shapes  # 2O = 48 never appears
    assert_close(lrp_ext.z_plus(R, a, W, b), ref64("z_plus", R, a, W, b), torch.float32, "z_plus")


@pytest.mark.parametrize("rule", ["gamma", "alpha_beta", "z_plus"])
def test_assume_mixed_is_honoured(rule, monkeypatch):
    # a >= 0 takes two products, the forced mixed-sign layout four (each of the a >= 0 shape)
    monkeypatch.setenv("LRP_EXT_CUDA_PATH", "gemm")
    R, a, W, b = make_case(rule, torch.float32, (64,), 24, 40, True, False)
    default = _mm_shapes(lambda: run(lrp_ext, rule, R, a, W, b))
    monkeypatch.setenv("LRP_EXT_ASSUME_MIXED", "1")
    forced = _mm_shapes(lambda: run(lrp_ext, rule, R, a, W, b))
    assert (len(default), len(forced)) == (2, 4), (default, forced)
    out = run(lrp_ext, rule, R, a, W, b)
    monkeypatch.delenv("LRP_EXT_ASSUME_MIXED")
    assert torch.equal(out, run(lrp_ext, rule, R, a, W, b))


def test_float16_scaling_survives_an_earlier_error(monkeypatch):
    # an out-of-memory error inside a gemm-path product must propagate (not be taken for a
    # refused float32-output product) and leave the float16 overflow scaling in place
    monkeypatch.setenv("LRP_EXT_CUDA_PATH", "gemm")
    R, a, W, b = make_case("epsilon", torch.float16, (4096,), 4096, 64, False, True)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(a.device).total_memory
    # room for the inputs and small buffers, not for the (N, O) float32 product (64 MiB)
    frac = (torch.cuda.memory_allocated() + (40 << 20)) / total
    torch.cuda.set_per_process_memory_fraction(frac)
    try:
        with pytest.raises(torch.OutOfMemoryError):
            lrp_ext.epsilon(R, a, W, b)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    del R, a, W, b
    test_float16_huge_coefficients("epsilon", True, "gemm", monkeypatch)


@pytest.mark.parametrize("rule", ["epsilon", "gamma", "z_plus"])
def test_float16_scale_is_per_row(rule, monkeypatch):
    # row 0's coefficients are ~1e8 (z ~ 1e-4, R 1e4), the others' ~1e-3: one exponent per call
    # (2^-12) would push those to ~2e-7, deep in float16's subnormals (spacing 6e-8)
    monkeypatch.setenv("LRP_EXT_CUDA_PATH", "gemm")
    R, a, W, b = make_case("flat", torch.float16, (40,), 16, 32, False, False)
    R = R * 1e-3
    a[0] = 0
    a[0, 0] = 1e-4
    W[:, 0] = W[:, 0].abs() + 0.5
    R[0] = 1e4
    ref = ref64(rule, R, a, W, b)
    native = run(reference, rule, R, a, W, b)
    out = run(lrp_ext, rule, R, a, W, b)
    for n in range(1, 40):
        assert_close(out[n], ref[n], torch.float16, f"{rule} row {n}", native[n])


@pytest.mark.parametrize("path", ["fused", "gemm"])
@pytest.mark.parametrize("which", ["a", "W", "bounds"])
@pytest.mark.parametrize("I", [64, 66, 67], ids=["I64", "I66", "I67"])  # 16-, 8/4-byte, element
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_per_tensor_alignment(dtype, I, which, path, monkeypatch):
    # one tensor starting one element past an aligned address (a contiguous view): only its
    # loads may fall back to narrower vectors or elements
    monkeypatch.setenv("LRP_EXT_CUDA_PATH", path)
    rule = "z_box" if which == "bounds" else "gamma"
    R, a, W, b = make_case(rule, dtype, (6,), 70, I, False, True)

    def shifted(t):
        buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
        v = buf[1:].view(t.shape)
        v.copy_(t)
        assert v.is_contiguous() and v.data_ptr() % 16 != 0
        return v

    low = torch.full_like(a, LOW)
    high = torch.full_like(a, HIGH)
    if which == "a":
        a = shifted(a)
    elif which == "W":
        W = shifted(W)
    else:
        low, high = shifted(low), shifted(high)
    out = run(lrp_ext, rule, R, a, W, b, low, high)
    native = run(reference, rule, R, a, W, b, low, high) if dtype in (torch.float16,
                                                                      torch.bfloat16) else None
    assert_close(out, ref64(rule, R, a, W, b, low, high), dtype, f"{rule} {which} I={I}", native)


@pytest.mark.parametrize("tile", [0, 2, 4])
def test_negative_input_in_one_batch_tile(tile, monkeypatch):
    # a >= 0 except one entry in batch tile `tile` (4 rows each); 9 output rows span 3 forward
    # blocks: the tile's negative-input flag must come from a warp that read the whole tile
    monkeypatch.setenv("LRP_EXT_CUDA_PATH", "fused")
    R, a, W, b = make_case("gamma", torch.float32, (18,), 9, 40, True, False)
    a[4 * tile + 3 if 4 * tile + 3 < 18 else 17, 37] = -1.5
    for rule in ("gamma", "alpha_beta", "z_plus"):
        assert_close(run(lrp_ext, rule, R, a, W, b), ref64(rule, R, a, W, b), torch.float32,
                     f"{rule} tile {tile}")


@pytest.mark.parametrize("signed", [False, True], ids=["a_nonneg", "a_mixed"])
@pytest.mark.parametrize("rule", ["gamma", "alpha_beta", "z_plus", "epsilon", "z_box"])
def test_cuda_graph_capture(rule, signed, monkeypatch):
    # the gemm path reads any(a < 0) on the host; while a graph is captured it must not (the
    # mixed-sign layout is correct for any a)
    monkeypatch.setenv("LRP_EXT_CUDA_PATH", "gemm")
    R, a, W, b = make_case(rule, torch.float32, (64,), 30, 50, True, signed)
    static_R, static_a = R.clone(), a.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        run(lrp_ext, rule, static_R, static_a, W, b)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = run(lrp_ext, rule, static_R, static_a, W, b)
    g.replay()
    torch.cuda.synchronize()
    assert_close(out, ref64(rule, R, a, W, b), torch.float32, f"{rule} graph replay")
    # new (mixed-sign) inputs and the same weights, the same graph
    g2 = torch.Generator().manual_seed(1)
    a2 = torch.randn(a.shape, generator=g2, dtype=torch.float64).to(a)
    R2 = R.clone()
    if rule in ("epsilon", "gamma", "z_box"):  # as make_case: no z within 2% of its RMS of 0
        z = _z64(rule, R2, a2, W, b)
        R2[z.abs() < 0.02 * z.pow(2).mean().sqrt()] = 0
    static_R.copy_(R2)
    static_a.copy_(a2)
    g.replay()
    torch.cuda.synchronize()
    assert_close(out, ref64(rule, R2, a2, W, b), torch.float32, f"{rule} graph replay, new a")


def test_direct_alpha_beta_op_is_checked():
    R, a, W, b = make_case("alpha_beta", torch.float32, (3,), 5, 8, True, True)
    with pytest.raises(RuntimeError, match="alpha - beta = 1"):
        torch.ops.lrp_ext.alpha_beta(R, a, W, b, 3.0, 1.0, 1e-6)
