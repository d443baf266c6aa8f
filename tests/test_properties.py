"""Properties that follow from the rule definitions (docs/rules.md, "Properties worth testing"),
checked on the public functions for every device and code path."""
import pytest
import torch

import lrp_ext
from lrp_ext import testing
from lrp_ext.testing import RULES, call_rule, make_case

F64 = torch.float64


def _min_abs(*zs):
    return min(z.abs().min().item() for z in zs)


@pytest.mark.parametrize("shape", [((7,), 31, 11), ((2, 3), 300, 40)], ids=["small", "wide"])
def test_zero_conserves_without_bias(backend, shape):
    batch, I, O = shape
    case = make_case("zero", batch, I, O, F64, backend.device, bias=False, seed=11)
    out = lrp_ext.zero(case.R, case.a, case.W)
    # sum_i R_in_i = sum_j R_j z_j / (z_j + 1e-9 sgn z_j): each term differs from R_j by at
    # most |R_j| 1e-9 / |z_j|; the guard in make_case keeps |z| well away from 0.
    (z, _, _), = testing.denominators("zero", case.a, case.W)
    z = z.to(case.R.device)
    kept = case.R != 0
    bound = (case.R.abs() * 1e-9 / z.abs()).sum(-1) + 1e-12 * case.R.abs().sum(-1)
    assert kept.sum() > kept.numel() // 2
    dev = (out.sum(-1) - case.R.sum(-1)).abs()
    assert (dev <= bound).all(), f"conservation off by {dev.max():.3e} > {bound.min():.3e}"


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("rule,params", [("z_plus", {}), ("alpha_beta", {}),
                                         ("alpha_beta", {"alpha": 3.0, "beta": 2.0}),
                                         ("z_plus", {"stabilizer": 1e-3})])
def test_alpha_beta_conserves_without_bias(backend, rule, params, dtype):
    alpha, beta = (1.0, 0.0) if rule == "z_plus" else (params.get("alpha", 2.0),
                                                         params.get("beta", 1.0))
    e = params.get("stabilizer", 1e-6)
    for positive in (True, False):
        case = make_case(rule, (5, 2), 29, 13, dtype, backend.device, bias=False,
                         positive=positive, params=params, seed=12 + positive)
        out = call_rule(rule, case.R, case.a, case.W, None, **params)
        a, W, R = (testing.to64(t) for t in (case.a, case.W, case.R))
        ap, an, Wp, Wn = a.clamp(min=0), a.clamp(max=0), W.clamp(min=0), W.clamp(max=0)
        za = ap @ Wp.t() + an @ Wn.t()
        zb = ap @ Wn.t() + an @ Wp.t()
        # alpha R z_a / (z_a + e) - beta R z_b / (z_b - e) = R (alpha - beta) + O(|R| e / |z|)
        zmin = _min_abs(za, zb) if beta else _min_abs(za)
        u = 0 if dtype == F64 else 1e-5  # float32: relative round-off of the sums
        bound = (alpha + beta) * R.abs().sum(-1) * (e / zmin + u) + 1e-12
        dev = (out.double().cpu().sum(-1) - R.cpu().sum(-1)).abs()
        assert (dev <= bound.cpu()).all(), f"{rule} {params}: off by {dev.max():.3e}"


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("rule,eps", [("zero", 1e-9), ("epsilon", 1e-6)])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_epsilon_is_gradient_times_input(backend, rule, eps, bias, dtype):
    """With R = z * g: R / stab(z) = g (up to the stabilizer's share), so
    R_in = a * (g W) = a * grad_a(g . z), gradient x input."""
    case = make_case(rule, (6,), 40, 15, dtype, backend.device, bias=bias, seed=13)
    a = case.a.clone().requires_grad_()
    z = torch.nn.functional.linear(a, case.W, case.b)
    g = case.R  # zero where z is near 0 (make_case's guard)
    (z * g).sum().backward()
    grad_x_input = (a.grad * a).detach()
    R = (z * g).detach()
    out = lrp_ext.zero(R, case.a, case.W, case.b) if rule == "zero" else \
        lrp_ext.epsilon(R, case.a, case.W, case.b, epsilon=eps)
    # R_j / stab(z_j) = g_j - g_j eps / (|z_j| + eps): the stabilizer's share, bounded per entry
    d = g.abs() * eps / (z.detach().abs() + eps)
    bound = torch.linalg.vector_norm(a.detach().abs() * (d @ case.W.abs())).item()
    rtol = 1e-12 if dtype == F64 else 2e-5  # round-off
    testing.assert_close_norm(out, grad_x_input, rtol, bound,
                              msg=f"{rule} vs gradient x input")


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("positive", [True, False], ids=["pos", "mixed"])
def test_gamma_zero_is_epsilon(backend, bias, positive, dtype):
    e = 1e-3
    case = make_case("gamma", (4, 3), 33, 17, dtype, backend.device, bias=bias,
                     positive=positive, seed=14)
    g0 = lrp_ext.gamma(case.R, case.a, case.W, case.b, gamma=0.0, stabilizer=e)
    eps = lrp_ext.epsilon(case.R, case.a, case.W, case.b, epsilon=e)
    testing.assert_close_norm(g0, eps, 1e-12 if dtype == F64 else 1e-5, msg="gamma(0) vs eps")


@pytest.mark.parametrize("rule", ["flat", "w_square"])
@pytest.mark.parametrize("dtype", testing.DTYPES, ids=["f32", "f64", "bf16"])
def test_independent_of_a(backend, rule, dtype):
    case = make_case(rule, (5,), 26, 9, dtype, backend.device, seed=15)
    base = call_rule(rule, case.R, case.a, case.W, case.b)
    for a in (torch.zeros_like(case.a), -7 * case.a, torch.randn_like(case.a.float()).to(dtype),
              case.a.clamp(min=0)):
        assert torch.equal(call_rule(rule, case.R, a, case.W, case.b), base)
    # and the values are the ones the definition gives without a at all
    testing.check_against_reference(rule, base, case)


def test_zero_is_epsilon_1e9_and_z_plus_is_alpha_beta_1_0(backend):
    for bias in (True, False):
        for positive in (True, False):
            case = make_case("epsilon", (3, 2), 19, 8, F64, backend.device, bias=bias,
                             positive=positive, seed=16)
            args = (case.R, case.a, case.W, case.b)
            assert torch.equal(lrp_ext.zero(*args), lrp_ext.epsilon(*args, epsilon=1e-9))
            assert torch.equal(lrp_ext.z_plus(*args, stabilizer=1e-4),
                               lrp_ext.alpha_beta(*args, alpha=1.0, beta=0.0, stabilizer=1e-4))


@pytest.mark.parametrize("rule", RULES)
def test_nn_linear_as_W(backend, rule):
    for bias in (True, False):
        lin = torch.nn.Linear(21, 6, bias=bias).to(backend.device)
        case = make_case(rule, (4,), 21, 6, torch.float32, backend.device, bias=bias, seed=17)
        with torch.no_grad():
            lin.weight.copy_(case.W)
            if bias:
                lin.bias.copy_(case.b)
        got = call_rule(rule, case.R, case.a, lin, None, **case.params)
        want = call_rule(rule, case.R, case.a, case.W, case.b, **case.params)
        assert torch.equal(got, want)
        assert not got.requires_grad


# ------------------------------------------------------------------------------------------
# a >= 0: skipping the a- terms must not change a single bit
# ------------------------------------------------------------------------------------------
# The specification asks for the same numbers: bitwise (0).  A positive value n accepts a
# norm-wise relative difference of n unit roundoffs of the dtype instead.
NONNEG_SKIP_RTOL = 0


@pytest.mark.parametrize("dtype", testing.DTYPES, ids=["f32", "f64", "bf16"])
@pytest.mark.parametrize("rule", RULES)
def test_nonneg_skip_gives_identical_numbers(kernel, monkeypatch, rule, dtype):
    """LRP_EXT_ASSUME_MIXED=1 forces the general mixed-sign code; by default a kernel may skip
    the a- terms on a >= 0.  Post-ReLU input: many exact zeros (and a -0.0)."""
    var = "LRP_EXT_ASSUME_MIXED"
    for k, (batch, I, O) in enumerate([((1,), 37, 13), ((), 20, 9), ((2, 3), 37, 13),
                                       ((70,), 45, 30), ((4,), 1030, 7)]):
        case = make_case(rule, batch, I, O, dtype, kernel.device, positive=False,
                         bias=k % 2 == 0, seed=18 + k)
        a = case.a.clamp(min=0)
        a.view(-1)[0] = -0.0
        monkeypatch.delenv(var, raising=False)
        default = call_rule(rule, case.R, a, case.W, case.b, **case.params)
        monkeypatch.setenv(var, "1")
        mixed = call_rule(rule, case.R, a, case.W, case.b, **case.params)
        monkeypatch.delenv(var)
        msg = (f"{rule} {tuple(a.shape)}: a>=0 default and forced mixed-sign paths differ by "
               f"{(default.double() - mixed.double()).abs().max():.3e}")
        if NONNEG_SKIP_RTOL == 0:
            assert torch.equal(default, mixed), msg
        else:
            testing.assert_close_norm(default, mixed, NONNEG_SKIP_RTOL * testing.unit_roundoff(
                dtype), msg=msg)
