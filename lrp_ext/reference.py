"""Plain-PyTorch LRP rules for a dense layer: the numerical ground truth.

Every function computes exactly the definition in the project's rule specification
(``docs/rules.md``), with ordinary PyTorch operations in the dtype of its inputs (float64
included), except that float16 and bfloat16 are computed in float32 and rounded once at the end,
as the kernels do (in float16 itself ``R / 1e-6`` overflows and ``inf * 0`` gives NaN).
They are used as the reference in the tests and as the fallback wherever the
compiled kernels are missing.

Shapes: ``R`` (..., O), ``a`` (..., I), ``W`` (O, I), ``b`` (O,) or None.  Result (..., I).
Arguments are validated exactly as by the compiled entry points (see ``lrp_ext._checks``).
"""
from __future__ import annotations

import functools

import torch

from . import _checks, _table

__all__ = ["zero", "epsilon", "gamma", "alpha_beta", "z_plus", "flat", "w_square", "z_box",
           "stabilize", "coefficients"]
_d = _table.default


def stabilize(z: torch.Tensor, e: float) -> torch.Tensor:
    """``z + e * sgn(z)`` with ``sgn(z) = +1`` for ``z >= 0`` (also -0.0) and -1 otherwise."""
    return z + e * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _in_float32(fn):
    """Run ``fn(R, a, ...)`` in float32 when ``a`` is float16/bfloat16; round the result once."""
    @functools.wraps(fn)
    def wrapper(*args):
        dtype = args[1].dtype
        if dtype not in _LOW_PRECISION:
            return fn(*args)
        up = [x.float() if isinstance(x, torch.Tensor) else x for x in args]
        return fn(*up).to(dtype)
    return wrapper


def _pos(x):
    return x.clamp(min=0)


def _neg(x):
    return x.clamp(max=0)


def _fwd(x, W, b=None):
    z = x @ W.t()
    return z if b is None else z + b


@_in_float32
def _epsilon(R, a, W, b, e):
    z = _fwd(a, W, b)
    s = R / stabilize(z, e)
    return a * (s @ W)


@_checks.traceable
def epsilon(R, a, W, b=None, epsilon: float = _d("epsilon", "epsilon")):
    """LRP-ε: ``z = a Wᵀ + b``, ``s = R / stab(z, ε)``, ``R_in = a ⊙ (s W)``."""
    R, a, W, b = _checks.dense(R, a, W, b, "epsilon")
    return _epsilon(R, a, W, b, _checks.stabilizer(epsilon, "epsilon"))


@_checks.traceable
def zero(R, a, W, b=None):
    """LRP-0: LRP-ε with ε = 1e-9 (only guards exact zeros)."""
    R, a, W, b = _checks.dense(R, a, W, b, "zero")
    return _epsilon(R, a, W, b, 1e-9)


@_checks.traceable
def gamma(R, a, W, b=None, gamma: float = _d("gamma", "gamma"),
          stabilizer: float = _d("gamma", "stabilizer")):
    """Sign-generalised LRP-γ (see the specification's table)."""
    R, a, W, b = _checks.dense(R, a, W, b, "gamma")
    return _gamma(R, a, W, b, _checks.finite(gamma, "gamma"),
                  _checks.stabilizer(stabilizer, "stabilizer"))


@_in_float32
def _gamma(R, a, W, b, gamma, stabilizer):
    Wu = W + gamma * _pos(W)
    Wd = W + gamma * _neg(W)
    bu = None if b is None else b + gamma * _pos(b)
    bd = None if b is None else b + gamma * _neg(b)
    ap, an = _pos(a), _neg(a)
    z = _fwd(a, W, b)
    zp = _fwd(ap, Wu, bu) + _fwd(an, Wd)
    zn = _fwd(ap, Wd, bd) + _fwd(an, Wu)
    sp = R * (z > 0).to(R.dtype) / stabilize(zp, stabilizer)
    sn = R * (z < 0).to(R.dtype) / stabilize(zn, stabilizer)
    return ap * (sp @ Wu + sn @ Wd) + an * (sp @ Wd + sn @ Wu)


@_in_float32
def _alpha_beta(R, a, W, b, alpha, beta, e):
    Wp, Wn = _pos(W), _neg(W)
    ap, an = _pos(a), _neg(a)
    za = _fwd(ap, Wp, None if b is None else _pos(b)) + _fwd(an, Wn)
    sa = R / stabilize(za, e)
    out = alpha * (ap * (sa @ Wp) + an * (sa @ Wn))
    if beta == 0:  # z_plus: no beta term at all (with stabilizer 0, z_beta = 0 would give 0 * inf)
        return out
    zb = _fwd(ap, Wn, None if b is None else _neg(b)) + _fwd(an, Wp)
    sb = R / stabilize(zb, e)
    return out - beta * (ap * (sb @ Wn) + an * (sb @ Wp))


@_checks.traceable
def alpha_beta(R, a, W, b=None, alpha: float = _d("alpha_beta", "alpha"),
               beta: float = _d("alpha_beta", "beta"),
               stabilizer: float = _d("alpha_beta", "stabilizer")):
    """LRP-αβ; requires α ≥ 0, β ≥ 0 and α − β = 1 (``ValueError`` otherwise)."""
    R, a, W, b = _checks.dense(R, a, W, b, "alpha_beta")
    alpha, beta = _checks.alpha_beta(alpha, beta)
    return _alpha_beta(R, a, W, b, alpha, beta, _checks.stabilizer(stabilizer, "stabilizer"))


@_checks.traceable
def z_plus(R, a, W, b=None, stabilizer: float = _d("z_plus", "stabilizer")):
    """LRP-z⁺: LRP-αβ with α = 1, β = 0."""
    R, a, W, b = _checks.dense(R, a, W, b, "z_plus")
    return _alpha_beta(R, a, W, b, 1.0, 0.0, _checks.stabilizer(stabilizer, "stabilizer"))


@_checks.traceable
def flat(R, a, W, b=None, stabilizer: float = _d("flat", "stabilizer")):
    """Flat rule: inputs and weights replaced by ones, bias dropped."""
    R, a, W, b = _checks.dense(R, a, W, b, "flat")
    return _flat(R, a, W, _checks.stabilizer(stabilizer, "stabilizer"))


@_in_float32
def _flat(R, a, W, stabilizer):
    ones_a = torch.ones_like(a)
    ones_W = torch.ones_like(W)
    z = _fwd(ones_a, ones_W)
    s = R / stabilize(z, stabilizer)
    return s @ ones_W


@_checks.traceable
def w_square(R, a, W, b=None, stabilizer: float = _d("w_square", "stabilizer")):
    """LRP-w²: input replaced by ones, ``z = 1 (W²)ᵀ + b²``; the activation never multiplies."""
    R, a, W, b = _checks.dense(R, a, W, b, "w_square")
    return _w_square(R, a, W, b, _checks.stabilizer(stabilizer, "stabilizer"))


@_in_float32
def _w_square(R, a, W, b, stabilizer):
    W2 = W * W
    z = _fwd(torch.ones_like(a), W2, None if b is None else b * b)
    s = R / stabilize(z, stabilizer)
    return s @ W2


@_checks.traceable
def z_box(R, a, W, b=None, low=None, high=None, stabilizer: float = _d("z_box", "stabilizer")):
    """LRP-z^B for the input layer; ``low``/``high`` are floats or tensors broadcastable to a."""
    R, a, W, b = _checks.dense(R, a, W, b, "z_box")
    low, high = _checks.bounds(low, high, a)
    return _z_box(R, a, W, low, high, _checks.stabilizer(stabilizer, "stabilizer"))


@_in_float32
def _z_box(R, a, W, low, high, stabilizer):
    Wp, Wn = _pos(W), _neg(W)
    z = a @ W.t() - low @ Wp.t() - high @ Wn.t()
    s = R / stabilize(z, stabilizer)
    return a * (s @ W) - low * (s @ Wp) - high * (s @ Wn)


# Conv-layer versions of the rules: lrp_ext.reference.conv.gamma(...) etc.
from . import conv_reference as conv  # noqa: E402


def coefficients(z, g, P, M, kind, groups, e, gamma, alpha, beta, times_z):
    """The elementwise stage of a conv / linear rule at model level (``lrp_ext::coefficients``,
    schema in ``csrc/lrp.cpp``), written out: its fallback and the compiled op's test oracle.

    ``z`` (N, O, *sp) is the layer output, ``r = z ⊙ g`` (``times_z``) or ``r = g`` with ``g`` of
    z's shape or K of them stacked along the batch (K·N, O, *sp), ``P`` / ``M``
    the positive / negative sums (``M = z − P`` when None), ``kind`` from
    ``lrp_ext._table.COEF_KIND``.  Returns ``r / stab(z)`` (ε), ``α r / stab(P)`` (z⁺), or the
    stacked ``[c⁺; c⁻]`` as (N, groups, 2, O/groups, *sp) (γ, αβ) as in ``docs/rules.md``; for
    ``gamma_mixed`` ``P`` is ``S = |a|∗|W| + |b|`` (so ``P = ½(z + S)``, ``M = ½(z − S)``) and
    the result the halves ``½(c⁺ + c⁻)``, ``½(c⁺ − c⁻)`` as (2, N, O, *sp).
    """
    kinds = _table.COEF_KIND
    gshape = g.shape
    if g.shape[0] != z.shape[0]:  # K stacked gradients: z, P and M repeat
        g = g.reshape((-1,) + tuple(z.shape))
    r = z * g if times_z else g
    if kind == kinds["epsilon"]:
        return (r / stabilize(z, e)).reshape(gshape)
    if kind == kinds["z_plus"]:
        return (alpha * r / stabilize(P, e)).reshape(gshape)
    if kind == kinds["gamma_mixed"]:  # P holds S = |a|∗|W| + |b|: P = ½(z + S), M = ½(z − S)
        P, M = 0.5 * (z + P), 0.5 * (z - P)
    if M is None:
        M = z - P
    if kind in (kinds["gamma"], kinds["gamma_mixed"]):
        sp = r * (z > 0).to(r.dtype) / stabilize(z + gamma * P, e)
        sn = r * (z < 0).to(r.dtype) / stabilize(z + gamma * M, e)
        cp, cn = sp + sn + gamma * sp, sp + sn + gamma * sn
    elif kind == kinds["alpha_beta"]:
        cp, cn = alpha * r / stabilize(P, e), -beta * r / stabilize(M, e)
    else:
        raise ValueError(f"coefficients: unknown kind {kind}")
    if kind == kinds["gamma_mixed"]:  # the half sum and half difference, (2, K·N, O, *sp)
        return torch.stack([(0.5 * (cp + cn)).reshape(gshape), (0.5 * (cp - cn)).reshape(gshape)])
    N, O = gshape[:2]
    shape = (N, groups, O // groups) + tuple(z.shape[2:])
    return torch.stack([cp.reshape(shape), cn.reshape(shape)], dim=2)


def sign_sum(A, B, x):
    """``A + B`` where ``x ≥ 0`` (or NaN), ``A − B`` where ``x < 0`` (``lrp_ext::sign_sum``,
    schema in ``csrc/lrp.cpp``): γ's gradient at an input of both signs.  ``A`` and ``B`` have
    ``x``'s shape or K copies of it stacked along dim 0."""
    shape = A.shape
    if x.dim() and A.shape[0] != x.shape[0]:
        A, B = A.reshape((-1,) + tuple(x.shape)), B.reshape((-1,) + tuple(x.shape))
    return torch.where(x < 0, A - B, A + B).reshape(shape)
