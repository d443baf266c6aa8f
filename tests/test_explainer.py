"""Explainer: explain's numbers at every call, while it keeps what the rules derive from the
model's weights (merged BatchNorms, signed weights, |W|) between calls; checked layer by layer
against the references after each way the parameters can change."""
import pytest
import torch
import torch.nn.functional as F

import lrp_ext
from lrp_ext import conv_reference as cref
from lrp_ext import reference as dref
from lrp_ext.composite import AlphaBeta, Composite, Epsilon, Gamma

from _model_helpers import assert_unchanged, in_threads, snapshot

nn = torch.nn

# the first conv: αβ (signed weights, an input of both signs); the second: γ after a ReLU
# (W⁺ with the merged BatchNorm's scale); the Linear: ε
COMP = Composite(layer_map=[(nn.Conv2d, Gamma(0.3)), (nn.Linear, Epsilon(0.01))],
                 first_map=[(nn.Conv2d, AlphaBeta(alpha=2.0, beta=1.0))])


def _model(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2),
                          nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 3 * 3, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        bn = model[3]
        bn.running_mean.copy_(torch.randn(5, generator=g) * 0.1)
        bn.running_var.copy_(torch.rand(5, generator=g) + 0.5)
        bn.weight.copy_(torch.randn(5, generator=g))  # scales of both signs
    return model.double().eval()


def _by_hand(model, x, target, first=None):
    """The composite layer by layer with the references, the BatchNorm folded by hand;
    ``first(R, x, conv)``: the first layer's rule (default: αβ with α = 2, β = 1)."""
    with torch.no_grad():
        a1 = model[1](model[0](x))
        a2 = model[4](model[3](model[2](a1)))
        a3 = model[5](a2)
        o = model[6](a3)
        bn = model[3]
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        W2 = model[2].weight * s[:, None, None, None]
        b2 = (model[2].bias - bn.running_mean) * s + bn.bias
    R = torch.zeros_like(o)
    R[:, target] = o[:, target]
    R = dref.epsilon(R, a3, model[6].weight, model[6].bias, epsilon=0.01).reshape(a2.shape)
    R = cref.gamma(R, a1, W2, b2, stride=2, gamma=0.3)
    if first is not None:
        return first(R, x, model[0])
    return cref.alpha_beta(R, x, model[0], alpha=2.0, beta=1.0)


def _check(ex, model, x, target=1):
    torch.testing.assert_close(ex(x, target), _by_hand(model, x, target), rtol=1e-9,
                               atol=1e-12)


def test_every_call_matches_the_references_as_the_parameters_change():
    model = _model()
    x = torch.randn(2, 2, 9, 9, dtype=torch.float64)
    ex = lrp_ext.Explainer(model, COMP)
    _check(ex, model, x)
    kept = dict(ex._prepared._items)
    assert kept, "the explainer keeps nothing between calls"
    _check(ex, model, x, target=2)  # unchanged parameters: the kept entries are used again
    assert all(ex._prepared._items[k] is v for k, v in kept.items())
    with torch.no_grad():
        model[0].weight.mul_(-1.5)  # in place: the first layer's signed weights swap
    _check(ex, model, x)
    with torch.no_grad():
        model[3].running_var.mul_(3.0)  # the merged BatchNorm's scale
        model[3].weight.neg_()
    _check(ex, model, x)
    model[2].weight = nn.Parameter(model[2].weight.detach() * 2.0)  # replaced
    _check(ex, model, x)
    model.load_state_dict(_model(seed=1).state_dict())
    _check(ex, model, x)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(x)[:, 0].sum().backward()
    opt.step()
    _check(ex, model, x)


def test_a_change_through_data_needs_refresh():
    """``p.data`` changes bypass the version counter: ``refresh()`` rebuilds."""
    model = _model()
    x = torch.randn(2, 2, 9, 9, dtype=torch.float64)
    ex = lrp_ext.Explainer(model, COMP)
    _check(ex, model, x)
    model[2].weight.data.mul_(-2.0)
    ex.refresh()
    assert len(ex._prepared) == 0
    _check(ex, model, x)


class _PlainWeight(nn.Module):
    """A weight held as a plain tensor attribute, neither parameter nor buffer: nothing derived
    from it may be kept, since a change in place leaves no trace in the parameters."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.w = torch.randn(4, 3 * 5 * 5)

    def forward(self, x):
        return F.linear(F.relu(self.conv(x)).flatten(1), self.w)


def test_a_weight_that_is_not_a_parameter_is_not_kept():
    torch.manual_seed(4)
    model = _PlainWeight().double().eval()
    model.w = model.w.double()
    comp = Composite(layer_map=[(nn.Conv2d, Gamma(0.3)), (nn.Linear, Gamma(0.5))])
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64)
    ex = lrp_ext.Explainer(model, comp)
    for k in (1.0, -3.0, 0.5):
        with torch.no_grad():
            model.w.mul_(k)  # the same tensor object, new values
            h = F.relu(model.conv(x))
            o = model(x)
        R = torch.zeros_like(o)
        R[:, 2] = o[:, 2]
        R = dref.gamma(R, h.flatten(1), model.w, None, gamma=0.5).reshape(h.shape)
        want = cref.gamma(R, x, model.conv, gamma=0.3)
        torch.testing.assert_close(ex(x, 2), want, rtol=1e-9, atol=1e-12)


def test_torchvision_model_same_as_explain_and_left_unchanged():
    """Residual sums, merged BatchNorms, z^B on the first layer: at every call explain's
    numbers, and the model byte-identical."""
    import torchvision
    model = torchvision.models.resnet18(num_classes=7)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    model = model.double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=g)
    before = snapshot(model)
    for comp in ("epsilon_gamma_box", "epsilon_plus_flat"):
        ex = lrp_ext.Explainer(model, comp, low=-3.0, high=3.0)
        for target in (1, 4, [[0, 6]]):
            got = ex(x, target)
            want = lrp_ext.explain(model, x, target, composite=comp, low=-3.0, high=3.0)
            # bit for bit (a resumed explain-dataset run must write the same bytes)
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert_unchanged(before, snapshot(model))


def test_threads_share_one_explainer():
    model = _model()
    xs = [torch.randn(2, 2, 9, 9, dtype=torch.float64) for _ in range(4)]
    ex = lrp_ext.Explainer(model, COMP)
    got = in_threads(lambda x: ex(x, 1), xs)
    for g, x in zip(got, xs):
        torch.testing.assert_close(g, _by_hand(model, x, 1), rtol=1e-9, atol=1e-12)


def test_arguments():
    model = _model()
    x = torch.randn(1, 2, 9, 9, dtype=torch.float64)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        lrp_ext.Explainer(lambda t: t)
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) \['lo'\]"):
        lrp_ext.Explainer(model, lo=0.0)
    ex = lrp_ext.Explainer(model, COMP)
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) \['canonize'\]"):
        ex(x, 1, canonize=False)
    with pytest.raises(ValueError, match="exactly one of target"):
        ex(x)
    rel, out = ex(x, 1, return_output=True)
    torch.testing.assert_close(out, model(x))
    torch.testing.assert_close(rel, _by_hand(model, x, 1), rtol=1e-9, atol=1e-12)
    # defaults given to the constructor, overridden per call
    box = Composite(layer_map=[(nn.Conv2d, Gamma(0.3)), (nn.Linear, Epsilon(0.01))],
                    first_map=[(nn.Conv2d, "z_box")])
    ex = lrp_ext.Explainer(model, box, low=-1.0, high=1.0)
    for lo, hi in ((-1.0, 1.0), (-4.0, 5.0)):
        got = ex(x, 0) if lo == -1.0 else ex(x, 0, low=lo, high=hi)
        want = _by_hand(model, x, 0, first=lambda R, a, conv: cref.z_box(
            R, a, conv, low=torch.full_like(a, lo), high=torch.full_like(a, hi)))
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_kept_bytes():
    """One αβ conv on an input of both signs keeps W⁺ and W⁻ (2 × 3·2·3·3 float64 values)
    and nothing of the model's own weight."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), nn.Flatten()).double().eval()
    ex = lrp_ext.Explainer(model, Composite(layer_map=[(nn.Conv2d, AlphaBeta(2.0, 1.0))]))
    assert ex.kept_bytes() == 0
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        z = model[0](x)
    R = torch.zeros_like(z)
    R[:, 1] = z[:, 1]
    torch.testing.assert_close(ex(x, relevance=R.flatten(1)),
                               cref.alpha_beta(R, x, model[0], alpha=2.0, beta=1.0),
                               rtol=1e-9, atol=1e-12)
    assert ex.kept_bytes() == 2 * 3 * 2 * 3 * 3 * 8
    ex.refresh()
    assert ex.kept_bytes() == 0


def test_lazy_module():
    """A LazyLinear is materialised by the first call; every call matches the references
    (epsilon_plus: z⁺ on the conv, ε on the Linear)."""
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, dtype=torch.float64), nn.ReLU(), nn.Flatten(),
                          nn.LazyLinear(5, dtype=torch.float64)).eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    ex = lrp_ext.Explainer(model, "epsilon_plus")
    for i in range(3):
        got = ex(x, 1)
        with torch.no_grad():
            h = model[1](model[0](x))
            o = model(x)
        R = torch.zeros_like(o)
        R[:, 1] = o[:, 1]
        R = dref.epsilon(R, h.flatten(1), model[3].weight, model[3].bias).reshape(h.shape)
        torch.testing.assert_close(got, cref.z_plus(R, x, model[0]), rtol=1e-9, atol=1e-12)


def test_first_call_under_inference_mode():
    """What the first call keeps, made under ``torch.inference_mode()``, serves later calls
    outside it (and under no_grad)."""
    model = _model()
    x = torch.randn(2, 2, 9, 9, dtype=torch.float64)
    ex = lrp_ext.Explainer(model, COMP)
    want = _by_hand(model, x, 1)
    with torch.inference_mode():
        first = ex(x, 1)
    with torch.no_grad():
        third = ex(x, 1)
    for got in (first, ex(x, 1), third):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
