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

from . import _checks, ops, reference

__all__ = ["zero", "epsilon", "gamma", "alpha_beta", "z_plus", "flat", "w_square", "z_box"]

_op = torch.ops.lrp_ext


@_checks.traceable
def epsilon(R, a, W, b=None, epsilon: float = 1e-6):
    """LRP-ε: ``z = a Wᵀ + b``, ``s = R / stab(z, ε)``, ``R_in = a ⊙ (s W)``."""
    R, a, W, b = _checks.dense(R, a, W, b, "epsilon")
    epsilon = _checks.stabilizer(epsilon, "epsilon")
    if ops.use_compiled(a):
        return _op.epsilon(R, a, W, b, epsilon)
    return reference.epsilon(R, a, W, b, epsilon)


@_checks.traceable
def zero(R, a, W, b=None):
    """LRP-0: LRP-ε with ε = 1e-9."""
    R, a, W, b = _checks.dense(R, a, W, b, "zero")
    if ops.use_compiled(a):
        return _op.epsilon(R, a, W, b, 1e-9)
    return reference.zero(R, a, W, b)


@_checks.traceable
def gamma(R, a, W, b=None, gamma: float = 0.25, stabilizer: float = 1e-6):
    """Sign-generalised LRP-γ."""
    R, a, W, b = _checks.dense(R, a, W, b, "gamma")
    gamma = _checks.finite(gamma, "gamma")
    stabilizer = _checks.stabilizer(stabilizer, "stabilizer")
    if ops.use_compiled(a):
        return _op.gamma(R, a, W, b, gamma, stabilizer)
    return reference.gamma(R, a, W, b, gamma, stabilizer)


@_checks.traceable
def alpha_beta(R, a, W, b=None, alpha: float = 2.0, beta: float = 1.0,
               stabilizer: float = 1e-6):
    """LRP-αβ (α ≥ 0, β ≥ 0, α − β = 1, else ``ValueError``)."""
    R, a, W, b = _checks.dense(R, a, W, b, "alpha_beta")
    alpha, beta = _checks.alpha_beta(alpha, beta)
    stabilizer = _checks.stabilizer(stabilizer, "stabilizer")
    if ops.use_compiled(a):
        return _op.alpha_beta(R, a, W, b, alpha, beta, stabilizer)
    return reference.alpha_beta(R, a, W, b, alpha, beta, stabilizer)


@_checks.traceable
def z_plus(R, a, W, b=None, stabilizer: float = 1e-6):
    """LRP-z⁺ (LRP-αβ with α = 1, β = 0)."""
    R, a, W, b = _checks.dense(R, a, W, b, "z_plus")
    stabilizer = _checks.stabilizer(stabilizer, "stabilizer")
    if ops.use_compiled(a):
        return _op.alpha_beta(R, a, W, b, 1.0, 0.0, stabilizer)
    return reference.z_plus(R, a, W, b, stabilizer)


@_checks.traceable
def flat(R, a, W, b=None, stabilizer: float = 1e-6):
    """Flat rule: inputs and weights replaced by ones, bias dropped."""
    R, a, W, b = _checks.dense(R, a, W, b, "flat")
    stabilizer = _checks.stabilizer(stabilizer, "stabilizer")
    if ops.use_compiled(a):
        return _op.flat(R, a, W, stabilizer)
    return reference.flat(R, a, W, b, stabilizer)


@_checks.traceable
def w_square(R, a, W, b=None, stabilizer: float = 1e-6):
    """LRP-w²: ``z = 1 (W²)ᵀ + b²``, ``R_in = (R / stab(z)) W²``."""
    R, a, W, b = _checks.dense(R, a, W, b, "w_square")
    stabilizer = _checks.stabilizer(stabilizer, "stabilizer")
    if ops.use_compiled(a):
        return _op.w_square(R, a, W, b, stabilizer)
    return reference.w_square(R, a, W, b, stabilizer)


@_checks.traceable
def z_box(R, a, W, b=None, low=None, high=None, stabilizer: float = 1e-6):
    """LRP-z^B for the input layer; ``low``/``high``: floats or tensors broadcastable to a."""
    R, a, W, b = _checks.dense(R, a, W, b, "z_box")
    low, high = _checks.bounds(low, high, a)
    stabilizer = _checks.stabilizer(stabilizer, "stabilizer")
    if ops.use_compiled(a):
        return _op.z_box(R, a, W, low, high, stabilizer)
    return reference.z_box(R, a, W, b, low, high, stabilizer)
