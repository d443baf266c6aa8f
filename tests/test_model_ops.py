"""The model-level ops: ``lrp_ext::coefficients`` (the elementwise stage of a conv / linear
rule), ``lrp_ext::signed_weights`` (``[W⁺; W⁻]`` of a BatchNorm-merged weight),
``lrp_ext::safe_ratio`` and ``lrp_ext::sign_sum``, each kernel
(every CPU ISA, CUDA) against its plain-PyTorch form in float64 and float32: random values of
both signs with exact zeros, groups, K stacked gradients, non-contiguous inputs, non-finite
values, and the argument errors; opcheck and the fake kernels."""
import pytest
import torch

from lrp_ext import ops, reference
from lrp_ext._table import COEF_KIND

KINDS = tuple(COEF_KIND.items())  # (name, kind)


def _compiled(device):
    if not ops.has_compiled_ops(device):
        pytest.skip(f"compiled {device} ops are not built")


@pytest.fixture
def isa(kernel):
    """The CPU ISA copies (and CUDA) through the kernel configurations."""
    return kernel


def _case(shape, dtype, device, seed, K=1, zeros=True):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=gen, dtype=torch.float64)
    if zeros:
        z.view(-1)[::7] = 0.0
    P = torch.rand(shape, generator=gen, dtype=torch.float64) + z.clamp(min=0)
    M = z - P  # the negative sum: z = P + M, M ≤ 0
    g = torch.randn((K * shape[0],) + tuple(shape[1:]), generator=gen, dtype=torch.float64)
    return tuple(t.to(dtype=dtype, device=device) for t in (z, g, P, M))


def _ref(z, g, P, M, kind, groups, e, gamma, alpha, beta, times_z):
    f64 = [None if t is None else t.double() for t in (z, g, P, M)]
    return reference.coefficients(*f64, kind, groups, e, gamma, alpha, beta, times_z)


PARAMS = dict(e=1e-6, gamma=0.25, alpha=2.0, beta=1.0)


@pytest.mark.parametrize("name,kind", KINDS)
@pytest.mark.parametrize("groups,K", [(1, 1), (3, 1), (1, 3), (3, 2)])
@pytest.mark.parametrize("times_z", [True, False])
def test_coefficients_match_reference(isa, name, kind, groups, K, times_z):
    dev = isa.device
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        for shape in ((2, 6, 5, 7), (3, 9), (1, 3, 4, 5, 2)):
            if shape[1] % groups:
                continue
            z, g, P, M = _case(shape, dtype, dev, seed=len(shape) + K, K=K)
            for MM in (None,) if name == "gamma_mixed" else (None, M):
                args = (kind, groups, PARAMS["e"], PARAMS["gamma"], PARAMS["alpha"],
                        PARAMS["beta"], times_z)
                got = torch.ops.lrp_ext.coefficients(z, g, P if kind else None, MM, *args)
                want = _ref(z, g, P if kind else None, MM, *args)
                assert got.shape == want.shape and got.dtype == dtype
                torch.testing.assert_close(got.double().cpu(), want.cpu(), rtol=tol,
                                           atol=tol * want.abs().max().item())


@pytest.mark.parametrize("name,kind", KINDS)
def test_coefficients_negative_gamma_and_stabilizer_zero(isa, name, kind):
    z, g, P, M = _case((2, 4, 3, 3), torch.float64, isa.device, seed=5, zeros=False)
    for e, gam in ((0.0, -0.2), (1e-3, -0.1), (1e-6, 0.0)):
        args = (kind, 2, e, gam, 1.0, 0.0, True)
        got = torch.ops.lrp_ext.coefficients(z, g, P, None, *args)
        torch.testing.assert_close(got.cpu(), _ref(z, g, P, None, *args).cpu(), rtol=1e-12,
                                   atol=0)


@pytest.mark.parametrize("name,kind", KINDS)
def test_coefficients_non_contiguous(isa, name, kind):
    z, g, P, M = _case((5, 4, 6), torch.float32, isa.device, seed=9)
    zt, gt, Pt, Mt = (t.transpose(0, 2).contiguous().transpose(0, 2) for t in (z, g, P, M))
    assert not zt.is_contiguous()
    if name == "gamma_mixed":  # it takes no M
        M = Mt = None
    args = (kind, 2, 1e-6, 0.25, 2.0, 1.0, True)
    got = torch.ops.lrp_ext.coefficients(zt, gt, Pt, Mt, *args)
    want = _ref(z, g, P, M, *args)
    torch.testing.assert_close(got.double().cpu(), want.cpu(), rtol=2e-5,
                               atol=2e-5 * want.abs().max().item())


@pytest.mark.parametrize("name,kind", KINDS)
def test_coefficients_non_finite(isa, name, kind):
    """inf and NaN in z, g and P give the reference's values (NaN where it has NaN)."""
    z, g, P, M = _case((2, 4, 9), torch.float64, isa.device, seed=3)
    z.view(-1)[1] = float("inf")
    z.view(-1)[4] = -float("inf")
    z.view(-1)[8] = float("nan")
    g.view(-1)[10] = float("inf")
    g.view(-1)[12] = float("nan")
    P.view(-1)[15] = float("inf")
    args = (kind, 1, 1e-6, 0.25, 2.0, 1.0, True)
    got = torch.ops.lrp_ext.coefficients(z, g, P, None, *args)
    want = _ref(z, g, P, None, *args)
    torch.testing.assert_close(got.cpu(), want.cpu(), rtol=1e-12, atol=0, equal_nan=True)


def test_coefficients_errors(device):
    _compiled(device)
    z = torch.randn(2, 4, 3, device=device)
    op = torch.ops.lrp_ext.coefficients
    with pytest.raises(RuntimeError, match="kind must be"):
        op(z, z, z, None, 2, 1, 1e-6, 0.25, 1.0, 0.0, True)
    with pytest.raises(RuntimeError, match="groups=3 must divide"):
        op(z, z, z, None, 4, 3, 1e-6, 0.25, 1.0, 0.0, True)
    with pytest.raises(RuntimeError, match="g must have z's shape"):
        op(z, torch.randn(3, 4, 3, device=device), z, None, 0, 1, 1e-6, 0, 1, 0, True)
    with pytest.raises(RuntimeError, match="P must have z's shape"):
        op(z, z, z[:, :2], None, 1, 1, 1e-6, 0, 1, 0, True)
    with pytest.raises(RuntimeError, match="P is needed"):
        op(z, z, None, None, 4, 1, 1e-6, 0.25, 1, 0, True)
    with pytest.raises(RuntimeError, match="dtype mismatch"):
        op(z, z.double(), z, None, 0, 1, 1e-6, 0, 1, 0, True)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        op(z.half(), z.half(), None, None, 0, 1, 1e-6, 0, 1, 0, True)
    with pytest.raises(RuntimeError, match="e must be >= 0"):
        op(z, z, None, None, 0, 1, -1.0, 0, 1, 0, True)
    with pytest.raises(RuntimeError, match="gamma must be a finite"):
        op(z, z, z, None, 4, 1, 1e-6, float("nan"), 1, 0, True)
    with pytest.raises(RuntimeError, match="gamma_mixed.*takes no M"):
        op(z, z, z, z, 6, 1, 1e-6, 0.25, 1, 0, True)
    with pytest.raises(RuntimeError, match="P is needed"):
        op(z, z, None, None, 6, 1, 1e-6, 0.25, 1, 0, True)


def test_coefficients_empty(device):
    _compiled(device)
    z = torch.empty(0, 4, 3, device=device)
    out = torch.ops.lrp_ext.coefficients(z, z, z, None, 4, 2, 1e-6, 0.25, 1.0, 0.0, True)
    assert out.shape == (0, 2, 2, 2, 3)
    out = torch.ops.lrp_ext.coefficients(z, z, z, None, 6, 1, 1e-6, 0.25, 1.0, 0.0, True)
    assert out.shape == (2, 0, 4, 3)
    assert torch.ops.lrp_ext.sign_sum(z, z, z).shape == (0, 4, 3)


def test_coefficients_fallback_matches_kernel():
    """float16 (no kernel) takes the plain-PyTorch form; it agrees with the compiled op run on
    the same values in float64."""
    _compiled("cpu")
    z, g, P, M = _case((2, 4, 3), torch.float16, "cpu", seed=1, zeros=False)
    got = ops.coefficients(z, g, P, None, COEF_KIND["gamma"], 1, 1e-3, gamma=0.25)
    want = torch.ops.lrp_ext.coefficients(z.double(), g.double(), P.double(), None,
                                          COEF_KIND["gamma"], 1, 1e-3, 0.25, 1.0, 0.0, True)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.double(), want, rtol=1e-2, atol=1e-2 * want.abs().max())


def _signed_ref(W, scale, groups, both):
    Ws = W if scale is None else W * scale.reshape(-1, *([1] * (W.dim() - 1)))
    if not both:
        return Ws.clamp(min=0)
    L = Ws.reshape(groups, W.shape[0] // groups, *W.shape[1:])
    return torch.stack([L.clamp(min=0), L.clamp(max=0)], 1).reshape(2 * W.shape[0],
                                                                    *W.shape[1:])


@pytest.mark.parametrize("groups", [1, 2, 6])
@pytest.mark.parametrize("both", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_signed_weights_match_clamps(device, groups, both, dtype):
    _compiled(device)
    gen = torch.Generator().manual_seed(groups)
    for shape in ((6, 4, 3, 3), (12, 5), (6, 2, 3, 2, 2)):
        W = torch.randn(shape, generator=gen, dtype=dtype).to(device)
        W.view(-1)[::5] = 0.0
        W.view(-1)[3] = float("nan")
        for scale in (None, (torch.rand(shape[0], generator=gen, dtype=dtype) - 0.3).to(device)):
            got = torch.ops.lrp_ext.signed_weights(W, scale, groups, both)
            torch.testing.assert_close(got, _signed_ref(W, scale, groups, both), rtol=0, atol=0,
                                       equal_nan=True)
        Wt = W.transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous view
        torch.testing.assert_close(torch.ops.lrp_ext.signed_weights(Wt, None, groups, both),
                                   _signed_ref(W, None, groups, both), equal_nan=True)


def test_signed_weights_errors(device):
    _compiled(device)
    W = torch.randn(6, 4, 3, device=device)
    op = torch.ops.lrp_ext.signed_weights
    with pytest.raises(RuntimeError, match="groups=4 must divide"):
        op(W, None, 4, True)
    with pytest.raises(RuntimeError, match="scale must have shape"):
        op(W, torch.ones(5, device=device), 1, True)
    with pytest.raises(RuntimeError, match="scale must have W's dtype"):
        op(W, torch.ones(6, dtype=torch.float64, device=device), 1, True)
    with pytest.raises(RuntimeError, match="W must be"):
        op(torch.randn(6, device=device), None, 1, True)


def test_opcheck_model_ops(device):
    _compiled(device)
    z, g, P, M = _case((2, 6, 3, 3), torch.float32, device, seed=2, K=2)
    for kind in COEF_KIND.values():
        torch.library.opcheck(torch.ops.lrp_ext.coefficients,
                              (z, g, P if kind else None, None, kind, 3, 1e-6, 0.25, 2.0, 1.0,
                               True))
    torch.library.opcheck(torch.ops.lrp_ext.sign_sum, (g, P.repeat(2, 1, 1, 1), z))
    torch.library.opcheck(torch.ops.lrp_ext.coefficients,
                          (z, g, P, M, COEF_KIND["alpha_beta"], 1, 1e-6, 0.0, 2.0, 1.0, False))
    W = torch.randn(6, 4, 3, 3, device=device)
    torch.library.opcheck(torch.ops.lrp_ext.signed_weights, (W, torch.rand(6, device=device), 2,
                                                             True))
    torch.library.opcheck(torch.ops.lrp_ext.signed_weights, (W, None, 1, False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_safe_ratio(isa, dtype):
    """y / x with 0 where x == 0 (also -0.0), NaN kept; as the engine's eager safe_div."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 7, 5, generator=gen, dtype=dtype)
    y = torch.randn(3, 7, 5, generator=gen, dtype=dtype)
    x.view(-1)[::6] = 0.0
    x.view(-1)[1] = -0.0
    x.view(-1)[2] = float("nan")
    y.view(-1)[3] = float("inf")
    y.view(-1)[6] = float("nan")  # over x == 0: 0
    x, y = x.to(isa.device), y.to(isa.device)
    got = torch.ops.lrp_ext.safe_ratio(y, x)
    zero = x == 0
    want = (y / torch.where(zero, torch.ones_like(x), x)).masked_fill(zero, 0)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert got[zero].eq(0).all()
    yt, xt = y.transpose(0, 2), x.transpose(0, 2)
    torch.testing.assert_close(torch.ops.lrp_ext.safe_ratio(yt, xt), want.transpose(0, 2),
                               equal_nan=True)
    fin = torch.isfinite(x) & torch.isfinite(y)  # opcheck compares without equal_nan
    torch.library.opcheck(torch.ops.lrp_ext.safe_ratio, (y.where(fin, 1.0), x.where(fin, 2.0)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("K", [1, 3])
def test_safe_ratio_times_gradient(isa, dtype, K):
    """With g (x's shape or K copies stacked): g ⊙ y / x, 0·g where x == 0 (NaN for an infinite
    g there, as g * safe_ratio(y, x) gives it)."""
    gen = torch.Generator().manual_seed(10 + K)
    x = torch.randn(4, 6, 5, generator=gen, dtype=dtype)
    y = torch.randn(4, 6, 5, generator=gen, dtype=dtype)
    g = torch.randn(K * 4, 6, 5, generator=gen, dtype=dtype)
    x.view(-1)[::7] = 0.0
    x.view(-1)[2] = float("nan")
    y.view(-1)[3] = float("inf")
    g.view(-1)[0] = float("inf")  # over x == 0: NaN
    g.view(-1)[5] = float("nan")
    x, y, g = x.to(isa.device), y.to(isa.device), g.to(isa.device)
    zero = x == 0
    r = (y.double() / torch.where(zero, torch.ones_like(x), x).double()).masked_fill(zero, 0)
    want = (g.double().reshape(K, 4, 6, 5) * r.to(dtype).double()).reshape(g.shape).to(dtype)
    got = torch.ops.lrp_ext.safe_ratio(y, x, g)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert got.view(-1)[0].isnan()
    gt = g.transpose(1, 2)  # non-contiguous
    torch.testing.assert_close(torch.ops.lrp_ext.safe_ratio(y.transpose(1, 2), x.transpose(1, 2),
                                                            gt), want.transpose(1, 2),
                               rtol=0, atol=0, equal_nan=True)
    gf, xf, yf = (torch.randn(t.shape, generator=gen, dtype=dtype).to(isa.device) + 2.0
                  for t in (g, x, y))
    torch.library.opcheck(torch.ops.lrp_ext.safe_ratio, (yf, xf, gf))


def test_safe_ratio_errors(device):
    _compiled(device)
    x = torch.randn(4, device=device)
    with pytest.raises(RuntimeError, match="one shape"):
        torch.ops.lrp_ext.safe_ratio(x, x[:3])
    with pytest.raises(RuntimeError, match="one dtype"):
        torch.ops.lrp_ext.safe_ratio(x, x.double())
    with pytest.raises(RuntimeError, match="float32 or float64"):
        torch.ops.lrp_ext.safe_ratio(x.half(), x.half())
    with pytest.raises(RuntimeError, match="g must have x's shape"):
        torch.ops.lrp_ext.safe_ratio(x, x, torch.randn(5, device=device))
    with pytest.raises(RuntimeError, match="g and x must have one dtype"):
        torch.ops.lrp_ext.safe_ratio(x, x, x.double())


def test_gamma_mixed_is_gamma_with_its_sums():
    """kind gamma_mixed is γ's stage with P = ½(z + S), M = ½(z − S), returned as the half sum
    and half difference of (c⁺, c⁻): checked against kind gamma given those P and M (float64,
    the reference), so the two kinds cannot drift apart."""
    z, g, S, _ = _case((3, 4, 5), torch.float64, "cpu", seed=11, K=2)
    S = S + z.abs()  # S ≥ |z|, as Σ|a||W| + |b| is
    args = (1, 1e-6, 0.25, 2.0, 1.0, True)
    got = reference.coefficients(z, g, S, None, COEF_KIND["gamma_mixed"], *args)
    G = reference.coefficients(z, g, 0.5 * (z + S), 0.5 * (z - S), COEF_KIND["gamma"], *args)
    cp, cn = G[:, 0, 0], G[:, 0, 1]
    torch.testing.assert_close(got, torch.stack([0.5 * (cp + cn), 0.5 * (cp - cn)]), rtol=0,
                               atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("K", [1, 3])
def test_sign_sum(isa, dtype, K):
    """A + B where x ≥ 0 (-0.0 and NaN included), A − B where x < 0; K stacked copies of x's
    shape in A and B; non-contiguous inputs; non-finite values as IEEE gives them."""
    gen = torch.Generator().manual_seed(K)
    x = torch.randn(5, 7, 3, generator=gen, dtype=dtype)
    A = torch.randn((K * 5, 7, 3), generator=gen, dtype=dtype)
    B = torch.randn((K * 5, 7, 3), generator=gen, dtype=dtype)
    x.view(-1)[::5] = 0.0
    x.view(-1)[1] = -0.0
    x.view(-1)[2] = float("nan")
    x.view(-1)[3] = -float("inf")
    A.view(-1)[4] = float("inf")
    B.view(-1)[4] = float("inf")  # inf − inf = NaN where x < 0
    B.view(-1)[8] = float("nan")
    x, A, B = x.to(isa.device), A.to(isa.device), B.to(isa.device)
    xs = x.repeat(K, 1, 1)
    want = torch.where(xs < 0, A.double() - B.double(), A.double() + B.double()).to(dtype)
    got = torch.ops.lrp_ext.sign_sum(A, B, x)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(got[(xs > 0) | (xs == 0)].isnan(), (A + B)[(xs > 0) | (xs == 0)].isnan())
    At, Bt, xt = (t.transpose(1, 2) for t in (A, B, x))
    torch.testing.assert_close(torch.ops.lrp_ext.sign_sum(At, Bt, xt), want.transpose(1, 2),
                               rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(reference.sign_sum(A, B, x), want, rtol=0, atol=0, equal_nan=True)


def test_sign_sum_errors(device):
    _compiled(device)
    x = torch.randn(4, 3, device=device)
    op = torch.ops.lrp_ext.sign_sum
    with pytest.raises(RuntimeError, match="A and B must have one shape"):
        op(x, x[:, :2], x)
    with pytest.raises(RuntimeError, match="multiple of its batch"):
        op(torch.randn(6, 3, device=device), torch.randn(6, 3, device=device), x)
    with pytest.raises(RuntimeError, match="multiple of its batch"):
        op(x[:, :2], x[:, :2], x)
    with pytest.raises(RuntimeError, match="one dtype and device"):
        op(x.double(), x.double(), x)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        op(x.half(), x.half(), x.half())
