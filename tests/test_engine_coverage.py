"""explain() on every classification model of torchvision (random weights, batch 1).

For each model of ``torchvision.models.list_models(module=torchvision.models)``:

- ``epsilon_plus_flat`` (on the model as built) and ``epsilon_gamma_box`` (on its bias-free
  version below; bounds: the input's range) run with the default ``strict=True`` and return
  finite, nonzero relevance of the input's shape and dtype;
- the model is left unchanged (every state_dict tensor bitwise, every module's attributes,
  parameters, buffers, submodules and hook dicts, the global hooks; see ``_model_helpers``),
  also when explain raises;
- on a bias-free version (conv/Linear/attention/LayerNorm biases 0, ViT's class token and
  position embedding 0, every BatchNorm's shift 0, so the merged layers have no bias either)
  ``epsilon_gamma_box`` conserves: the input relevance sums to the target logit within 1e-3
  relative.  Every rule on the way conserves there: z^B, γ and ε without bias (ε = 1e-6 is
  small against activations of order one), the proportional rule of sums and average pooling,
  max pooling's winner-takes-all, elementwise activations passing relevance, LayerNorm with its
  std held constant, the default product rule, which holds the gate of squeeze-excitation
  blocks (sigmoid/hardsigmoid) constant so all relevance goes to the gated tensor, and (for the
  attention models, see ATTENTION_MODELS) attention probabilities held constant.

Models are built from their code (nothing is downloaded), with BatchNorm statistics measured
on a random batch (the init's (0, 1) statistics make activations vanish or explode in deep
random models, where the stabilisers would then dominate) and random BatchNorm affine
parameters.  Inputs are 32×32 except where a model needs more: alexnet (64), inception_v3
(at least 75: 80), maxvit_t (its partitions need 224).  The ViTs are built for a small
``image_size`` (32; 28 for vit_h_14's 14-pixel patches): the same layers, a shorter position
embedding.
"""
import re
import zlib

import pytest
import torch
import torchvision

import lrp_ext

from _model_helpers import (assert_unchanged, calibrate_batchnorm, make_bias_free_,
                            reinit_zero_layers, snapshot, top_target)

MODELS = torchvision.models.list_models(module=torchvision.models)

SIZE = {"alexnet": 64, "inception_v3": 80, "maxvit_t": 224}
KWARGS = {"vit_b_16": dict(image_size=32), "vit_b_32": dict(image_size=32),
          "vit_l_16": dict(image_size=32), "vit_l_32": dict(image_size=32),
          "vit_h_14": dict(image_size=28),
          # the builders warn that their default init changes unless it is given
          "googlenet": dict(init_weights=True), "inception_v3": dict(init_weights=True)}

# The presets give attention no rule: under them these models may instead raise the engine's
# clear error for an uncovered op, whose message must name it (the attention's
# scaled_dot_product_attention / matmul / einsum, LayerNorm, softmax, or the attention module's
# path).  They must then run with an attention rule given (the epsilon_gamma_box map with
# bilinear_rule="cp": attention probabilities held constant) and conserve on the bias-free
# version.  Any other error, and any error of another model, fails.  Observed: the 12 ViT, Swin
# and MaxViT models raise it (scaled_dot_product_attention, matmul, einsum of two
# input-dependent tensors); the 4 ConvNeXt models run (their LayerNorm is covered).
ATTENTION_MODELS = {n for n in MODELS if n.startswith(("vit_", "swin_", "maxvit_", "convnext_"))}
CLEAR_ERROR = re.compile(r"layer_?norm|attention|attn|softmax|matmul|bmm|einsum", re.IGNORECASE)

# Where the rules do not conserve by design, the conservation check would be wrong: none of the
# torchvision models is such a case for epsilon_gamma_box on a bias-free copy (γ never drops
# relevance at units with a positive or negative pre-activation, unlike z⁺, which is checked
# for finiteness only; the classifiers hold no softmax-gated product).
REL_TOL = 1e-3

GAMMA_BOX_CP = lrp_ext.Composite(
    [(lrp_ext.composite.CONV_TYPES, lrp_ext.composite.Gamma(0.25)),
     (torch.nn.Linear, lrp_ext.composite.Epsilon(1e-6))],
    first_map=[(lrp_ext.composite.CONV_TYPES, lrp_ext.composite.ZBox())], bilinear_rule="cp")


def _build(name):
    seed = zlib.crc32(name.encode())
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the builders' init draws from the global generator
    model = torchvision.models.get_model(name, weights=None, num_classes=10,
                                         **KWARGS.get(name, {}))
    reinit_zero_layers(model, gen)  # ViT's head starts at zero
    s = KWARGS.get(name, {}).get("image_size", SIZE.get(name, 32))
    calibrate_batchnorm(model, torch.randn(8, 3, s, s, generator=gen), gen)
    x = torch.randn(1, 3, s, s, generator=gen)
    return model, x


def _check_relevance(R, x, what):
    assert isinstance(R, torch.Tensor), what
    assert R.shape == x.shape and R.dtype == x.dtype, what
    assert torch.isfinite(R).all(), f"{what}: relevance not finite"
    assert R.abs().sum() > 0, f"{what}: relevance all zero"


@pytest.mark.parametrize("name", MODELS)
def test_torchvision_model(name):
    # Two explains per model (the cost of this file): epsilon_plus_flat on the model as built,
    # epsilon_gamma_box on its bias-free version (where it must also conserve).
    model, x = _build(name)
    low, high = float(x.min()), float(x.max())
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, 10) and torch.isfinite(out).all()
    target = top_target(out)
    before = snapshot(model)
    try:
        R = lrp_ext.explain(model, x, target=target, composite="epsilon_plus_flat")
        _check_relevance(R, x, "epsilon_plus_flat")
        assert_unchanged(before, snapshot(model), name)

        make_bias_free_(model)  # in place: this model is ours
        with torch.no_grad():
            out = model(x)
        target = top_target(out)
        logit = float(out[0, target].double())
        assert logit != 0.0 and abs(logit) < 1e30
        before = snapshot(model)
        R = lrp_ext.explain(model, x, target=target, composite="epsilon_gamma_box", low=low,
                            high=high)
        _check_relevance(R, x, "epsilon_gamma_box")
    except Exception as exc:
        assert_unchanged(before, snapshot(model), f"{name} after explain raised {exc!r}")
        # ---- accepted for the attention models (the presets give attention no rule): the
        # clear error naming the op; then they must run and conserve with an attention rule ----
        if name in ATTENTION_MODELS and not isinstance(exc, AssertionError):
            assert CLEAR_ERROR.search(str(exc)), f"{name}: unclear error {exc!r}"
            _check_with_attention_rule(name, model, x, low, high)
            return
        raise
    assert_unchanged(before, snapshot(model), name)
    _check_conserves(name, R, logit)


def _check_conserves(name, R, logit):
    total = float(R.double().sum())
    assert abs(total - logit) <= REL_TOL * abs(logit), \
        f"{name}: input relevance sums to {total:.6g}, the target logit is {logit:.6g}"


def _check_with_attention_rule(name, model, x, low, high):
    make_bias_free_(model)  # (again, if it already is: the same values)
    with torch.no_grad():
        out = model(x)
    target = top_target(out)
    logit = float(out[0, target].double())
    assert logit != 0.0
    before = snapshot(model)
    R = lrp_ext.explain(model, x, target=target, composite=GAMMA_BOX_CP, low=low, high=high)
    _check_relevance(R, x, "epsilon_gamma_box with bilinear_rule='cp'")
    assert_unchanged(before, snapshot(model), name)
    _check_conserves(name, R, logit)
