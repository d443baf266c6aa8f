"""Canonization for LRP: BatchNorm merging, computed on copies (the model is never modified).

A BatchNorm that directly follows a Linear / convolution (and is that layer's only consumer)
is folded into the layer before the LRP rule sees it (``docs/rules.md``, "Other layers")::

    scale = γ / sqrt(running_var + eps)
    W' = W · scale        (per output channel)
    b' = (b − running_mean) · scale + β        (b = 0 when the layer has no bias)

:func:`merged_parameters` returns the new ``(W', b')`` tensors; :func:`find_batchnorm_merges`
finds the (layer, BatchNorm) pairs in a ``torch.fx`` graph.
"""
from __future__ import annotations

import torch

__all__ = ["merged_parameters", "find_batchnorm_merges", "LAYER_TYPES", "BATCHNORM_TYPES"]

LAYER_TYPES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
               torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
BATCHNORM_TYPES = (torch.nn.modules.batchnorm._BatchNorm,)


def bn_scale_shift(running_mean, running_var, weight, bias, eps):
    """``(scale, shift)`` with ``BN(y) = y·scale + shift`` in inference mode."""
    scale = torch.rsqrt(running_var.detach() + eps)
    if weight is not None:
        scale = weight.detach() * scale
    shift = -running_mean.detach() * scale
    if bias is not None:
        shift = shift + bias.detach()
    return scale, shift


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
    scale = scale.to(W.dtype)
    shift = shift.to(W.dtype)
    if transposed:
        g = groups
        Cin, Og = W.shape[:2]
        s = scale.reshape(g, 1, Og, *([1] * (W.dim() - 2)))
        W2 = (W.reshape(g, Cin // g, Og, *W.shape[2:]) * s).reshape(W.shape)
    else:
        W2 = W * scale.reshape(-1, *([1] * (W.dim() - 1)))
    b2 = shift if b is None else b.detach() * scale + shift
    return W2, b2


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


def find_batchnorm_merges(nodes, modules, depends) -> dict:
    """``{layer_node: bn_node}`` for every BatchNorm ``call_module`` node whose only input is
    the output of a Linear/conv ``call_module`` node used by nothing else."""
    merges = {}
    for node in nodes:
        if node.op != "call_module" or node not in depends:
            continue
        bn = modules[node.target]
        if not mergeable(bn) or len(node.args) != 1 or node.kwargs:
            continue
        prev = node.args[0]
        if not isinstance(prev, torch.fx.Node) or prev.op != "call_module":
            continue
        if not isinstance(modules[prev.target], LAYER_TYPES) or len(prev.users) != 1:
            continue
        layer = modules[prev.target]
        out_ch = layer.out_features if isinstance(layer, torch.nn.Linear) else layer.out_channels
        if bn.num_features != out_ch:
            continue
        merges[prev] = node
    return merges
