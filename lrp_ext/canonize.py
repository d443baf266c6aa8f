"""Canonization for LRP: BatchNorm merging, computed on copies (the model is never modified).

A BatchNorm that directly follows a Linear / convolution (and is that layer's only consumer)
is folded into the layer before the LRP rule sees it (``docs/rules.md``, "Other layers")::

    scale = γ / sqrt(running_var + eps)
    W' = W · scale        (per output channel)
    b' = (b − running_mean) · scale + β        (b = 0 when the layer has no bias)

:func:`merged_parameters` returns the new ``(W', b')`` tensors of a layer module and a
BatchNorm module, :func:`merge_affine` those of any weight followed by a per-channel affine
map (what ``explain`` uses once it knows that a layer's output feeds only its BatchNorm).
"""
from __future__ import annotations

import torch

__all__ = ["merged_parameters", "merge_affine", "scale_rows", "merge_bias", "bn_scale_shift", "mergeable", "LAYER_TYPES",
           "BATCHNORM_TYPES"]

LAYER_TYPES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
               torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
BATCHNORM_TYPES = (torch.nn.modules.batchnorm._BatchNorm,)


def bn_scale_shift(running_mean, running_var, weight, bias, eps):
    """``(scale, shift)`` with ``BN(y) = y·scale + shift`` in inference mode."""
    scale = (running_var.detach() + eps).rsqrt_()
    if weight is not None:
        scale = scale.mul_(weight.detach())
    shift = (running_mean.detach() * scale).neg_()
    return scale, shift if bias is None else shift.add_(bias.detach())


def _bn_scale_shift(bn):
    return bn_scale_shift(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)


def mergeable(bn) -> bool:
    """Whether ``bn`` carries running statistics (the only case that can be merged)."""
    return (isinstance(bn, BATCHNORM_TYPES) and bn.running_mean is not None
            and bn.running_var is not None)


def merge_affine(W, b, scale, shift, transposed=False, groups=1):
    """``(W', b')`` of a layer with weight ``W`` and bias ``b`` (or None) followed by the
    per-output-channel affine map ``y·scale + shift``, as new tensors."""
    W = W.detach()
    return scale_rows(W, scale.to(W.dtype), transposed, groups), merge_bias(b, scale, shift,
                                                                            W.dtype)


def scale_rows(W, scale, transposed=False, groups=1):
    """``W`` with each output channel multiplied by ``scale`` (a new tensor)."""
    if transposed:
        g = groups
        Cin, Og = W.shape[:2]
        s = scale.reshape(g, 1, Og, *([1] * (W.dim() - 2)))
        return (W.reshape(g, Cin // g, Og, *W.shape[2:]) * s).reshape(W.shape)
    return W * scale.reshape(-1, *([1] * (W.dim() - 1)))


def merge_bias(b, scale, shift, dtype):
    """The bias ``b·scale + shift`` (``shift`` when ``b`` is None) in ``dtype``."""
    scale, shift = scale.to(dtype), shift.to(dtype)
    return shift if b is None else b.detach() * scale + shift


def merged_parameters(layer, bn, weight=None, bias=None):
    """``(W', b')`` of ``layer`` followed by BatchNorm ``bn``, as new tensors.

    ``layer`` is an ``nn.Linear`` / ``nn.Conv*`` / ``nn.ConvTranspose*``; ``weight``/``bias``
    override the layer's own (e.g. when merging into already-modified parameters).
    """
    W = layer.weight if weight is None else weight
    b = layer.bias if weight is None else bias
    scale, shift = _bn_scale_shift(bn)
    transposed = isinstance(layer, torch.nn.modules.conv._ConvTransposeNd)
    return merge_affine(W, b, scale, shift, transposed, getattr(layer, "groups", 1))
