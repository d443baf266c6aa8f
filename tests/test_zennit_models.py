"""explain() against zennit 0.5.1 (an independent implementation) on whole models.

zennit's attribution: ``zennit.attribution.Gradient`` with the same composite, its BatchNorm
canonizers (``SequentialMergeBatchNorm``; ``ResNetCanonizer`` for ResNets) and the same output
relevance.

zennit turns a merged BatchNorm into ``BN(y) = y / sqrt(1 + eps)`` (unit statistics with the
layer's eps), which rescales the activations after every merged layer by ``(1+eps)^-1/2``; the
specification merges exactly.  The float32 parity models therefore use ``eps = 0`` BatchNorms
(where both agree exactly), and ``test_batchnorm_merge_default_eps`` checks the merge with the
default eps against zennit run on a copy of the model with the BatchNorms folded by hand.
"""
import copy

import pytest
import torch
import torchvision
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import (EpsilonAlpha2Beta1, EpsilonAlpha2Beta1Flat, EpsilonGammaBox,
                               EpsilonPlus, EpsilonPlusFlat)
from zennit.torchvision import ResNetCanonizer

from lrp_ext.explain import explain

nn = torch.nn

PRESETS = {
    "epsilon_gamma_box": EpsilonGammaBox,
    "epsilon_plus": EpsilonPlus,
    "epsilon_plus_flat": EpsilonPlusFlat,
    "epsilon_alpha2_beta1": EpsilonAlpha2Beta1,
    "epsilon_alpha2_beta1_flat": EpsilonAlpha2Beta1Flat,
}
BOUNDS = dict(low=-3.0, high=3.0)


def _random_bn(model, gen, eps=0.0):
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            n = mod.num_features
            mod.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            mod.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            mod.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            mod.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
            if eps is not None:
                mod.eps = eps
    return model.eval()


def _mlp():
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.BatchNorm1d(32),
                         nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 5))


def _conv1d():
    return nn.Sequential(nn.Conv1d(2, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.MaxPool1d(2), nn.Conv1d(8, 8, 3, stride=2, dilation=2, groups=2),
                         nn.ReLU(), nn.AvgPool1d(2), nn.Conv1d(8, 6, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool1d(3), nn.Flatten(), nn.Linear(18, 4))


MODELS = {
    # name: (constructor, input shape, canonizer class)
    "vgg11_bn": (lambda: torchvision.models.vgg11_bn(num_classes=10), (1, 3, 32, 32),
                 SequentialMergeBatchNorm),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (2, 3, 32, 32),
                 ResNetCanonizer),
    "mlp": (_mlp, (4, 20), SequentialMergeBatchNorm),
    "conv1d": (_conv1d, (3, 2, 40), SequentialMergeBatchNorm),
}

_built = {}


def _model(name):
    if name not in _built:
        ctor, shape, can = MODELS[name]
        gen = torch.Generator().manual_seed(sum(map(ord, name)))
        torch.manual_seed(sum(map(ord, name)))
        model = _random_bn(ctor(), gen)
        x = torch.randn(shape, generator=gen)
        _built[name] = (model, x, can)
    return _built[name]


def _zennit(model, x, R, preset, canonizer, **kw):
    composite = PRESETS[preset](canonizers=[canonizer()], **kw)
    with Gradient(model, composite) as attributor:
        _, rel = attributor(x.clone().requires_grad_(True), R)
    return rel.detach()


def _rel_err(got, want):
    return float((got.double() - want.double()).norm() / want.double().norm())


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("name", list(MODELS))
def test_matches_zennit(name, preset):
    model, x, can = _model(name)
    with torch.no_grad():
        out = model(x)
    # one-hot times logit, a different class per sample
    R = torch.zeros_like(out)
    idx = torch.arange(out.shape[0]) % out.shape[1]
    R[torch.arange(out.shape[0]), idx] = out[torch.arange(out.shape[0]), idx]
    kw = BOUNDS if preset == "epsilon_gamma_box" else {}
    want = _zennit(model, x, R, preset, can, **kw)
    got = explain(model, x, relevance=R, composite=preset, **kw)
    assert got.shape == x.shape and got.dtype == x.dtype
    assert want.abs().sum() > 0
    assert _rel_err(got, want) <= 1e-4
    # target= is the same output relevance
    got_t = explain(model, x, target=idx, composite=preset, **kw)
    assert _rel_err(got_t, want) <= 1e-4


def _fold_batchnorms(model):
    """A copy with every (layer, BatchNorm) pair folded by hand and the BN replaced by Identity."""
    model = copy.deepcopy(model)
    prev = None
    for mod in model.modules():
        for cname, child in list(mod.named_children()):
            if isinstance(child, (nn.Conv2d, nn.Linear)):
                prev = (mod, cname, child)
            elif isinstance(child, nn.modules.batchnorm._BatchNorm) and prev is not None:
                layer = prev[2]
                scale = child.weight / torch.sqrt(child.running_var + child.eps)
                with torch.no_grad():
                    layer.weight.mul_(scale.reshape(-1, *[1] * (layer.weight.dim() - 1)))
                    b = layer.bias if layer.bias is not None else torch.zeros_like(scale)
                    new_b = (b - child.running_mean) * scale + child.bias
                    layer.bias = nn.Parameter(new_b)
                setattr(mod, cname, nn.Identity())
                prev = None
            else:
                if not isinstance(child, (nn.ReLU, nn.Sequential)) and \
                        len(list(child.children())) == 0:
                    prev = None
    return model


@pytest.mark.parametrize("preset", ["epsilon_gamma_box", "epsilon_plus_flat"])
def test_batchnorm_merge_default_eps(preset):
    gen = torch.Generator().manual_seed(11)
    torch.manual_seed(11)
    model = _random_bn(torchvision.models.vgg11_bn(num_classes=10), gen, eps=None).double()
    x = torch.randn(1, 3, 32, 32, generator=gen, dtype=torch.float64)
    folded = _fold_batchnorms(model).eval()
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(folded(x), out)
    R = torch.zeros_like(out)
    R[:, 3] = out[:, 3]
    kw = BOUNDS if preset == "epsilon_gamma_box" else {}
    composite = PRESETS[preset](**kw)  # no canonizer: the copy is already folded
    with Gradient(folded, composite) as attributor:
        _, want = attributor(x.clone().requires_grad_(True), R)
    got = explain(model, x, relevance=R, composite=preset, **kw)
    assert _rel_err(got, want) <= 1e-10
