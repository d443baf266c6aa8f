"""Plain-PyTorch LRP rules for convolutions: the ground truth for ``lrp_ext.conv``.

Each function spells out the definition in the project's rule specification (``docs/rules.md``)
with ``a Wᵀ`` read as ``F.conv{1,2,3}d`` / ``F.conv_transpose{1,2,3}d`` (with the layer's stride,
padding, dilation, groups) and ``s W`` as the autograd gradient of that convolution with respect
to its input.  Slow (one convolution and one autograd backward per term) but obviously correct.

Same signature as ``lrp_ext.conv``: ``rule(R, a, layer, bias=None, *, stride=1, padding=0,
dilation=1, groups=1, transposed=False, output_padding=0, <rule parameters>)`` with ``layer`` a
conv module or a weight tensor.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import _checks, _table
from ._conv_args import parse
from .reference import stabilize

__all__ = ["zero", "epsilon", "gamma", "alpha_beta", "z_plus", "flat", "w_square", "z_box"]
_d = _table.default

_FWD = {(1, False): F.conv1d, (2, False): F.conv2d, (3, False): F.conv3d,
        (1, True): F.conv_transpose1d, (2, True): F.conv_transpose2d,
        (3, True): F.conv_transpose3d}


class _Layer:
    """Forward ``f(x, W, b)`` and transpose ``t(s, x_shape, W)`` of one convolution."""

    def __init__(self, layer, bias, hyper, rule):
        self.spec = spec = parse(layer, bias, rule=rule, **hyper)
        self.W, self.b = spec.weight, spec.bias
        if self.W.dtype in _LOW_PRECISION:  # float16/bfloat16 in float32, rounded once
            self.W = self.W.float()
            self.b = None if self.b is None else self.b.float()

    def _pad(self, x):
        if self.spec.pre_pad is None:
            return x
        pad, mode = self.spec.pre_pad
        return F.pad(x, pad, mode=mode)

    def f(self, x, W, b=None):
        s = self.spec
        fn = _FWD[(s.nd, s.transposed)]
        x = self._pad(x)
        if s.transposed:
            return fn(x, W, b, stride=s.stride, padding=s.padding, output_padding=s.output_padding,
                      groups=s.groups, dilation=s.dilation)
        return fn(x, W, b, stride=s.stride, padding=s.padding, dilation=s.dilation,
                  groups=s.groups)

    def t(self, s, x_shape, W):
        with torch.enable_grad():
            x = torch.zeros(x_shape, dtype=s.dtype, device=s.device, requires_grad=True)
            y = self.f(x, W)
            g, = torch.autograd.grad(y, x, s)
        return g


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _args(R, a, rule):
    for name, t in (("R", R), ("a", a)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{rule}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if a.dtype in _LOW_PRECISION:
        return R.detach().float(), a.detach().float()
    return R.detach(), a.detach()


def _rounded(fn):
    """The result in ``a``'s dtype (float16/bfloat16 inputs are computed in float32)."""
    @functools.wraps(fn)
    def wrapper(R, a, *args, **kwargs):
        out = fn(R, a, *args, **kwargs)
        return out.to(a.dtype) if isinstance(a, torch.Tensor) else out
    return wrapper


def _pos(x):
    return x.clamp(min=0)


def _neg(x):
    return x.clamp(max=0)


def _hyper(stride, padding, dilation, groups, transposed, output_padding):
    return dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                transposed=transposed, output_padding=output_padding)


def _epsilon(R, a, L, e):
    z = L.f(a, L.W, L.b)
    s = R / stabilize(z, e)
    return a * L.t(s, a.shape, L.W)


@_rounded
def epsilon(R, a, layer, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
            transposed=False, output_padding=0, epsilon: float = _d("epsilon", "epsilon")):
    """LRP-ε: ``z = conv(a, W) + b``; ``s = R / stab(z, ε)``; ``R_in = a ⊙ convᵀ(s, W)``."""
    R, a = _args(R, a, "epsilon")
    _checks.stabilizer(epsilon, "epsilon")
    L = _Layer(layer, bias, _hyper(stride, padding, dilation, groups, transposed,
                                   output_padding), "epsilon")
    return _epsilon(R, a, L, epsilon)


@_rounded
def zero(R, a, layer, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
         transposed=False, output_padding=0):
    """LRP-0: LRP-ε with ε = 1e-9."""
    R, a = _args(R, a, "zero")
    L = _Layer(layer, bias, _hyper(stride, padding, dilation, groups, transposed,
                                   output_padding), "zero")
    return _epsilon(R, a, L, 1e-9)


@_rounded
def gamma(R, a, layer, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
          transposed=False, output_padding=0, gamma: float = _d("gamma", "gamma"),
          stabilizer: float = _d("gamma", "stabilizer")):
    """Sign-generalised LRP-γ, term by term as in the specification's table."""
    R, a = _args(R, a, "gamma")
    _checks.finite(gamma, "gamma")
    _checks.stabilizer(stabilizer, "stabilizer")
    L = _Layer(layer, bias, _hyper(stride, padding, dilation, groups, transposed,
                                   output_padding), "gamma")
    W, b = L.W, L.b
    Wu, Wd = W + gamma * _pos(W), W + gamma * _neg(W)
    bu = None if b is None else b + gamma * _pos(b)
    bd = None if b is None else b + gamma * _neg(b)
    ap, an = _pos(a), _neg(a)
    z = L.f(a, W, b)
    zp = L.f(ap, Wu, bu) + L.f(an, Wd)
    zn = L.f(ap, Wd, bd) + L.f(an, Wu)
    sp = R * (z > 0).to(R.dtype) / stabilize(zp, stabilizer)
    sn = R * (z < 0).to(R.dtype) / stabilize(zn, stabilizer)
    t = L.t
    return (ap * (t(sp, a.shape, Wu) + t(sn, a.shape, Wd))
            + an * (t(sp, a.shape, Wd) + t(sn, a.shape, Wu)))


def _alpha_beta(R, a, L, alpha, beta, e):
    W, b = L.W, L.b
    Wp, Wn = _pos(W), _neg(W)
    ap, an = _pos(a), _neg(a)
    za = L.f(ap, Wp, None if b is None else _pos(b)) + L.f(an, Wn)
    zb = L.f(ap, Wn, None if b is None else _neg(b)) + L.f(an, Wp)
    sa = R / stabilize(za, e)
    sb = R / stabilize(zb, e)
    t = L.t
    return (alpha * (ap * t(sa, a.shape, Wp) + an * t(sa, a.shape, Wn))
            - beta * (ap * t(sb, a.shape, Wn) + an * t(sb, a.shape, Wp)))


@_rounded
def alpha_beta(R, a, layer, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
               transposed=False, output_padding=0, alpha: float = _d("alpha_beta", "alpha"),
               beta: float = _d("alpha_beta", "beta"),
               stabilizer: float = _d("alpha_beta", "stabilizer")):
    """LRP-αβ (α ≥ 0, β ≥ 0, α − β = 1)."""
    R, a = _args(R, a, "alpha_beta")
    _checks.alpha_beta(alpha, beta)
    _checks.stabilizer(stabilizer, "stabilizer")
    L = _Layer(layer, bias, _hyper(stride, padding, dilation, groups, transposed,
                                   output_padding), "alpha_beta")
    return _alpha_beta(R, a, L, alpha, beta, stabilizer)


@_rounded
def z_plus(R, a, layer, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
           transposed=False, output_padding=0, stabilizer: float = _d("z_plus", "stabilizer")):
    """LRP-z⁺: LRP-αβ with α = 1, β = 0."""
    R, a = _args(R, a, "z_plus")
    _checks.stabilizer(stabilizer, "stabilizer")
    L = _Layer(layer, bias, _hyper(stride, padding, dilation, groups, transposed,
                                   output_padding), "z_plus")
    return _alpha_beta(R, a, L, 1.0, 0.0, stabilizer)


@_rounded
def flat(R, a, layer, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
         transposed=False, output_padding=0, stabilizer: float = _d("flat", "stabilizer")):
    """Flat: ones as input and weight, bias dropped (receptive-field counts)."""
    R, a = _args(R, a, "flat")
    _checks.stabilizer(stabilizer, "stabilizer")
    L = _Layer(layer, bias, _hyper(stride, padding, dilation, groups, transposed,
                                   output_padding), "flat")
    ones_W = torch.ones_like(L.W)
    z = L.f(torch.ones_like(a), ones_W)
    s = R / stabilize(z, stabilizer)
    return L.t(s, a.shape, ones_W)


@_rounded
def w_square(R, a, layer, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
             transposed=False, output_padding=0, stabilizer: float = _d("w_square", "stabilizer")):
    """LRP-w²: ones as input, ``z = conv(1, W²) + b²``, ``R_in = convᵀ(R / stab(z), W²)``."""
    R, a = _args(R, a, "w_square")
    _checks.stabilizer(stabilizer, "stabilizer")
    L = _Layer(layer, bias, _hyper(stride, padding, dilation, groups, transposed,
                                   output_padding), "w_square")
    W2 = L.W * L.W
    z = L.f(torch.ones_like(a), W2, None if L.b is None else L.b * L.b)
    s = R / stabilize(z, stabilizer)
    return L.t(s, a.shape, W2)


@_rounded
def z_box(R, a, layer, bias=None, *, low=None, high=None, stride=1, padding=0, dilation=1,
          groups=1, transposed=False, output_padding=0,
          stabilizer: float = _d("z_box", "stabilizer")):
    """LRP-z^B: ``z = conv(a, W) − conv(low, W⁺) − conv(high, W⁻)`` (bias ignored)."""
    R, a = _args(R, a, "z_box")
    _checks.stabilizer(stabilizer, "stabilizer")
    low, high = _checks.bounds(low, high, a)
    L = _Layer(layer, bias, _hyper(stride, padding, dilation, groups, transposed,
                                   output_padding), "z_box")
    W = L.W
    Wp, Wn = _pos(W), _neg(W)
    z = L.f(a, W) - L.f(low, Wp) - L.f(high, Wn)
    s = R / stabilize(z, stabilizer)
    t = L.t
    return a * t(s, a.shape, W) - low * t(s, a.shape, Wp) - high * t(s, a.shape, Wn)
