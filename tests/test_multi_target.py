"""Several targets per forward: ``explain(model, x, target=(N, T) or (1, T))`` runs one forward
and one batched backward (the rule nodes at batch T·N) and must give, for every target, the
relevance of a separate call with that target, stacked as (N, T, ...).  Also: the direct
relevance of the first layer's flat / w² / z^B rule at input entries that are exactly 0."""
import sys
import os

import pytest
import torch
import torch.nn.functional as F

from lrp_ext import conv as lconv
from lrp_ext.composite import Composite, Flat, WSquare, ZBox
from lrp_ext.explain import explain

sys.path.insert(0, os.path.dirname(__file__))
import _tiny_transformers as tt  # noqa: E402

nn = torch.nn


class Net(nn.Module):
    """Conv + BatchNorm (merged), in-place ReLU, residual sum, max and average pooling, a
    mixed-sign (tanh) input to a conv, a dense head with a bias."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1, groups=2)
        self.c3 = nn.Conv2d(6, 6, 1)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(24, 7)

    def forward(self, x):
        y = F.relu(self.bn1(self.c1(x)), inplace=True)
        y = self.pool(y)
        y = y + F.relu(self.c2(y))
        y = self.c3(torch.tanh(y))
        return self.fc(torch.flatten(self.avg(y), 1))


def _net(dtype):
    torch.manual_seed(0)
    m = Net().to(dtype)
    with torch.no_grad():
        m.bn1.running_mean.uniform_(-0.2, 0.2)
        m.bn1.running_var.uniform_(0.5, 2.0)
        m.bn1.weight.uniform_(0.5, 1.5)
    return m.eval()


def _separate(model, x, targets, **kw):
    """(N, T, ...) from one call per target column."""
    cols = [explain(model, x, targets[:, t] if targets.shape[0] > 1 else int(targets[0, t]),
                    **kw) for t in range(targets.shape[1])]
    return torch.stack(cols, 1)


@pytest.mark.parametrize("composite", ["epsilon_gamma_box", "epsilon_plus_flat",
                                       "epsilon_alpha2_beta1"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_matches_separate_calls(composite, per_sample):
    model = _net(torch.float64)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    x[0, :, :2] = 0.0  # exact zeros at the input: the first layer's direct relevance
    targets = torch.tensor([[0, 3, 6, 2]]) if not per_sample else \
        torch.tensor([[0, 3], [6, 1], [2, 2]])
    kw = dict(composite=composite, low=-3.0, high=3.0)
    got = explain(model, x, targets, **kw)
    want = _separate(model, x, targets, **kw)
    assert got.shape == (3, targets.shape[1], 3, 8, 8)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert got.abs().sum() > 0


@pytest.mark.parametrize("bounds", ["per_sample", "broadcast", "per_channel"])
def test_z_box_bounds_per_sample(bounds):
    """z^B bounds given as tensors: one per sample (N, C, H, W), one broadcast over the batch,
    one per channel; the rule at batch T·N takes each sample's own bounds for every target."""
    model = _net(torch.float64)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=g)
    if bounds == "per_sample":
        low = -3.0 - torch.rand(x.shape, dtype=torch.float64, generator=g)
        high = 3.0 + torch.rand(x.shape, dtype=torch.float64, generator=g)
    elif bounds == "broadcast":
        low = torch.full((1, 3, 8, 8), -3.5, dtype=torch.float64).expand(x.shape)
        high = torch.linspace(3, 4, 64, dtype=torch.float64).reshape(8, 8).expand(x.shape)
    else:
        low = torch.tensor([-3.0, -4.0, -5.0], dtype=torch.float64).reshape(3, 1, 1)
        high = torch.tensor([3.0, 4.0, 5.0], dtype=torch.float64).reshape(3, 1, 1)
    for targets in (torch.tensor([[0, 3, 6]]), torch.tensor([[0, 3], [6, 1], [2, 2]])):
        kw = dict(composite="epsilon_gamma_box", low=low, high=high)
        got = explain(model, x, targets, **kw)
        torch.testing.assert_close(got, _separate(model, x, targets, **kw), rtol=1e-10,
                                   atol=1e-12)


def test_matches_separate_calls_float32_at_and_output():
    model = _net(torch.float32)
    x = torch.randn(2, 3, 8, 8)
    targets = torch.tensor([[1, 4, 5]])
    got, hidden, out = explain(model, x, targets, composite="epsilon_gamma_box", low=-3.0,
                               high=3.0, at=["c2", "pool"], return_output=True)
    assert hidden["c2"].shape == (2, 3, 6, 4, 4) and hidden["pool"].shape == (2, 3, 6, 4, 4)
    for t in range(3):
        r, h = explain(model, x, int(targets[0, t]), composite="epsilon_gamma_box", low=-3.0,
                       high=3.0, at=["c2", "pool"])
        torch.testing.assert_close(got[:, t], r, rtol=1e-5, atol=1e-6)
        for n in ("c2", "pool"):
            torch.testing.assert_close(hidden[n][:, t], h[n], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, model(x))


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "mobilenet_v3_small"])
def test_torchvision_models(name):
    import torchvision
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    x = torch.randn(2, 3, 48, 48)
    targets = torch.tensor([[3, 5, 7]])
    for comp, kw in (("epsilon_gamma_box", dict(low=-3.0, high=3.0)),
                     ("epsilon_plus_flat", {})):
        got = explain(model, x, targets, composite=comp, **kw)
        want = _separate(model, x, targets, composite=comp, **kw)
        scale = want.abs().max()
        assert scale > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("builder", ["gpt2", "bert", "llama"])
@pytest.mark.parametrize("composite", ["attnlrp", "cp_lrp"])
def test_transformers(builder, composite):
    pytest.importorskip("transformers")
    model, _ = getattr(tt, builder)(attn="sdpa")
    kw = tt.text_inputs(model)

    def sel(o):
        return o.logits[:, -1] if o.logits.dim() == 3 else o.logits
    targets = torch.tensor([[1, 4, 0]])
    got = explain(model, kw, targets, composite=composite, output=sel)["inputs_embeds"]
    want = torch.stack([explain(model, kw, int(t), composite=composite,
                                output=sel)["inputs_embeds"] for t in targets[0]], 1)
    assert got.shape == (2, 3) + tuple(kw["inputs_embeds"].shape[1:])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max())


def test_vit():
    pytest.importorskip("transformers")
    model, spec = tt.vit()
    x = tt.image_inputs(spec)
    for comp in ("attnlrp", "attnlrp_gamma"):
        got = explain(model, x, [[1, 2]], composite=comp)
        want = torch.stack([explain(model, x, t, composite=comp) for t in (1, 2)], 1)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max())


def test_bad_targets():
    model = _net(torch.float32)
    x = torch.randn(3, 3, 8, 8)
    with pytest.raises(ValueError, match=r"\(N, T\) or \(1, T\)"):
        explain(model, x, torch.zeros(2, 2, dtype=torch.long), low=-3.0, high=3.0)
    with pytest.raises(ValueError, match=r"\(N, T\) or \(1, T\)"):
        explain(model, x, torch.zeros(1, 0, dtype=torch.long), low=-3.0, high=3.0)
    with pytest.raises(ValueError, match="must be an int, \\(N,\\) or \\(N, T\\)"):
        explain(model, x, torch.zeros(1, 1, 1, dtype=torch.long), low=-3.0, high=3.0)
    with pytest.raises(ValueError, match="out of range"):
        explain(model, x, [[0, 7]], low=-3.0, high=3.0)
    with pytest.raises(ValueError, match="several targets per sample"):
        explain(model, x, [0, 1], low=-3.0, high=3.0)


@pytest.mark.parametrize("rule", [ZBox(low=-2.0, high=2.0), Flat(), WSquare()])
def test_first_layer_relevance_at_zero_inputs(rule):
    """flat, w² and z^B give relevance to input entries that are exactly 0; it reaches the
    input directly (not as R / x), equal to the conv rule on that layer."""
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 4, 3, padding=1).double()
    model = nn.Sequential(conv).eval()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    x[:, :, 1:3] = 0.0
    R_out = torch.rand(2, 4, 5, 5, dtype=torch.float64)
    comp = Composite([(nn.Conv2d, rule)])
    got = explain(model, x, relevance=R_out, composite=comp)
    with torch.no_grad():
        z = conv(x)
    params = dict(rule.params)
    want = getattr(lconv, rule.name)(R_out * (z != 0), x, conv, **params)
    assert want[:, :, 1:3].abs().sum() > 0  # the zero inputs do get relevance
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
