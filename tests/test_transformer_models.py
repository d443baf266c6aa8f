"""explain() with the transformer composites on vision transformers and ConvNeXts.

torchvision's vit_b_16 (small image_size), swin_t, maxvit_t, convnext_tiny and timm's
vit_tiny_patch16_224 / convnext_atto (random weights, built from code), with ``attnlrp``,
``attnlrp_gamma`` and ``cp_lrp``: finite relevance of the input's shape, the model unchanged;
and, on a bias-free copy (every bias, class token and position embedding 0, BatchNorm shifts
0), ``cp_lrp`` conserves: with the attention probabilities and gates held constant every rule
on the way conserves (LayerNorm's identity rule, the identity rule of GELU/SiLU, LRP-0 without
biases, sums, pooling), so the input relevance sums to the target logit.  (AttnLRP's softmax
rule does not conserve by design, so it is checked for finiteness only.)
"""
import zlib

import pytest
import torch
import torchvision

import lrp_ext

from _model_helpers import (assert_unchanged, calibrate_batchnorm, make_bias_free_,
                            reinit_zero_layers, snapshot, top_target)

TV = {"vit_b_16": (dict(image_size=32), 32), "swin_t": ({}, 64), "maxvit_t": ({}, 224),
      "convnext_tiny": ({}, 32)}
TIMM = {"vit_tiny_patch16_224": (dict(img_size=32), 32), "convnext_atto": ({}, 32)}


def _build(lib, name):
    seed = zlib.crc32(name.encode())
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if lib == "torchvision":
        kw, s = TV[name]
        model = torchvision.models.get_model(name, weights=None, num_classes=10, **kw)
    else:
        timm = pytest.importorskip("timm")
        kw, s = TIMM[name]
        model = timm.create_model(name, pretrained=False, num_classes=10, **kw)
    reinit_zero_layers(model, gen)
    calibrate_batchnorm(model, torch.randn(4, 3, s, s, generator=gen), gen)
    return model.eval(), torch.randn(1, 3, s, s, generator=gen)


CASES = [("torchvision", n) for n in TV] + [("timm", n) for n in TIMM]


@pytest.mark.parametrize("lib,name", CASES)
def test_transformer_composites(lib, name):
    model, x = _build(lib, name)
    with torch.no_grad():
        out = model(x)
    target = top_target(out)
    before = snapshot(model)
    for comp in ("attnlrp", "attnlrp_gamma"):
        R = lrp_ext.explain(model, x, target=target, composite=comp)
        assert R.shape == x.shape and torch.isfinite(R).all() and R.abs().sum() > 0, comp
        assert_unchanged(before, snapshot(model), f"{name} {comp}")
    make_bias_free_(model)
    with torch.no_grad():
        out = model(x)
    target = top_target(out)
    logit = float(out[0, target].double())
    R = lrp_ext.explain(model, x, target=target, composite="cp_lrp")
    assert torch.isfinite(R).all()
    total = float(R.double().sum())
    assert abs(total - logit) <= 1e-3 * abs(logit), \
        f"{name}: cp_lrp input relevance sums to {total:.6g}, the target logit is {logit:.6g}"
