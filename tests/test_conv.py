"""Conv rules: fused implementation (lrp_ext.conv) against the plain reference
(lrp_ext.conv_reference) in float64, and against the dense rules for a full-input kernel."""
import itertools

import pytest
import torch

from lrp_ext import conv as fast
from lrp_ext import conv_reference as ref
from lrp_ext import reference as dense_ref

RULES = ["zero", "epsilon", "gamma", "alpha_beta", "z_plus", "flat", "w_square", "z_box"]
D = torch.float64


def _kwargs(rule, a, gen):
    if rule == "z_box":
        low = -torch.rand(a.shape[1:], generator=gen, dtype=D) - 0.5
        return dict(low=low, high=low.abs() + 1.0)
    if rule == "gamma":
        return dict(gamma=0.3)
    if rule == "alpha_beta":
        return dict(alpha=2.0, beta=1.0)
    return {}


_PARAMS = {"epsilon": dict(epsilon=1e-6), "gamma": dict(gamma=0.3, stabilizer=1e-6),
           "alpha_beta": dict(alpha=2.0, beta=1.0, stabilizer=1e-6),
           "z_plus": dict(stabilizer=1e-6)}

# (nd, transposed, C, O, k, stride, padding, dilation, groups, output_padding, spatial)
CASES = [
    (2, False, 3, 5, 3, 1, 1, 1, 1, 0, (7, 6)),
    (2, False, 4, 6, (3, 2), (2, 1), (1, 0), (1, 2), 2, 0, (9, 8)),
    (1, False, 6, 4, 5, 2, 2, 1, 2, 0, (11,)),
    (1, False, 3, 3, 3, 1, 4, 3, 3, 0, (5,)),
    (3, False, 2, 4, 3, 2, 1, 1, 1, 0, (5, 4, 5)),
    (2, True, 4, 6, 3, 2, 1, 1, 2, 1, (4, 5)),
    (1, True, 3, 2, 4, 3, 0, 2, 1, 2, (5,)),
    (3, True, 2, 2, 2, 1, 0, 1, 2, 0, (3, 2, 3)),
    (2, False, 8, 8, 3, 1, 0, 1, 1, 0, (4, 4)),  # weight larger than the output: split backward
    (2, False, 5, 7, 1, 1, 0, 1, 1, 0, (3, 4)),  # 1×1: a product per sample
    (3, False, 12, 16, 1, 1, 0, 2, 1, 0, (2, 1, 1)),  # 1×1, weight larger than a: one product
]


@pytest.fixture(autouse=True)
def _split_small_weights(monkeypatch):
    """The split backward of weight-bound layers (``_weight_bound``) for the small weights here."""
    monkeypatch.setattr(fast, "_SPLIT_MIN", 1)


def _layer(case, gen, bias):
    nd, tr, C, O, k, stride, padding, dilation, groups, opad, sp = case
    ks = (k,) * nd if isinstance(k, int) else k
    if tr:
        W = torch.randn((C, O // groups) + ks, generator=gen, dtype=D)
    else:
        W = torch.randn((O, C // groups) + ks, generator=gen, dtype=D)
    b = torch.randn(O, generator=gen, dtype=D) if bias else None
    hyper = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                 transposed=tr, output_padding=opad)
    return W, b, hyper


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("ci", range(len(CASES)))
@pytest.mark.parametrize("bias,nonneg", [(True, True), (True, False), (False, False)])
def test_fast_matches_reference(rule, ci, bias, nonneg):
    gen = torch.Generator().manual_seed(1000 * ci + 7 * RULES.index(rule) + bias + 2 * nonneg)
    case = CASES[ci]
    W, b, hyper = _layer(case, gen, bias)
    N = 2
    a = torch.randn((N, case[2]) + case[10], generator=gen, dtype=D)
    if nonneg:
        a = a.clamp(min=0)
    with torch.no_grad():
        z = ref._Layer(W, b, hyper, "t").f(a, W, b)
    R = torch.randn(z.shape, generator=gen, dtype=D)
    kw = _kwargs(rule, a, gen)
    got = getattr(fast, rule)(R, a, W, b, **hyper, **kw)
    want = getattr(ref, rule)(R, a, W, b, **hyper, **kw)
    assert got.shape == a.shape and got.dtype == a.dtype
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    if rule in ("zero", "epsilon", "gamma", "alpha_beta"):
        got2 = getattr(fast, rule)(R, a, W, b, **hyper, **kw, output=z)
        torch.testing.assert_close(got2, want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("rule", ["gamma", "alpha_beta"])
@pytest.mark.parametrize("chunk", [1, 8000])
def test_backward_in_chunks_of_samples(monkeypatch, rule, chunk):
    """The stacked transposed convolution of a large batch runs over chunks of samples (one and
    two samples per chunk here); the result is the reference's."""
    monkeypatch.setattr(fast, "_CHUNK_BYTES", chunk)
    gen = torch.Generator().manual_seed(17)
    W = torch.randn(4, 3, 3, 3, generator=gen, dtype=D)
    b = torch.randn(4, generator=gen, dtype=D)
    a = torch.rand(7, 3, 9, 8, generator=gen, dtype=D)
    R = torch.randn(7, 4, 7, 6, generator=gen, dtype=D)
    kw = _kwargs(rule, a, gen)
    torch.testing.assert_close(getattr(fast, rule)(R, a, W, b, **kw),
                               getattr(ref, rule)(R, a, W, b, **kw), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("N", [1, 3])
@pytest.mark.parametrize("C,O,sp", [(5, 7, (3, 4)), (12, 16, (2, 1))])
@pytest.mark.parametrize("rule", ["epsilon", "gamma", "alpha_beta", "z_plus", "w_square"])
def test_pointwise_conv_as_products(N, C, O, sp, rule):
    """1×1 convolutions with stride 1 and no padding run as matrix products (one per sample,
    or one over all samples when the weight outweighs the input): the reference's numbers, on
    a non-contiguous R, with the model-level entry's K stacked gradients, and with a padded
    (replicate) 1×1 layer, whose transposed convolution reaches the padded input."""
    gen = torch.Generator().manual_seed(11 * C + N)
    W = torch.randn(O, C, 1, 1, generator=gen, dtype=D)
    b = torch.randn(O, generator=gen, dtype=D)
    a = torch.rand((N, C) + sp, generator=gen, dtype=D) - 0.2
    R = torch.randn((N,) + sp + (O,), generator=gen, dtype=D).movedim(-1, 1)
    assert not R.is_contiguous()
    spec = fast.conv_spec(W, b)
    assert spec.pointwise and spec._gemm(a, W, None)
    got = getattr(fast, rule)(R, a, W, b)
    torch.testing.assert_close(got, getattr(ref, rule)(R, a, W, b), rtol=1e-9, atol=1e-9)
    if rule in fast.COEF_RULES:  # K = 2 gradients of one forward, stacked along dim 0
        params = _PARAMS[rule]
        with torch.no_grad():
            z = ref._Layer(W, b, {}, "t").f(a, W, b)
        g = torch.randn((2 * N,) + tuple(z.shape[1:]), generator=gen, dtype=D)
        cp, cn = fast.rule_backward(rule, g, a, fast.conv_spec(W, b), output=z, **params)
        for k in range(2):
            def part(c):
                return c.reshape((2 * N,) + tuple(a.shape[1:]))[k * N:(k + 1) * N]
            rel = a * part(cp) if cn is None else \
                a.clamp(min=0) * part(cp) + a.clamp(max=0) * part(cn)
            want = getattr(ref, rule)(z * g[k * N:(k + 1) * N], a, W, b, **params)
            torch.testing.assert_close(rel, want, rtol=1e-9, atol=1e-9)
    m = torch.nn.Conv2d(C, O, 1, padding=1, padding_mode="replicate").double()
    with torch.no_grad():
        Rm = torch.randn_like(m(a))
    torch.testing.assert_close(getattr(fast, rule)(Rm, a, m), getattr(ref, rule)(Rm, a, m),
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("N", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("C,O", [(3, 5), (40, 50)])
def test_pointwise_products_equal_conv(N, bias, C, O):
    """The products behind 1×1 convolutions, every branch (one sample; several, with the
    weight smaller or larger than the input), with and without a bias, against ATen's."""
    gen = torch.Generator().manual_seed(C + N + bias)
    W = torch.randn(O, C, 1, 1, generator=gen, dtype=D)
    b = torch.randn(O, generator=gen, dtype=D) if bias else None
    a = torch.randn(N, C, 3, 2, generator=gen, dtype=D)
    torch.testing.assert_close(fast._pointwise(W.reshape(O, C), a, b),
                               torch.nn.functional.conv2d(a, W, b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rule", ["epsilon", "gamma", "alpha_beta", "z_plus"])
@pytest.mark.parametrize("shape", ["weight-bound", "output-bound", "pointwise"])
@pytest.mark.parametrize("nonneg", [True, False])
def test_merged_batchnorm_scale(rule, shape, nonneg):
    """A layer with a BatchNorm merged into it (``row_scale`` s, of both signs, and the merged
    bias): the model-level entry's numbers are the reference's on the merged weight
    ``diag(s)·W``, by each backward (split with ``s c⁻`` on the raw weight, stacked)."""
    gen = torch.Generator().manual_seed(31 + 3 * nonneg + len(shape))
    C, O, k, sp = {"weight-bound": (6, 8, 3, (3, 3)), "output-bound": (2, 3, 3, (7, 6)),
                   "pointwise": (9, 12, 1, (2, 2))}[shape]
    W = torch.randn(O, C, k, k, generator=gen, dtype=D)
    scale = torch.randn(O, generator=gen, dtype=D)
    b = torch.randn(O, generator=gen, dtype=D)
    a = torch.randn((2, C) + sp, generator=gen, dtype=D)
    if nonneg:
        a = a.clamp(min=0)
    Wm = W * scale.reshape(-1, 1, 1, 1)
    spec = fast.conv_spec(W, None, padding=1 if k == 3 else 0).with_params(W, b, row_scale=scale)
    hyper = dict(padding=1 if k == 3 else 0)
    with torch.no_grad():
        z = ref._Layer(Wm, b, hyper, "t").f(a, Wm, b)
    assert fast._weight_bound(spec, z) == (shape != "output-bound")
    g = torch.randn(z.shape, generator=gen, dtype=D)
    params = _PARAMS[rule]
    cp, cn = fast.rule_backward(rule, g, a, spec, output=[z.clone()], nonneg=nonneg, **params)
    cp = cp.reshape(a.shape)  # the coefficients may be grouped views (N, g, C/g, *sp)
    rel = a * cp if cn is None else a.clamp(min=0) * cp + a.clamp(max=0) * cn.reshape(a.shape)
    want = getattr(ref, rule)(z * g, a, Wm, b, **hyper, **params)
    torch.testing.assert_close(rel, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("signs", ["a >= 0", "both"])
def test_gamma_without_sign_check(monkeypatch, signs):
    """Model-level γ with ``sign_check=False`` does not look at a's signs (the look fails
    here) and takes the path for inputs of both signs: the reference's numbers either way."""
    def no_look(a):
        raise AssertionError("a's signs were looked at")
    monkeypatch.setattr(fast, "_nonneg", no_look)
    gen = torch.Generator().manual_seed(41)
    W = torch.randn(5, 3, 3, 3, generator=gen, dtype=D)
    b = torch.randn(5, generator=gen, dtype=D)
    a = torch.randn(2, 3, 6, 7, generator=gen, dtype=D)
    if signs == "a >= 0":
        a = a.clamp(min=0)
    with torch.no_grad():
        z = ref._Layer(W, b, {}, "t").f(a, W, b)
    g = torch.randn(z.shape, generator=gen, dtype=D)
    gin, none = fast.rule_backward("gamma", g, a, fast.conv_spec(W, b), output=z,
                                   sign_check=False, **_PARAMS["gamma"])
    assert none is None
    torch.testing.assert_close(a * gin, ref.gamma(z * g, a, W, b, **_PARAMS["gamma"]),
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["numbers", "per-sample", "per-channel padded"])
def test_z_box_bounds(kind):
    """z^B's bounds: numbers and per-channel bounds (the same for every sample: their part of
    the forward sum formed once) and bounds that differ per sample, against the reference;
    also in the model-level entry (R = output ⊙ g in the rule's one pass)."""
    gen = torch.Generator().manual_seed(23)
    m = torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect" if "padded" in kind
                        else "zeros").double()
    a = torch.rand(3, 3, 6, 5, generator=gen, dtype=D) * 2 - 1
    if kind == "numbers":
        low, high = -1.5, 1.25
    elif kind == "per-sample":
        low = -torch.rand(a.shape, generator=gen, dtype=D) - 1
        high = torch.rand(a.shape, generator=gen, dtype=D) + 1
    else:
        low = -torch.rand(3, 1, 1, generator=gen, dtype=D) - 1
        high = torch.rand(3, 1, 1, generator=gen, dtype=D) + 1
    with torch.no_grad():
        z = m(a)
    g = torch.randn(z.shape, generator=gen, dtype=D)
    want = ref.z_box(z * g, a, m, low=low, high=high)
    torch.testing.assert_close(fast.z_box(z * g, a, m, low=low, high=high), want, rtol=1e-9,
                               atol=1e-9)
    if kind != "per-channel padded":  # the model-level entry pads only with zeros
        got, how = fast.rule_backward("z_box", g, a, fast.conv_spec(m), output=z, low=low,
                                      high=high, stabilizer=1e-6)
        assert how == "relevance"
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("rule", RULES)
def test_full_kernel_equals_dense(rule):
    """A conv whose kernel covers the whole input is a Linear layer on the flattened input."""
    gen = torch.Generator().manual_seed(3 + RULES.index(rule))
    N, C, H, Wd, O = 3, 2, 4, 3, 5
    W = torch.randn(O, C, H, Wd, generator=gen, dtype=D)
    b = torch.randn(O, generator=gen, dtype=D)
    a = torch.randn(N, C, H, Wd, generator=gen, dtype=D)
    R = torch.randn(N, O, 1, 1, generator=gen, dtype=D)
    kw = _kwargs(rule, a, gen)
    got = getattr(fast, rule)(R, a, W, b, **kw)
    dkw = dict(kw)
    if rule == "z_box":
        dkw = dict(low=kw["low"].reshape(-1), high=kw["high"].reshape(-1))
    want = getattr(dense_ref, rule)(R.reshape(N, O), a.reshape(N, -1), W.reshape(O, -1), b,
                                    **dkw)
    torch.testing.assert_close(got, want.reshape(a.shape), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "circular", "same"])
@pytest.mark.parametrize("rule", ["epsilon", "gamma", "flat", "w_square", "z_box"])
def test_module_padding_modes(mode, rule):
    torch.manual_seed(5)
    if mode == "same":
        m = torch.nn.Conv2d(3, 4, (4, 3), padding="same", dilation=(1, 2)).double()
    else:
        m = torch.nn.Conv2d(3, 4, 3, padding=2, stride=2, padding_mode=mode).double()
    a = torch.randn(2, 3, 7, 8, dtype=D)
    with torch.no_grad():
        z = m(a)
    R = torch.randn_like(z)
    kw = _kwargs(rule, a, torch.Generator().manual_seed(1))
    got = getattr(fast, rule)(R, a, m, **kw)
    want = getattr(ref, rule)(R, a, m, **kw)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    if rule == "epsilon":  # LRP-ε with R = z ⊙ g is gradient × input
        g = torch.randn_like(z)
        x = a.clone().requires_grad_(True)
        grad, = torch.autograd.grad(m(x), x, g)
        got = fast.epsilon(z * g, a, m, epsilon=1e-12)
        if m.bias is not None:  # the bias takes its share: compare on a bias-free copy
            m0 = torch.nn.Conv2d(3, 4, m.kernel_size, padding=m.padding, stride=m.stride,
                                 dilation=m.dilation, padding_mode=m.padding_mode,
                                 bias=False).double()
            m0.weight.data.copy_(m.weight.data)
            with torch.no_grad():
                z0 = m0(a)
            x = a.clone().requires_grad_(True)
            grad, = torch.autograd.grad(m0(x), x, g)
            got = fast.epsilon(z0 * g, a, m0, epsilon=1e-12)
        torch.testing.assert_close(got, grad * a, rtol=1e-7, atol=1e-9)


def test_conservation_and_float32():
    torch.manual_seed(0)
    m = torch.nn.Conv2d(4, 8, 3, padding=1, bias=False)
    a = torch.rand(2, 4, 9, 9)
    R = torch.rand(2, 8, 9, 9)
    for rule in ("z_plus", "alpha_beta"):
        out = getattr(fast, rule)(R, a, m)
        torch.testing.assert_close(out.sum(), R.sum(), rtol=1e-4, atol=1e-4)
        want = getattr(ref, rule)(R.double(), a.double(), m.weight.double(), padding=1)
        torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-5)
    out = fast.flat(R, a, m)
    torch.testing.assert_close(out.sum(), R.sum(), rtol=1e-4, atol=1e-4)


def test_unbatched_and_module_equals_tensor():
    torch.manual_seed(1)
    m = torch.nn.Conv1d(3, 4, 3, stride=2, padding=1, groups=1).double()
    a = torch.randn(3, 10, dtype=D)
    R = torch.randn(4, 5, dtype=D)
    out = fast.gamma(R, a, m)
    assert out.shape == a.shape
    want = fast.gamma(R[None], a[None], m.weight, m.bias, stride=2, padding=1)[0]
    torch.testing.assert_close(out, want)


def test_bad_arguments():
    m = torch.nn.Conv2d(3, 4, 3)
    a = torch.randn(1, 3, 8, 8)
    R = torch.randn(1, 4, 6, 6)
    with pytest.raises(ValueError, match="R must have the layer's output shape"):
        fast.epsilon(torch.randn(1, 4, 5, 5), a, m)
    with pytest.raises(ValueError, match="channels"):
        fast.epsilon(R, torch.randn(1, 2, 8, 8), m)
    with pytest.raises(ValueError, match="bias must be None"):
        fast.epsilon(R, a, m, torch.zeros(4))
    with pytest.raises(TypeError, match="layer must be a convolution module"):
        fast.epsilon(R, a, torch.nn.Linear(3, 4))
    with pytest.raises(ValueError, match="dtype mismatch"):
        fast.epsilon(R.double(), a, m)
    with pytest.raises(ValueError, match="alpha"):
        fast.alpha_beta(R, a, m, alpha=1.0, beta=1.0)
    with pytest.raises(ValueError, match="low is required"):
        fast.z_box(R, a, m, high=1.0)
    with pytest.raises(ValueError, match="spatial dims"):
        fast.epsilon(R, torch.randn(3, 8), m)
    with pytest.raises(ValueError, match="too small"):
        fast.epsilon(R, torch.randn(1, 3, 2, 2), m)


@pytest.mark.parametrize("ci", [0, 1, 5])
@pytest.mark.parametrize("nonneg", [True, False])
def test_gamma_negative_and_zero_outputs(ci, nonneg):
    """γ < 0 takes the general path; exact zeros of z (no bias, zero inputs) are masked."""
    gen = torch.Generator().manual_seed(77 + ci)
    case = CASES[ci]
    W, _, hyper = _layer(case, gen, False)
    a = torch.randn((2, case[2]) + case[10], generator=gen, dtype=D)
    a[:, :, ::2] = 0.0  # zero rows: some outputs are exactly 0
    if nonneg:
        a = a.clamp(min=0)
    with torch.no_grad():
        z = ref._Layer(W, None, hyper, "t").f(a, W)
    R = torch.randn(z.shape, generator=gen, dtype=D)
    for g in (-0.2, 0.0, 0.25):
        want = ref.gamma(R, a, W, **hyper, gamma=g)
        torch.testing.assert_close(fast.gamma(R, a, W, **hyper, gamma=g), want,
                                   rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(fast.gamma(R, a, W, **hyper, gamma=g, output=z), want,
                                   rtol=1e-7, atol=1e-9)
