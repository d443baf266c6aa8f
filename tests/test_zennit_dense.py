"""Agreement with zennit 0.5.1 (an independent implementation, used only as an oracle) on random
nn.Linear layers in float64: each zennit rule is registered on a one-layer model and the
relevance is the gradient of the output with respect to the input, with R as grad_output."""
import pytest
import torch

import lrp_ext
from lrp_ext import testing

zennit_rules = pytest.importorskip("zennit.rules")

F64 = torch.float64


def zennit_relevance(rule, lin, a, R):
    handles = rule.register(lin)
    try:
        x = a.detach().clone().requires_grad_()
        out = lin(x)
        (rel,) = torch.autograd.grad(out, x, grad_outputs=R)
    finally:
        handles.remove()
    return rel


def _zbox_bounds(kind, a):
    """(ours_low, ours_high, zennit_low, zennit_high).  zennit broadcasts a lower-rank bound by
    appending trailing dims (image channels), so a per-feature bound goes to it as (1, I)."""
    I = a.shape[-1]
    if kind == "float":
        return -2.5, 3.0, -2.5, 3.0
    g = torch.Generator().manual_seed(7)
    lo = (-1.5 - torch.rand(I, generator=g, dtype=F64)).to(a.device)
    hi = (1.5 + torch.rand(I, generator=g, dtype=F64)).to(a.device)
    if kind == "per-feature":
        return lo, hi, lo[None], hi[None]
    lo_full, hi_full = lo.expand(a.shape) - 0.1 * a.abs(), hi.expand(a.shape) + 0.1 * a.abs()
    return lo_full, hi_full, lo_full, hi_full


# (our rule, our parameters, zennit rule)
RULE_PAIRS = [
    ("zero", {}, lambda: zennit_rules.Epsilon(epsilon=1e-9)),
    ("epsilon", {}, lambda: zennit_rules.Epsilon()),
    ("epsilon", {"epsilon": 0.25}, lambda: zennit_rules.Epsilon(epsilon=0.25)),
    ("gamma", {}, lambda: zennit_rules.Gamma()),
    ("gamma", {"gamma": 1.0, "stabilizer": 0.1},
     lambda: zennit_rules.Gamma(gamma=1.0, stabilizer=0.1)),
    ("alpha_beta", {}, lambda: zennit_rules.AlphaBeta()),
    ("alpha_beta", {"alpha": 1.0, "beta": 0.0}, lambda: zennit_rules.AlphaBeta(1.0, 0.0)),
    ("alpha_beta", {"alpha": 3.0, "beta": 2.0, "stabilizer": 0.01},
     lambda: zennit_rules.AlphaBeta(3.0, 2.0, stabilizer=0.01)),
    ("z_plus", {}, lambda: zennit_rules.ZPlus()),
    ("flat", {}, lambda: zennit_rules.Flat()),
    ("w_square", {}, lambda: zennit_rules.WSquare()),
    ("w_square", {"stabilizer": 0.5}, lambda: zennit_rules.WSquare(stabilizer=0.5)),
]


@pytest.mark.parametrize("shape", [((5,), 23, 11), ((2,), 130, 64)], ids=["small", "wide"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("positive", [True, False], ids=["pos", "mixed"])
@pytest.mark.parametrize("rule,params,zrule", RULE_PAIRS,
                         ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(RULE_PAIRS)])
def test_matches_zennit(device, rule, params, zrule, positive, bias, shape):
    batch, I, O = shape
    case = testing.make_case(rule, batch, I, O, F64, device, positive=positive,
                             bias=bias, params=params, seed=I * 4 + 2 * positive + bias)
    lin = torch.nn.Linear(I, O, bias=bias).to(device=device, dtype=F64)
    with torch.no_grad():
        lin.weight.copy_(case.W)
        if bias:
            lin.bias.copy_(case.b)
    want = zennit_relevance(zrule(), lin, case.a, case.R)
    got = testing.call_rule(rule, case.R, case.a, lin, None, **params)
    testing.assert_close_norm(got, want, 1e-9, msg=f"{rule} {params} vs zennit")


@pytest.mark.parametrize("kind", ["float", "per-feature", "full"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("positive", [True, False], ids=["pos", "mixed"])
def test_z_box_matches_zennit(device, kind, bias, positive):
    batch, I, O = (6,), 19, 8
    case = testing.make_case("z_box", batch, I, O, F64, device, positive=positive,
                             bias=bias, guard=False, seed=31 + bias + 2 * positive)
    lo, hi, zlo, zhi = _zbox_bounds(kind, case.a)
    R = testing.guard_relevance("z_box", case.R, case.a, case.W, case.b, low=lo, high=hi)
    lin = torch.nn.Linear(I, O, bias=bias).to(device=device, dtype=F64)
    with torch.no_grad():
        lin.weight.copy_(case.W)
        if bias:
            lin.bias.copy_(case.b)
    want = zennit_relevance(zennit_rules.ZBox(low=zlo, high=zhi), lin, case.a, R)
    got = lrp_ext.z_box(R, case.a, lin, low=lo, high=hi)
    testing.assert_close_norm(got, want, 1e-9, msg=f"z_box {kind} vs zennit")


def test_zennit_agrees_with_itself_as_sanity():
    """The oracle's harness gives zennit's plain gradient when no rule is registered... and a
    different answer with a rule (so the hooks really ran)."""
    lin = torch.nn.Linear(5, 3).double()
    a = torch.randn(2, 5, dtype=F64)
    R = torch.randn(2, 3, dtype=F64)
    x = a.clone().requires_grad_()
    (plain,) = torch.autograd.grad(lin(x), x, R)
    torch.testing.assert_close(plain, R @ lin.weight.detach())
    rel = zennit_relevance(zennit_rules.Epsilon(), lin, a, R)
    assert not torch.allclose(rel, plain)
