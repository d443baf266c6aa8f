"""Argument checks shared by the compiled entry points and the reference.

Every problem is reported before any kernel runs, naming the argument and the shapes:
``TypeError`` for something that is not a tensor / not a floating dtype, ``ValueError`` for
wrong shapes, mismatched dtypes or devices, and out-of-range rule parameters.
"""
from __future__ import annotations

import functools
import math
import numbers

import numpy as np
import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def traceable(fn):
    """Argument errors that survive ``torch.compile(fullgraph=True)``: while Dynamo traces
    ``fn``, a ``ValueError``/``TypeError`` from its checks becomes an op in the graph that raises
    it (same type, same message) when the compiled function runs. Eager calls are unchanged."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except (ValueError, TypeError) as exc:
            from .ops import raise_error
            like = next((x for x in args[1:2] + args[:1] if isinstance(x, torch.Tensor)), None)
            if like is None:
                like = torch.empty(0)
            kind = "TypeError" if isinstance(exc, TypeError) else "ValueError"
            return raise_error(kind, str(exc), like)
    return wrapper


def _shape(t) -> str:
    """Python's tuple notation: (), (5,), (3, 6). (f-strings: Dynamo formats symbolic sizes
    that way, not through repr.)"""
    dims = [f"{s}" for s in t.shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def unpack_layer(W, b, rule):
    """Accept ``W`` as a tensor or as an ``nn.Linear`` (whose weight and bias are then used)."""
    if isinstance(W, torch.nn.Linear):
        if b is not None:
            raise ValueError(f"{rule}: W is an nn.Linear, so b must be None (the layer's own "
                             "bias is used)")
        return W.weight, W.bias
    return W, b


def dense(R, a, W, b, rule):
    """Validate a dense layer's arguments; returns (R, a, W, b) detached."""
    W, b = unpack_layer(W, b, rule)
    for name, t in (("R", R), ("a", a), ("W", W)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{rule}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if b is not None and not isinstance(b, torch.Tensor):
        raise TypeError(f"{rule}: b must be a torch.Tensor or None, got {type(b).__name__}")
    if W.dim() != 2:
        raise ValueError(f"{rule}: W must be 2-D (O, I), got shape {_shape(W)}")
    O, I = W.shape
    if a.dim() < 1:
        raise ValueError(f"{rule}: a must have shape (..., I) with I={I}, got a 0-d tensor")
    if R.dim() < 1:
        raise ValueError(f"{rule}: R must have shape (..., O) with O={O}, got a 0-d tensor")
    if a.shape[-1] != I:
        raise ValueError(f"{rule}: a's last dim must equal W's in_features I={I}; "
                         f"got a {_shape(a)} and W {_shape(W)}")
    if R.shape[-1] != O:
        raise ValueError(f"{rule}: R's last dim must equal W's out_features O={O}; "
                         f"got R {_shape(R)} and W {_shape(W)}")
    if R.shape[:-1] != a.shape[:-1]:
        raise ValueError(f"{rule}: batch dims of R and a differ: R {_shape(R)} vs a {_shape(a)}")
    if b is not None and (b.dim() != 1 or b.shape[0] != O):
        raise ValueError(f"{rule}: b must have shape (O,) = ({O},) to match W {_shape(W)}, "
                         f"got b {_shape(b)}")
    agree(rule, [("R", R), ("a", a), ("W", W)] + ([("b", b)] if b is not None else []))
    return R.detach(), a.detach(), W.detach(), None if b is None else b.detach()


def agree(rule, tensors):
    """All (name, tensor) pairs floating, and of the first one's dtype and device."""
    for name, t in tensors:
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{rule}: {name} must be a floating tensor, got dtype {t.dtype}")
    name0, t0 = tensors[0]
    for name, t in tensors[1:]:
        if t.dtype != t0.dtype:
            raise ValueError(f"{rule}: dtype mismatch: {name0} is {t0.dtype} but {name} is "
                             f"{t.dtype}")
        if t.device != t0.device:
            raise ValueError(f"{rule}: device mismatch: {name0} is on {t0.device} but {name} is "
                             f"on {t.device}")


def real(value, name):
    """``value`` as a Python float if it is one real scalar: an int or float (not a bool), any
    ``numbers.Real`` (numpy's scalars included) or a 0-d real tensor; ``ValueError`` otherwise.
    The one check behind every number the API takes."""
    if isinstance(value, torch.Tensor):
        ok = (value.dim() == 0 and value.dtype != torch.bool and not value.is_complex())
    else:
        ok = (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)))
    if not ok:
        raise ValueError(f"{name} must be a real number, got {_describe(value)}")
    return float(value)


def _describe(value):
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {_shape(value)} and dtype {value.dtype}"
    return repr(value)


def finite(value, name):
    """``real`` and finite; returns the float."""
    v = real(value, name)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    return v


def stabilizer(value, name):
    v = finite(value, name)
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {v!r}")
    return v


def alpha_beta(alpha, beta):
    alpha, beta = finite(alpha, "alpha"), finite(beta, "beta")
    if alpha < 0 or beta < 0 or abs(alpha - beta - 1.0) > 1e-9:
        raise ValueError(f"alpha_beta needs alpha >= 0, beta >= 0 and alpha - beta = 1, "
                         f"got alpha={alpha!r}, beta={beta!r}")
    return alpha, beta


def bounds(low, high, a):
    """``low``/``high`` as tensors of ``a``'s dtype/device, broadcast (as views) to a's shape."""
    out = []
    for name, v in (("low", low), ("high", high)):
        if v is None:
            raise ValueError(f"z_box: {name} is required (a float or a tensor broadcastable to "
                             f"a {_shape(a)})")
        if isinstance(v, torch.Tensor):
            if v.device != a.device and v.numel() != 1:
                raise ValueError(f"z_box: device mismatch: a is on {a.device} but {name} is on "
                                 f"{v.device}")
            v = v.detach().to(device=a.device, dtype=a.dtype)
        else:
            v = torch.tensor(finite(v, name), dtype=a.dtype, device=a.device)
        try:
            shape = torch.broadcast_shapes(v.shape, a.shape)
        except RuntimeError:
            shape = None
        if shape != a.shape:
            raise ValueError(f"z_box: {name} of shape {_shape(v)} is not broadcastable to "
                             f"a {_shape(a)}")
        out.append(v.expand(a.shape))
    return out[0], out[1]
