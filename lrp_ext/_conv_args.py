"""A convolution's arguments, parsed and validated once: the weight, bias and
hyper-parameters of a conv module, or of a weight tensor with keyword hyper-parameters.

Shared by ``lrp_ext.conv`` (the fast rules) and ``lrp_ext.conv_reference`` (the plain ones),
which share nothing else.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch

from . import _checks

__all__ = ["ConvArgs", "parse", "CONV_TYPES"]

CONV_TYPES = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
              torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
_CONV_TYPES = CONV_TYPES


class ConvArgs(NamedTuple):
    """``pre_pad`` is ``(pad, mode)`` when the input is padded explicitly before a convolution
    with zero implicit padding (non-zero ``padding_mode`` or asymmetric ``"same"``)."""
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    stride: Tuple[int, ...]
    padding: Tuple[int, ...]
    dilation: Tuple[int, ...]
    transposed: bool
    output_padding: Tuple[int, ...]
    groups: int
    nd: int
    pre_pad: Optional[tuple] = None


def _tuple(v, nd, name, rule):
    if type(v) is int:
        return (v,) * nd
    if type(v) is tuple and len(v) == nd and all(type(x) is int for x in v):
        return v  # a module's own hyper-parameters (the common case, checked cheaply)
    if isinstance(v, int) and not isinstance(v, bool):
        return (int(v),) * nd
    try:
        t = tuple(int(x) for x in v)
    except TypeError:
        raise TypeError(f"{rule}: {name} must be an int or a tuple of {nd} ints, got {v!r}")
    if len(t) == 1:
        t = t * nd
    if len(t) != nd:
        raise ValueError(f"{rule}: {name} must have {nd} entries for a {nd}-d convolution, "
                         f"got {v!r}")
    return t



def _same_padding(weight, dilation, nd, transposed, rule):
    if transposed:
        raise ValueError(f"{rule}: padding='same' is not supported for transposed convolutions")
    k = weight.shape[2:]
    total = [d * (kk - 1) for d, kk in zip(dilation, k)]
    left = [t // 2 for t in total]
    right = [t - lft for t, lft in zip(total, left)]
    if left == right:
        return tuple(left), None
    pad = []
    for lft, rgt in zip(reversed(left), reversed(right)):
        pad += [lft, rgt]
    return (0,) * nd, (tuple(pad), "constant")


def parse(layer, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
          transposed=False, output_padding=0, rule="conv") -> ConvArgs:
    """A convolution's arguments from a conv module or a weight tensor (validated)."""
    if isinstance(layer, _CONV_TYPES):
        if bias is not None:
            raise ValueError(f"{rule}: layer is an {type(layer).__name__}, so bias must be None "
                             "(the layer's own bias is used)")
        m = layer
        nd = m.weight.dim() - 2
        transposed = isinstance(m, torch.nn.modules.conv._ConvTransposeNd)
        weight, bias = m.weight.detach(), None if m.bias is None else m.bias.detach()
        stride, dilation, groups = tuple(m.stride), tuple(m.dilation), int(m.groups)
        output_padding = tuple(m.output_padding)
        pre_pad = None
        if isinstance(m.padding, str):
            padding = m.padding
        else:
            padding = tuple(m.padding)
        if m.padding_mode != "zeros":
            pre_pad = (tuple(m._reversed_padding_repeated_twice), m.padding_mode)
            padding = (0,) * nd
        elif padding == "same":
            padding, pre_pad = _same_padding(weight, dilation, nd, False, rule)
        elif padding == "valid":
            padding = (0,) * nd
        return ConvArgs(weight, bias, stride, padding, dilation, transposed, output_padding,
                        groups, nd, pre_pad)
    if isinstance(layer, torch.nn.Module):
        raise TypeError(f"{rule}: layer must be a convolution module or a weight tensor, got "
                        f"{type(layer).__name__}")
    if not isinstance(layer, torch.Tensor):
        raise TypeError(f"{rule}: layer must be a convolution module or a weight tensor, got "
                        f"{type(layer).__name__}")
    weight = layer.detach()
    if weight.dim() not in (3, 4, 5):
        raise ValueError(f"{rule}: a conv weight must be 3-, 4- or 5-D (out, in/groups, *kernel), "
                         f"got shape {_checks._shape(weight)}")
    nd = weight.dim() - 2
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{rule}: groups must be a positive int, got {groups!r}")
    if weight.shape[0] % groups:
        raise ValueError(f"{rule}: weight's first dim {weight.shape[0]} is not divisible by "
                         f"groups={groups}")
    stride = _tuple(stride, nd, "stride", rule)
    dilation = _tuple(dilation, nd, "dilation", rule)
    output_padding = _tuple(output_padding, nd, "output_padding", rule)
    if min(stride) < 1 or min(dilation) < 1:
        raise ValueError(f"{rule}: stride and dilation must be >= 1, got stride={stride}, "
                         f"dilation={dilation}")
    pre_pad = None
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0,) * nd
        elif padding == "same":
            padding, pre_pad = _same_padding(weight, dilation, nd, bool(transposed), rule)
        else:
            raise ValueError(f"{rule}: padding must be 'same', 'valid', an int or a tuple, got "
                             f"{padding!r}")
    else:
        padding = _tuple(padding, nd, "padding", rule)
        if min(padding) < 0:
            raise ValueError(f"{rule}: padding must be >= 0, got {padding}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"{rule}: bias must be a torch.Tensor or None, got "
                            f"{type(bias).__name__}")
        bias = bias.detach()
    return ConvArgs(weight, bias, stride, padding, dilation, bool(transposed), output_padding,
                    groups, nd, pre_pad)
