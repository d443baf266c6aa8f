"""Public LRP rules for one dense layer: compiled kernels with a reference fallback.

``R`` (..., O) is the relevance at the layer's output, ``a`` (..., I) its input, ``W`` (O, I)
its weight (or an ``nn.Linear``), ``b`` (O,) or None.  Each returns the relevance at the input,
(..., I), in ``a``'s dtype.  The math is the project's rule specification (docs/rules.md).
Results carry no autograd history.  Rule parameters are any real scalars (Python or numpy
numbers, 0-d tensors).  float16 and bfloat16 are computed in float32 and rounded once at the end
(by the kernels and by the reference alike).
"""
from __future__ import annotations

import torch

from . import _checks, _table, ops, reference

__all__ = ["zero", "epsilon", "gamma", "alpha_beta", "z_plus", "flat", "w_square", "z_box"]

_op = torch.ops.lrp_ext
_d = _table.default


@_checks.traceable
def epsilon(R, a, W, b=None, epsilon: float = _d("epsilon", "epsilon")):
    """LRP-ε: ``z = a Wᵀ + b``, ``s = R / stab(z, ε)``, ``R_in = a ⊙ (s W)``."""
    R, a, W, b = _checks.dense(R, a, W, b, "epsilon")
    p = _table.check("epsilon", epsilon=epsilon)
    if ops.use_compiled(a):
        return _op.epsilon(R, a, W, b, p["epsilon"])
    return reference.epsilon(R, a, W, b, **p)


@_checks.traceable
def zero(R, a, W, b=None):
    """LRP-0: LRP-ε with ε = 1e-9."""
    R, a, W, b = _checks.dense(R, a, W, b, "zero")
    if ops.use_compiled(a):
        return _op.epsilon(R, a, W, b, _table.LRP0_EPSILON)
    return reference.zero(R, a, W, b)


@_checks.traceable
def gamma(R, a, W, b=None, gamma: float = _d("gamma", "gamma"),
          stabilizer: float = _d("gamma", "stabilizer")):
    """Sign-generalised LRP-γ."""
    R, a, W, b = _checks.dense(R, a, W, b, "gamma")
    p = _table.check("gamma", gamma=gamma, stabilizer=stabilizer)
    if ops.use_compiled(a):
        return _op.gamma(R, a, W, b, p["gamma"], p["stabilizer"])
    return reference.gamma(R, a, W, b, **p)


@_checks.traceable
def alpha_beta(R, a, W, b=None, alpha: float = _d("alpha_beta", "alpha"),
               beta: float = _d("alpha_beta", "beta"),
               stabilizer: float = _d("alpha_beta", "stabilizer")):
    """LRP-αβ (α ≥ 0, β ≥ 0, α − β = 1, else ``ValueError``)."""
    R, a, W, b = _checks.dense(R, a, W, b, "alpha_beta")
    p = _table.check("alpha_beta", alpha=alpha, beta=beta, stabilizer=stabilizer)
    if ops.use_compiled(a):
        return _op.alpha_beta(R, a, W, b, p["alpha"], p["beta"], p["stabilizer"])
    return reference.alpha_beta(R, a, W, b, **p)


@_checks.traceable
def z_plus(R, a, W, b=None, stabilizer: float = _d("z_plus", "stabilizer")):
    """LRP-z⁺ (LRP-αβ with α = 1, β = 0)."""
    R, a, W, b = _checks.dense(R, a, W, b, "z_plus")
    p = _table.check("z_plus", stabilizer=stabilizer)
    if ops.use_compiled(a):
        return _op.alpha_beta(R, a, W, b, 1.0, 0.0, p["stabilizer"])
    return reference.z_plus(R, a, W, b, **p)


@_checks.traceable
def flat(R, a, W, b=None, stabilizer: float = _d("flat", "stabilizer")):
    """Flat rule: inputs and weights replaced by ones, bias dropped."""
    R, a, W, b = _checks.dense(R, a, W, b, "flat")
    p = _table.check("flat", stabilizer=stabilizer)
    if ops.use_compiled(a):
        return _op.flat(R, a, W, p["stabilizer"])
    return reference.flat(R, a, W, b, **p)


@_checks.traceable
def w_square(R, a, W, b=None, stabilizer: float = _d("w_square", "stabilizer")):
    """LRP-w²: ``z = 1 (W²)ᵀ + b²``, ``R_in = (R / stab(z)) W²``."""
    R, a, W, b = _checks.dense(R, a, W, b, "w_square")
    p = _table.check("w_square", stabilizer=stabilizer)
    if ops.use_compiled(a):
        return _op.w_square(R, a, W, b, p["stabilizer"])
    return reference.w_square(R, a, W, b, **p)


@_checks.traceable
def z_box(R, a, W, b=None, low=None, high=None,
          stabilizer: float = _d("z_box", "stabilizer")):
    """LRP-z^B for the input layer; ``low``/``high``: floats or tensors broadcastable to a."""
    R, a, W, b = _checks.dense(R, a, W, b, "z_box")
    low, high = _checks.bounds(low, high, a)
    p = _table.check("z_box", stabilizer=stabilizer)
    if ops.use_compiled(a):
        return _op.z_box(R, a, W, low, high, p["stabilizer"])
    return reference.z_box(R, a, W, b, low, high, p["stabilizer"])
