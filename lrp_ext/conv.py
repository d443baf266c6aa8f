"""LRP rules for convolutions: Conv1d/2d/3d and ConvTranspose1d/2d/3d.

Every function here computes the rule of the same name in the project's rule specification
(``docs/rules.md``, conv section), reading ``a Wᵀ`` as the layer's forward and ``s W`` as its
transpose (the gradient of the forward with respect to its input).

Call signature (all rules)::

    lrp_ext.conv.<rule>(R, a, layer, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
                        transposed=False, output_padding=0, <rule parameters>, output=None)

- ``R``: relevance at the layer output, ``(N, O, *out_spatial)`` (or unbatched ``(O, ...)``).
- ``a``: the layer input, ``(N, C, *in_spatial)`` (or unbatched).
- ``layer``: an ``nn.Conv{1,2,3}d`` / ``nn.ConvTranspose{1,2,3}d`` module — its weight, bias
  and hyper-parameters are used (then ``bias`` must be None and the keyword hyper-parameters
  are ignored) — or a weight tensor in PyTorch's layout (``(O, C/groups, *k)`` for a
  convolution, ``(C, O/groups, *k)`` with ``transposed=True``).  ``padding`` may also be
  ``"same"`` / ``"valid"``; modules with a non-zero ``padding_mode`` are supported.
- ``output`` (keyword, optional, used by ``zero``, ``epsilon``, ``gamma`` and ``alpha_beta``):
  the layer's forward output ``conv(a, W) + b`` when the caller already has it; it saves one
  convolution.  It must be that output (same shape as ``R``).

Rule parameters and defaults: ``zero()``, ``epsilon(epsilon=1e-6)``,
``gamma(gamma=0.25, stabilizer=1e-6)``, ``alpha_beta(alpha=2.0, beta=1.0, stabilizer=1e-6)``,
``z_plus(stabilizer=1e-6)``, ``flat(stabilizer=1e-6)``, ``w_square(stabilizer=1e-6)``,
``z_box(low, high, stabilizer=1e-6)`` (``low``/``high``: floats or tensors broadcastable to
``a``).  The result has ``a``'s shape and dtype and carries no autograd history.

Implementation: ATen convolutions (oneDNN on CPU, cuDNN on GPU; 1×1 convolutions with stride 1
and no padding as matrix products on CPU) on modified weights built once per call.  Weights are
stacked so that one convolution yields several partial results: the forward of ``[W⁺; W⁻]``
gives ``P = Σ(a W)⁺ + b⁺`` and ``M = Σ(a W)⁻ + b⁻`` together, and one input-gradient
convolution on ``[c⁺; c⁻]`` with ``[W⁺; W⁻]`` gives the whole backward.  With
``z = P + M``:

- gamma: ``z_p = z + γP``, ``z_n = z + γM``; ``s_p = R[z>0]/stab(z_p)``,
  ``s_n = R[z<0]/stab(z_n)``; ``c⁺ = (1+γ)s_p + s_n``, ``c⁻ = s_p + (1+γ)s_n``;
- alpha_beta: ``c⁺ = αR/stab(P)``, ``c⁻ = −βR/stab(M)``;

and ``R_in = a⁺ ⊙ Wᵀ(c⁺ on W⁺ + c⁻ on W⁻) + a⁻ ⊙ Wᵀ(c⁻ on W⁺ + c⁺ on W⁻)``.  Inputs with
``a ≥ 0`` (detected) skip every ``a⁻`` term; with ``output`` given, ``M = z − P`` needs only
the ``W⁺`` convolution.  ``flat`` and ``w_square`` do not depend on the batch: their
denominators are computed once for a single sample (``flat`` with one channel per group).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _checks, _conv_args, _table
from . import canonize as _canon
from . import ops as _ops

__all__ = ["zero", "epsilon", "gamma", "alpha_beta", "z_plus", "flat", "w_square", "z_box",
           "ConvSpec", "LinearSpec", "conv_spec", "apply_spec", "rule_backward", "COEF_RULES"]
_d = _table.default

_aten = torch.ops.aten
_CONV_TYPES = _conv_args.CONV_TYPES


def _stab(z, e):
    """``z + e·sgn(z)`` with sgn(0) = +1 (also for -0.0, which ``+ 0.0`` turns into +0.0)."""
    return z + torch.copysign(torch.tensor(e, dtype=z.dtype, device=z.device), z + 0.0)


class ConvSpec:
    """A convolution's weight, bias and hyper-parameters, with its forward and input-gradient.

    ``pre_pad`` is ``(pad, mode)`` when the input is padded explicitly before a convolution
    with zero implicit padding (non-zero ``padding_mode`` or asymmetric ``"same"`` padding).
    """

    __slots__ = ("_weight", "raw_weight", "row_scale", "bias", "stride", "padding", "dilation",
                 "transposed", "output_padding", "groups", "nd", "pre_pad", "known_nonneg",
                 "sign_check", "pointwise", "keep")

    def __init__(self, weight, bias, stride, padding, dilation, transposed, output_padding,
                 groups, nd, pre_pad=None, row_scale=None):
        self._weight = weight if row_scale is None else None
        self.raw_weight, self.row_scale, self.bias = weight, row_scale, bias
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.transposed, self.output_padding, self.groups = transposed, output_padding, groups
        self.nd, self.pre_pad = nd, pre_pad
        self.known_nonneg = False  # set by callers that know the input is >= 0
        self.sign_check = True  # else γ takes its path for inputs of both signs unchecked
        # a 1×1 convolution with stride 1 and no padding (its kernel checked at each call):
        # per sample a matrix product over the channels
        self.pointwise = (nd > 0 and not transposed and groups == 1
                          and all(v == 1 for v in stride) and all(v == 0 for v in padding))
        # None, or a dict in which the rules keep the tensors they derive from the weights
        # (signed weights, |W|) for later calls on this spec (set by ``explain.Explainer``,
        # which drops it when a parameter changes)
        self.keep = None

    @property
    def weight(self):
        """The layer's weight: ``raw_weight`` with its output channels scaled by ``row_scale``
        (a merged BatchNorm), formed on first use; the signed weights skip it."""
        if self._weight is None:
            self._weight = _canon.scale_rows(self.raw_weight, self.row_scale, self.transposed,
                                             self.groups)
        return self._weight

    @property
    def out_channels(self):
        w = self.raw_weight
        return w.shape[1] * self.groups if self.transposed else w.shape[0]

    @property
    def in_channels(self):
        w = self.raw_weight
        return w.shape[0] if self.transposed else w.shape[1] * self.groups

    def with_params(self, weight, bias, row_scale=None):
        return ConvSpec(weight, bias, self.stride, self.padding, self.dilation, self.transposed,
                        self.output_padding, self.groups, self.nd, self.pre_pad, row_scale)

    # -- the two primitive operations, on (possibly block-stacked) weights ----------------
    def fwd(self, x, weight, bias=None, groups=None):
        if self._gemm(x, weight, groups) and x.shape[0] > 1 and weight.numel() >= x.numel():
            return _pointwise(weight.reshape(weight.shape[:2]), x, bias)
        return _aten.convolution(x, weight, bias, self.stride, self.padding, self.dilation,
                                 self.transposed, self.output_padding,
                                 self.groups if groups is None else groups)

    def bwd(self, grad, in_shape, weight, groups=None):
        """Gradient of ``fwd(x, weight)`` w.r.t. ``x`` (of shape ``in_shape``) for ``grad``."""
        if self._gemm(grad, weight, groups) and tuple(in_shape[2:]) == tuple(grad.shape[2:]):
            return _pointwise(weight.reshape(weight.shape[:2]).t(), grad).reshape(in_shape)
        # the input is never read for the input gradient, but ATen makes it contiguous: an
        # expanded one-element stand-in was copied to full size there (depthwise 96×112² at
        # batch 8: 54 ms against 37 ms); an uninitialised tensor of its shape is not copied
        dummy = grad.new_empty(in_shape)
        return _aten.convolution_backward(
            grad.contiguous(), dummy, weight.contiguous(), None, self.stride, self.padding,
            self.dilation, self.transposed, self.output_padding,
            self.groups if groups is None else groups, (True, False, False))[0]

    def _gemm(self, x, weight, groups):
        """Whether this call is a 1×1 convolution that runs as matrix products (CPU): ATen
        runs those single-threaded through a path that zero-fills and accumulates the input
        gradient (resnet50's 256→64 layers at batch 8: 40 ms against 18 ms as a batched
        product), and, at batch > 1, streams the weight once per sample."""
        return (self.pointwise and (groups is None or groups == 1) and x.device.type == "cpu"
                and weight.dim() > 2 and all(k == 1 for k in weight.shape[2:]))

    # -- block stacking ----------------------------------------------------------------
    def logical(self, w):
        """Weight as ``(g, O/g, C/g, *k)`` whatever the layout."""
        g = self.groups
        if self.transposed:
            return w.reshape(g, w.shape[0] // g, *w.shape[1:]).transpose(1, 2)
        return w.reshape(g, w.shape[0] // g, *w.shape[1:])

    def stack_weights(self, rows):
        """Physical weight for blocks ``rows[i][j]`` (output block i, input block j)."""
        L = torch.stack([torch.stack([self.logical(w) for w in row], dim=2) for row in rows],
                        dim=1)  # (g, kO, O/g, kI, C/g, *k)
        return self.physical(L)

    def physical(self, L):
        """``(g, kO, O/g, kI, C/g, *k)`` block weight -> PyTorch's layout for this conv."""
        g, kO, Og, kI, Cg = L.shape[:5]
        k = L.shape[5:]
        if self.transposed:
            return L.permute(0, 3, 4, 1, 2, *range(5, L.dim())).reshape(g * kI * Cg, kO * Og,
                                                                         *k)
        return L.reshape(g * kO * Og, kI * Cg, *k)

    def stack_bias(self, biases):
        g = self.groups
        return torch.stack([b.reshape(g, -1) for b in biases], dim=1).reshape(-1)

    def stack_inputs(self, xs):
        g = self.groups
        N, C = xs[0].shape[:2]
        sp = xs[0].shape[2:]
        return torch.stack([x.reshape(N, g, C // g, *sp) for x in xs], dim=2).reshape(
            N, len(xs) * C, *sp)

    def split(self, y, k):
        """``(N, k·O, *sp)`` stacked by groups -> view ``(N, g, k, O/g, *sp)``."""
        g = self.groups
        N = y.shape[0]
        return y.reshape(N, g, k, y.shape[1] // (g * k), *y.shape[2:])

    def grouped(self, y):
        """``(N, O, *sp)`` -> view ``(N, g, O/g, *sp)``."""
        return y.reshape(y.shape[0], self.groups, y.shape[1] // self.groups, *y.shape[2:])


def _pointwise(A, x, bias=None):
    """``A @ x[n]`` for every sample of ``x`` (N, C, *sp), plus ``bias`` per row: a 1×1
    convolution as matrix products, ``(N, A.shape[0], *sp)``.  One product over all samples
    when ``A`` outweighs ``x`` (deep layers: the weight is read once, not once per sample;
    ``x`` and the result are transposed copies, small there), else one per sample."""
    N, C = x.shape[:2]
    sp = tuple(x.shape[2:])
    x3 = x.reshape(N, C, -1)
    b = None if bias is None else bias.unsqueeze(1)
    if N == 1:
        y = torch.mm(A, x3[0]) if b is None else torch.addmm(b, A, x3[0])
        return y.reshape((1, A.shape[0]) + sp)
    if A.numel() >= x.numel():
        x2 = x3.transpose(0, 1).reshape(C, -1)
        y = torch.mm(A, x2) if b is None else torch.addmm(b, A, x2)
        return y.reshape(A.shape[0], N, -1).transpose(0, 1).reshape((N, A.shape[0]) + sp)
    Ab = A.expand(N, *A.shape)
    y = torch.bmm(Ab, x3) if b is None else torch.baddbmm(b, Ab, x3)
    return y.reshape((N, A.shape[0]) + sp)


def conv_spec(layer, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
              transposed=False, output_padding=0, rule="conv") -> ConvSpec:
    """Build a :class:`ConvSpec` from a conv module or a weight tensor (validated)."""
    return ConvSpec(*_conv_args.parse(layer, bias, stride=stride, padding=padding,
                                      dilation=dilation, groups=groups, transposed=transposed,
                                      output_padding=output_padding, rule=rule))


def _prepare(R, a, spec: ConvSpec, rule, output=None):
    """Validate shapes/dtypes; returns (R, a, output, unbatched)."""
    for name, t in (("R", R), ("a", a)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{rule}: {name} must be a torch.Tensor, got {type(t).__name__}")
    nd = spec.nd
    unbatched = a.dim() == nd + 1
    if unbatched:
        a = a.unsqueeze(0)
        if R.dim() == nd + 1:
            R = R.unsqueeze(0)
        if output is not None and output.dim() == nd + 1:
            output = output.unsqueeze(0)
    if a.dim() != nd + 2:
        raise ValueError(f"{rule}: a must have shape (N, C, *spatial) with {nd} spatial dims "
                         f"for this {nd}-d convolution, got a {_checks._shape(a)}")
    tensors = [("R", R), ("a", a), ("weight", spec.weight)]
    if spec.bias is not None:
        tensors.append(("bias", spec.bias))
    if output is not None:
        tensors.append(("output", output))
    _checks.agree(rule, tensors)
    if a.shape[1] != spec.in_channels:
        raise ValueError(f"{rule}: a has {a.shape[1]} channels but the layer expects "
                         f"{spec.in_channels}; got a {_checks._shape(a)} and weight "
                         f"{_checks._shape(spec.weight)} (groups={spec.groups})")
    if spec.bias is not None and tuple(spec.bias.shape) != (spec.out_channels,):
        raise ValueError(f"{rule}: bias must have shape ({spec.out_channels},), got "
                         f"{_checks._shape(spec.bias)}")
    in_sp = list(a.shape[2:])
    if spec.pre_pad is not None:
        pad = spec.pre_pad[0]
        for d in range(nd):
            in_sp[d] += pad[2 * (nd - 1 - d)] + pad[2 * (nd - 1 - d) + 1]
    out_sp = []
    k = spec.weight.shape[2:]
    for d in range(nd):
        s, p, dl = spec.stride[d], spec.padding[d], spec.dilation[d]
        if spec.transposed:
            out_sp.append((in_sp[d] - 1) * s - 2 * p + dl * (k[d] - 1) + spec.output_padding[d]
                          + 1)
        else:
            out_sp.append((in_sp[d] + 2 * p - dl * (k[d] - 1) - 1) // s + 1)
    if min(out_sp) < 1:
        raise ValueError(f"{rule}: a {_checks._shape(a)} is too small for the kernel "
                         f"{tuple(k)} (output size {tuple(out_sp)})")
    expect = (a.shape[0], spec.out_channels) + tuple(out_sp)
    if tuple(R.shape) != expect:
        raise ValueError(f"{rule}: R must have the layer's output shape "
                         f"({', '.join(map(str, expect))}), got R {_checks._shape(R)}")
    if output is not None and tuple(output.shape) != expect:
        raise ValueError(f"{rule}: output must have the layer's output shape "
                         f"({', '.join(map(str, expect))}), got {_checks._shape(output)}")
    return R.detach(), a.detach(), None if output is None else output.detach(), unbatched


def _run(rule, R, a, layer, bias, hyper, body, output=None, extra_inputs=()):
    """Common driver: spec, validation, explicit padding, body, un-padding."""
    if isinstance(layer, ConvSpec):
        spec = layer
    else:
        spec = conv_spec(layer, bias, rule=rule, **hyper)
    R, a, output, unbatched = _prepare(R, a, spec, rule, output)
    dtype = a.dtype
    if dtype in _LOW_PRECISION:  # float16 overflows at R / 1e-6: compute in float32, round once
        R, a = R.float(), a.float()
        output = None if output is None else output.float()
        spec = _float_spec(spec)
        extra_inputs = tuple(x.float() for x in extra_inputs)
    with torch.no_grad():
        if spec.pre_pad is None:
            out = body(R, a, spec, output, *extra_inputs)
        else:
            pad, mode = spec.pre_pad
            ap = F.pad(a, pad, mode=mode)
            extra = tuple(_pad_bound(x, pad, mode) for x in extra_inputs)
            if body.needs_ones:  # ones in the original input, padded like the input
                sp = tuple(a.shape[2:])
                extra = (lambda c: F.pad(torch.ones((1, c) + sp, dtype=a.dtype,
                                                    device=a.device), pad, mode=mode),)
            Rp = body(R, ap, spec, output, *extra)
            if mode == "constant":
                sl = [slice(None), slice(None)]
                for d in range(spec.nd):
                    lft, rgt = pad[2 * (spec.nd - 1 - d)], pad[2 * (spec.nd - 1 - d) + 1]
                    sl.append(slice(lft, Rp.shape[2 + d] - rgt))
                out = Rp[tuple(sl)]
            else:  # reflect / replicate / circular: relevance follows the padding's gradient
                with torch.enable_grad():
                    ar = a.detach().requires_grad_(True)
                    out, = torch.autograd.grad(F.pad(ar, pad, mode=mode), ar, Rp)
    out = out.to(dtype).contiguous()
    return out.squeeze(0) if unbatched else out


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _float_spec(spec):
    rs = spec.row_scale
    out = spec.with_params(spec.raw_weight.float(),
                           None if spec.bias is None else spec.bias.float(),
                           None if rs is None else rs.float())
    out.known_nonneg, out.sign_check = spec.known_nonneg, spec.sign_check
    return out


def apply_spec(rule, R, a, spec: ConvSpec, *, output=None, nonneg=False, **params):
    """Run rule ``rule`` (a name from ``__all__``) for a prepared :class:`ConvSpec`.

    Used by model-level code that has already built the (possibly BatchNorm-merged) weights;
    ``params`` are the rule's parameters, ``output`` as in the rule functions.  ``nonneg=True``
    promises ``a >= 0`` (e.g. a ReLU output) and skips the check.
    """
    spec.known_nonneg = bool(nonneg)
    if rule in ("epsilon", "zero", "gamma", "alpha_beta"):
        params["output"] = output
    return globals()[rule](R, a, spec, **params)


class LinearSpec(ConvSpec):
    """A dense layer ``a Wᵀ + b`` as a :class:`ConvSpec` with no spatial dims (``a``: (N, I)),
    so that the conv rule bodies serve Linear layers too."""

    __slots__ = ()

    def __init__(self, weight, bias, row_scale=None):
        super().__init__(weight, bias, (), (), (), False, (), 1, 0, row_scale=row_scale)

    def with_params(self, weight, bias, row_scale=None):
        return LinearSpec(weight, bias, row_scale)

    def fwd(self, x, weight, bias=None, groups=None):
        return F.linear(x, weight, bias)

    def bwd(self, grad, in_shape, weight, groups=None):
        return grad.matmul(weight)


_BODIES = {
    "zero": lambda p: _epsilon_body(1e-9),
    "epsilon": lambda p: _epsilon_body(p["epsilon"]),
    "gamma": lambda p: _gamma_body(p["gamma"], p["stabilizer"]),
    "alpha_beta": lambda p: _alpha_beta_body(p["alpha"], p["beta"], p["stabilizer"]),
    "z_plus": lambda p: _alpha_beta_body(1.0, 0.0, p["stabilizer"]),
    "flat": lambda p: _flat_body(p["stabilizer"]),
    "w_square": lambda p: _w_square_body(p["stabilizer"]),
    "z_box": lambda p: _z_box_body(p["stabilizer"]),
}
COEF_RULES = frozenset(("zero", "epsilon", "gamma", "alpha_beta", "z_plus"))


def rule_backward(rule, g, a, spec: ConvSpec, *, output, nonneg=False, low=None,
                  high=None, sign_check=True, **params):
    """One layer's rule for model-level code, on validated tensors (``a``: (N, C, *sp)), in
    the gradient×input frame: the relevance at the output is ``output ⊙ g``.

    For the rules of the form ``R_in = a⁺ ⊙ c⁺ + a⁻ ⊙ c⁻`` (``COEF_RULES``) returns the input
    coefficients ``(c⁺, c⁻)`` (``c⁻`` None when ``a ≥ 0``); for flat, w² and z^B, whose
    relevance is not a multiple of ``a``, returns ``(R_in, "relevance")``.  ``output`` is the
    layer's forward output (reused by ε, γ, αβ), or a list holding it as its one element: the
    rule takes it out, so that it is freed once the rule's coefficients are formed (before
    the transposed convolution) when the caller holds no other reference.  ``nonneg``
    promises ``a ≥ 0``.  ``sign_check=False``: for γ, an input not promised to be ``≥ 0``
    takes the path for inputs of both signs (right for any signs) without the pass over ``a``
    that would look for a negative value (model-level code, whose forward knows which inputs
    are ReLU outputs).
    """
    spec.known_nonneg, spec.sign_check = bool(nonneg), bool(sign_check)
    body = _BODIES[rule](params)
    coef = rule in COEF_RULES
    if not coef:
        output = _take(output)
    dtype = a.dtype
    if dtype in _LOW_PRECISION:
        g, a, spec = g.float(), a.float(), _float_spec(spec)
        output = [_take(output).float()] if isinstance(output, list) else output.float()
        low = low.float() if isinstance(low, torch.Tensor) else low
        high = high.float() if isinstance(high, torch.Tensor) else high
    with torch.no_grad():
        extra = ()
        if rule == "z_box":
            extra = _checks.bounds(low, high, a)
        ap = a
        if spec.pre_pad is not None:  # constant padding only: other modes pad outside the op
            pad, mode = spec.pre_pad
            ap = F.pad(a, pad, mode=mode)
            extra = tuple(_pad_bound(x, pad, mode) for x in extra)
        if coef:
            out = body(None, ap, spec, output, coef=True, g=g)
        elif body.needs_ones and spec.pre_pad is not None:
            sp = tuple(a.shape[2:])
            pad, mode = spec.pre_pad
            out = (body(output * g, ap, spec, output, lambda c: F.pad(
                torch.ones((1, c) + sp, dtype=a.dtype, device=a.device), pad, mode=mode)),)
        elif rule == "z_box":  # R = output ⊙ g inside the rule's one elementwise pass
            out = (body(None, ap, spec, output, *extra, g=g),)
        else:
            out = (body(output * g, ap, spec, output, *extra),)
        if spec.pre_pad is not None:
            pad = spec.pre_pad[0]
            sl = [slice(None), slice(None)]
            for d in range(spec.nd):
                lft, rgt = pad[2 * (spec.nd - 1 - d)], pad[2 * (spec.nd - 1 - d) + 1]
                sl.append(slice(lft, ap.shape[2 + d] - rgt))
            out = tuple(None if t is None else t[tuple(sl)] for t in out)
    out = tuple(None if t is None else t.to(dtype) for t in out)
    if coef:
        return out
    return out[0], "relevance"


def _same_per_sample(x):
    """Whether ``x`` (a bound of z^B) is a view broadcast over the batch: its first sample
    stands for all."""
    return x.dim() > 0 and x.shape[0] > 1 and x.stride(0) == 0


def _pad_bound(x, pad, mode):
    """A bound of z^B padded like the input; one sample's worth, broadcast again, when it is
    the same for every sample (a broadcast view)."""
    if _same_per_sample(x):
        return F.pad(x[:1], pad, mode=mode).expand((x.shape[0],) + (-1,) * (x.dim() - 1))
    return F.pad(x, pad, mode=mode)


def _hyper(stride, padding, dilation, groups, transposed, output_padding):
    return dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                transposed=transposed, output_padding=output_padding)


def _take(z):
    """The layer output handed to a rule body: a tensor, None, or a one-element list that this
    empties (see :func:`rule_backward`)."""
    return z.pop() if isinstance(z, list) else z


def _nonneg(a):
    return a.numel() == 0 or bool(a.amin() >= 0)


# ---------------------------------------------------------------------------------------------
# rule bodies: (R, a, spec, output, ...) -> R_in, all inside no_grad
# ---------------------------------------------------------------------------------------------
def _coef(rule, R, z, g, P=None, M=None, groups=1, **params):
    """The rule's output coefficients (one fused pass, ``lrp_ext::coefficients``) from the
    relevance ``R``, or from the gradient ``g`` (``R = z ⊙ g``) when ``R`` is None."""
    return _ops.coefficients(z, g if R is None else R, P, M, _table.COEF_KIND[rule], groups,
                             params.pop("e"), times_z=R is None, **params)


def _epsilon_body(e):
    def body(R, a, spec, z, coef=False, g=None):
        z = _take(z)
        if z is None:
            z = spec.fwd(a, spec.weight, spec.bias)
        c = _coef("epsilon", R, z, g, e=e)
        del z
        c = spec.bwd(c, (c.shape[0],) + tuple(a.shape[1:]), spec.weight)
        return (c, None) if coef else a * c
    body.needs_ones = False
    return body


def _kept(spec, name, make):
    """``make()``, or what it returned on an earlier call for this spec (``spec.keep``)."""
    keep = spec.keep
    if keep is None:
        return make()
    v = keep.get(name)
    if v is None:
        v = keep[name] = make()
    return v


def _signed(spec):
    """The spec's :class:`_SignedWeights` (built lazily; kept across calls with ``spec.keep``)."""
    return _kept(spec, "signed", lambda: _SignedWeights(spec))


class _SignedWeights:
    """``W⁺``/``W⁻`` and their block stacks, each built at most once per call.

    For non-transposed layers with the compiled ops, ``lrp_ext::signed_weights`` forms them in
    one pass over the unmerged weight (``spec.raw_weight``, ``spec.row_scale``), so a merged
    BatchNorm's weight is never formed; ``W⁺``/``W⁻`` are then views or copies of the stack.
    """

    def __init__(self, spec):
        self.spec = spec
        self._pm = self._wp = self._wn = None
        self._fused = not spec.transposed and _ops.has_model_ops(spec.raw_weight)

    def pm(self):
        """``[[W⁺], [W⁻]]`` (two output blocks): one allocation, one or two passes."""
        if self._pm is None:
            spec = self.spec
            if self._fused:
                self._pm = torch.ops.lrp_ext.signed_weights(spec.raw_weight, spec.row_scale,
                                                            spec.groups, True)
            else:
                L = spec.logical(spec.weight)
                S = torch.empty((L.shape[0], 2, L.shape[1], 1) + tuple(L.shape[2:]),
                                dtype=L.dtype, device=L.device)
                torch.clamp(L, min=0, out=S[:, 0, :, 0])
                torch.clamp(L, max=0, out=S[:, 1, :, 0])
                self._pm = spec.physical(S)
            if not spec.transposed and spec.groups == 1:
                O = spec.raw_weight.shape[0]
                self._wp, self._wn = self._pm[:O], self._pm[O:]
        return self._pm

    def _half(self, i):
        """``W⁺`` (0) or ``W⁻`` (1) out of the stack (non-transposed layers)."""
        pm, O, g = self.pm(), self.spec.raw_weight.shape[0], self.spec.groups
        return pm.reshape(g, 2, O // g, *pm.shape[1:])[:, i].reshape(O, *pm.shape[1:])

    def wp(self):
        if self._wp is None:
            spec = self.spec
            if self._pm is not None and not spec.transposed:
                self._wp = self._half(0)
            elif self._fused:  # W⁺ alone (z⁺ on a ≥ 0)
                self._wp = torch.ops.lrp_ext.signed_weights(spec.raw_weight, spec.row_scale,
                                                            spec.groups, False)
            else:
                self._wp = spec.weight.clamp(min=0)
        return self._wp

    def wn(self):
        if self._wn is None:
            if self._fused or (self._pm is not None and not self.spec.transposed):
                self._wn = self._half(1)
            else:
                self._wn = self.spec.weight.clamp(max=0)
        return self._wn


def _pm(a, spec, sw, nonneg, output, need_m=True):
    """P = Σ(aW)⁺ + b⁺ and M = Σ(aW)⁻ + b⁻ (as (N, g, O/g, *sp) views); M may be None."""
    b = spec.bias
    if _blocks(spec, nonneg) and not (nonneg and (output is not None or not need_m)):
        return _pm_blocks(a, spec, sw, nonneg, output, need_m)
    if nonneg and (output is not None or not need_m):
        P = spec.fwd(a, sw.wp(), None if b is None else b.clamp(min=0))
        M = None
        if need_m:
            M = spec.grouped(output - P)
        return spec.grouped(P), M
    if nonneg:
        bb = None if b is None else spec.stack_bias([b.clamp(min=0), b.clamp(max=0)])
        y = spec.split(spec.fwd(a, sw.pm(), bb), 2)
        return y[:, :, 0], y[:, :, 1]
    Wp, Wn = sw.wp(), sw.wn()
    x = spec.stack_inputs([a.clamp(min=0), a.clamp(max=0)])
    if output is not None or not need_m:
        w = spec.stack_weights([[Wp, Wn]])
        P = spec.fwd(x, w, None if b is None else b.clamp(min=0))
        M = None if not need_m else spec.grouped(output - P)
        return spec.grouped(P), M
    w = spec.stack_weights([[Wp, Wn], [Wn, Wp]])
    bb = None if b is None else spec.stack_bias([b.clamp(min=0), b.clamp(max=0)])
    y = spec.split(spec.fwd(x, w, bb), 2)
    return y[:, :, 0], y[:, :, 1]


def _blocks(spec, nonneg):
    """One convolution (matmul) per weight block instead of one over stacked blocks: for
    grouped convolutions (stacking doubles each group's channels and takes depthwise
    convolutions off their own kernels) and for Linear layers with mixed-sign inputs (the
    stacked block weights are copies of the weight: vit_b_16 with γ on its linear layers,
    4.2× → 2.7× gradient×input).  Convolutions with groups = 1 and mixed-sign inputs measured
    alike both ways and stay stacked."""
    return spec.groups > 1 or (not nonneg and isinstance(spec, LinearSpec))


def _pm_blocks(a, spec, sw, nonneg, output, need_m):
    """:func:`_pm` for grouped convolutions with one convolution per weight block: stacking
    blocks would double each group's channels and take depthwise convolutions off their own
    kernels."""
    b = spec.bias
    bp = None if b is None else b.clamp(min=0)
    bn = None if b is None else b.clamp(max=0)
    Wp, Wn = sw.wp(), sw.wn()
    if nonneg:
        P, M = spec.fwd(a, Wp, bp), (spec.fwd(a, Wn, bn) if need_m else None)
    else:
        ap, an = a.clamp(min=0), a.clamp(max=0)
        P = spec.fwd(ap, Wp, bp).add_(spec.fwd(an, Wn))
        M = None
        if need_m and output is None:
            M = spec.fwd(ap, Wn, bn).add_(spec.fwd(an, Wp))
    if need_m and M is None:
        M = output - P
    return spec.grouped(P), None if M is None else spec.grouped(M)


def _backward_blocks(cp, cn, a, spec, sw, nonneg, coef, N):
    """:func:`_backward_pm` for grouped convolutions, one transposed convolution per block."""
    a_shape = (N,) + tuple(a.shape[1:])
    Wp = sw.wp()

    def T(c, w):
        return spec.bwd(c.reshape((N, -1) + tuple(c.shape[3:])), a_shape, w)
    if isinstance(cn, str):  # [c⁺; c⁻] stacked: t1 = c⁺W⁺ + c⁻W⁻, t2 = c⁻W⁺ + c⁺W⁻
        Wn = sw.wn()
        c_p, c_n = cp[:, :, 0], cp[:, :, 1]
        t1 = T(c_p, Wp).add_(T(c_n, Wn))
        t2 = None if nonneg else T(c_n, Wp).add_(T(c_p, Wn))
    else:
        t1 = T(cp, Wp)
        t2 = None if nonneg else T(cp, sw.wn())
    if coef:
        return t1, t2
    return a * t1 if nonneg else a.clamp(min=0) * t1 + a.clamp(max=0) * t2


def _weight_bound(spec, out):
    """Whether a layer's weight outweighs its output ``out`` (deep convolutions at a small
    batch, dense layers): its backward on ``a ≥ 0`` then runs as two transposed convolutions
    instead of one over the stacked ``[W⁺; W⁻]``, so that oneDNN's reordered copy of the
    weight it works on is ``W``'s size, not twice that: ``c⁻∗W + (c⁺ − c⁻)∗W⁺``
    (= ``c⁺∗W⁺ + c⁻∗W⁻``) with the layer's own ``W``, only ``W⁺`` built (for a merged
    BatchNorm's ``diag(s)·W`` the raw ``W`` with ``s c⁻``: one weight-sized write per call,
    not two).  Such layers ran as fast both ways (a 512×512×3×3 conv at 14² and 28², batch 1
    and 8); where the output is larger the stacked convolution is faster (1.2–1.3× at 64
    channels, 224²), and so it is for small weights (under ``_SPLIT_MIN`` values:
    densenet121's 3×3 convs at batch 1 ran 4 % slower split), where the copies are small
    anyway."""
    n = spec.raw_weight.numel()
    return spec.groups == 1 and not spec.transposed and n >= _SPLIT_MIN and n >= out.numel()


_SPLIT_MIN = 1 << 18


_CHUNK_BYTES = 32 << 20


def _bwd_in_chunks(spec, G, in_shape, w):
    """``spec.bwd(G, in_shape, w)`` over chunks of samples of at most ``_CHUNK_BYTES`` of
    ``G`` each (at least one sample): the convolution's own copies of its input and output
    (oneDNN reorders both to its blocked layout) are then a chunk's size, not the batch's, for
    one copy of the result (vgg16 with γ at batch 8: peak memory 1.40 → 1.16× gradient×input's
    at about the same time)."""
    N = G.shape[0]
    step = max(1, _CHUNK_BYTES // max(1, G[0].numel() * G.element_size()))
    if N <= step:
        return spec.bwd(G, in_shape, w)
    out = G.new_empty(in_shape)
    for n0 in range(0, N, step):
        n1 = min(N, n0 + step)
        out[n0:n1] = spec.bwd(G[n0:n1], (n1 - n0,) + tuple(in_shape[1:]), w)
    return out


def _backward_pm(cp, cn, a, spec, sw, nonneg, coef=False, split=False):
    """``a⁺ ⊙ T(c⁺ on W⁺ + c⁻ on W⁻) + a⁻ ⊙ T(c⁻ on W⁺ + c⁺ on W⁻)``; ``cn`` may be None.

    ``cp`` is (N, g, O/g, *sp), or the stacked ``[c⁺; c⁻]`` buffer (N, g, 2, O/g, *sp) when
    ``cn`` is ``"stacked"`` (then ``split``: see :func:`_weight_bound`).  ``coef=True``
    returns the input coefficients instead, ``(T(...) for a⁺, T(...) for a⁻)`` (the second
    None when ``a ≥ 0``; both may be grouped views (N, g, C/g, *sp)): the relevance is
    ``a⁺ ⊙ first + a⁻ ⊙ second``.
    """
    N = cp.shape[0]  # K·N when the coefficients hold K gradients of one forward (coef only)
    if _blocks(spec, nonneg):
        return _backward_blocks(cp, cn, a, spec, sw, nonneg, coef, N)
    a_shape = (N,) + tuple(a.shape[1:])
    if isinstance(cn, str):
        G, kO = cp.reshape(N, -1, *cp.shape[4:]), 2
    else:
        G, kO = cp.reshape(N, -1, *cp.shape[3:]), 1
    if kO == 1:
        if nonneg:
            c = spec.bwd(G, a_shape, sw.wp())
            return (c, None) if coef else a.mul(c)
        x_shape = (N, 2 * a.shape[1]) + tuple(a.shape[2:])
        y = spec.split(spec.bwd(G, x_shape, spec.stack_weights([[sw.wp(), sw.wn()]])), 2)
    elif nonneg and split:  # two transposed convolutions, the coefficients not stacked
        c_p, c_n = cp[:, 0, 0], cp[:, 0, 1]
        # c⁻∗W + (c⁺ − c⁻)∗W⁺: the layer's own W, only W⁺ built; for a merged weight
        # diag(s)·W the scale moves to the coefficients, c⁻∗(sW) = (s c⁻)∗W, on the raw W
        rs = spec.row_scale
        c_w = c_n if rs is None else c_n * rs.reshape((-1,) + (1,) * (c_n.dim() - 2))
        c = spec.bwd(c_w, a_shape, spec.raw_weight).add_(spec.bwd(c_p - c_n, a_shape, sw.wp()))
        return (c, None) if coef else c.mul_(a)
    elif nonneg:
        c = _bwd_in_chunks(spec, G, a_shape, sw.pm())
        return (c, None) if coef else c.mul_(a)
    else:
        Wp, Wn = sw.wp(), sw.wn()
        x_shape = (N, 2 * a.shape[1]) + tuple(a.shape[2:])
        y = spec.split(spec.bwd(G, x_shape, spec.stack_weights([[Wp, Wn], [Wn, Wp]])), 2)
    if coef:  # views (N, g, C/g, *sp): the caller combines them with a's signs
        return y[:, :, 0], y[:, :, 1]
    ag = spec.grouped(a)
    return (ag.clamp(min=0) * y[:, :, 0] + ag.clamp(max=0) * y[:, :, 1]).reshape(a.shape)


def _signed_sums(a, spec, sw, nonneg, z, need_m):
    """``P``, ``M`` (None when ``z`` is given or not needed) and ``z``, in the output's layout."""
    P, M = _pm(a, spec, sw, nonneg, z, need_m=need_m and z is None)
    shape = (P.shape[0], P.shape[1] * P.shape[2]) + tuple(P.shape[3:])
    P = P.reshape(shape)
    M = None if M is None else M.reshape(shape)
    if z is None and M is not None:
        z = P + M
    return P, M, z


def _gamma_mixed(R, a, spec, z, g, gam, e, coef):
    """γ for an input of both signs in four convolution units instead of seven.

    With ``u = a∗W`` (so ``z = u + b``) and ``S = |a|∗|W| + |b|`` (one convolution, ``|b|`` as
    its bias), the sums of the products' positive and negative parts with the bias's are
    ``P = ½(z + S)`` and ``M = ½(z − S)``.  The backward's sums for ``a⁺`` and ``a⁻``,
    ``t₁ = c⁺∗W⁺ + c⁻∗W⁻`` and ``t₂ = c⁻∗W⁺ + c⁺∗W⁻``, are ``A ± B`` with
    ``A = ½(c⁺ + c⁻)∗W`` and ``B = ½(c⁺ − c⁻)∗|W|``: two transposed convolutions.  The rule
    reads ``P`` only where ``z > 0`` and ``M`` only where ``z < 0``, where neither is a
    difference of nearly equal terms; their rounding is that of ``z`` itself (of the order of
    ``ε·S``).  The elementwise work is two fused passes: ``lrp_ext::coefficients`` (kind
    ``gamma_mixed``: P, M, the rule and the two halves) and ``lrp_ext::sign_sum`` (``A ± B`` by
    the sign of ``a``).
    """
    W, b = spec.weight, spec.bias
    Wabs = _kept(spec, "abs", W.abs)
    z = _take(z)
    if z is None:
        z = spec.fwd(a, W, b)
    S = spec.fwd(a.abs(), Wabs, None if b is None else b.abs())
    C = _coef("gamma_mixed", R, z, g, S, None, e=e, gamma=gam)  # (2, K·N, O, *sp)
    del S, z
    a_shape = (C.shape[1],) + tuple(a.shape[1:])
    A = spec.bwd(C[0], a_shape, W)
    B = spec.bwd(C[1], a_shape, Wabs)
    del C
    # the gradient at a: t₁ where a ≥ 0, t₂ where a < 0 (K stacked gradients of one forward:
    # A and B hold K·N samples against a's N)
    g_in = _ops.sign_sum(A, B, a)
    del A, B
    if coef:  # already the gradient: one coefficient, as for an input known to be >= 0
        return g_in, None
    return a * g_in


def _gamma_body(gam, e):
    def body(R, a, spec, z, coef=False, g=None):
        nonneg = spec.known_nonneg or (spec.sign_check and _nonneg(a))
        if not nonneg:
            return _gamma_mixed(R, a, spec, z, g, gam, e, coef)
        sw = _signed(spec)
        split = _weight_bound(spec, g if R is None else R)
        if not split:  # the stack first: W⁺ and W⁻ are views of it
            sw.pm()
        P, M, z = _signed_sums(a, spec, sw, nonneg, _take(z), need_m=True)
        G = _coef("gamma", R, z, g, P, M, spec.groups, e=e, gamma=gam)
        del P, M, z
        return _backward_pm(G, "stacked", a, spec, sw, nonneg, coef, split)
    body.needs_ones = False
    return body


def _alpha_beta_body(alpha, beta, e):
    def body(R, a, spec, z, coef=False, g=None):
        nonneg = spec.known_nonneg or _nonneg(a)
        need_m = beta != 0
        sw = _signed(spec)
        split = nonneg and need_m and _weight_bound(spec, g if R is None else R)
        if need_m and not split and (nonneg or sw._fused):
            sw.pm()
        z = _take(z)
        if not need_m:  # z⁺: P only (z only forms R = z ⊙ g; with R given it gives a shape)
            P, _, _ = _signed_sums(a, spec, sw, nonneg, z, need_m=False)
            c = _coef("z_plus", R, R if z is None else z, g, P, e=e, alpha=alpha)
            del P, z
            return _backward_pm(spec.grouped(c), None, a, spec, sw, nonneg, coef)
        P, M, z = _signed_sums(a, spec, sw, nonneg, z, need_m=True)
        G = _coef("alpha_beta", R, z, g, P, M, spec.groups, e=e, alpha=alpha, beta=beta)
        del P, M, z
        return _backward_pm(G, "stacked", a, spec, sw, nonneg, coef, split)
    body.needs_ones = False
    return body


def _ones_fn(a):
    return lambda c: torch.ones((1, c) + tuple(a.shape[2:]), dtype=a.dtype, device=a.device)


def _flat_body(e):
    def body(R, a, spec, z, ones=None):
        g = spec.groups
        Cg = a.shape[1] // g
        k = spec.weight.shape[2:]
        ones_w = torch.ones((g, 1) + tuple(k), dtype=a.dtype, device=a.device)
        ones_x = (ones or _ones_fn(a))(g)
        cnt = spec.fwd(ones_x, ones_w, groups=g) * Cg  # (1, g, *out_sp): receptive-field counts
        s = spec.grouped(R) / _stab(cnt, e).unsqueeze(2)  # (N, g, O/g, *sp)
        s = s.sum(dim=2)  # (N, g, *sp): every output of a group sees the same ones-kernel
        back = spec.bwd(s, (a.shape[0], g) + tuple(a.shape[2:]), ones_w, groups=g)
        return back.unsqueeze(2).expand(a.shape[0], g, Cg, *a.shape[2:]).reshape(a.shape)
    body.needs_ones = True
    return body


def _w_square_body(e):
    def body(R, a, spec, z, ones=None):
        W2 = spec.weight * spec.weight
        b2 = None if spec.bias is None else spec.bias * spec.bias
        zz = spec.fwd((ones or _ones_fn(a))(a.shape[1]), W2, b2)  # the same for every sample
        s = R / _stab(zz, e)
        return spec.bwd(s, a.shape, W2)
    body.needs_ones = True
    return body


def _z_box_body(e):
    def body(R, a, spec, z, low, high, g=None):
        W = spec.weight
        Wp, Wn = W.clamp(min=0), W.clamp(max=0)
        # z = a∗W − (low∗W⁺ + high∗W⁻) (the bias cancels); the bounds' part once for all
        # samples when they are the same for every sample (numbers, per-channel or per-pixel
        # bounds: broadcast views), not at the batch's size
        if _same_per_sample(low) and _same_per_sample(high):
            low, high = low[:1], high[:1]
        zz = spec.fwd(a, W).sub_(spec.fwd(spec.stack_inputs([low, high]),
                                          spec.stack_weights([[Wp, Wn]])))
        s = _coef("z_plus", R, R if z is None else z, g, zz, e=e, alpha=1.0)  # R / stab(zz)
        del zz
        x_shape = (s.shape[0], 3 * a.shape[1]) + tuple(a.shape[2:])
        y = spec.split(spec.bwd(s, x_shape, spec.stack_weights([[W, Wp, Wn]])), 3)
        ag, lg, hg = spec.grouped(a), spec.grouped(low), spec.grouped(high)
        return (ag * y[:, :, 0] - lg * y[:, :, 1] - hg * y[:, :, 2]).reshape(a.shape)
    body.needs_ones = False
    return body


# ---------------------------------------------------------------------------------------------
# public rules
# ---------------------------------------------------------------------------------------------
@_checks.traceable
def epsilon(R, a, layer, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
            transposed=False, output_padding=0,
            epsilon: float = _d("epsilon", "epsilon"), output=None):
    """LRP-ε for a convolution: ``s = R / stab(conv(a) + b, ε)``, ``R_in = a ⊙ convᵀ(s)``."""
    e = _checks.stabilizer(epsilon, "epsilon")
    return _run("epsilon", R, a, layer, bias,
                _hyper(stride, padding, dilation, groups, transposed, output_padding),
                _epsilon_body(e), output)


@_checks.traceable
def zero(R, a, layer, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
         transposed=False, output_padding=0, output=None):
    """LRP-0 for a convolution: LRP-ε with ε = 1e-9."""
    return _run("zero", R, a, layer, bias,
                _hyper(stride, padding, dilation, groups, transposed, output_padding),
                _epsilon_body(1e-9), output)


@_checks.traceable
def gamma(R, a, layer, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
          transposed=False, output_padding=0, gamma: float = _d("gamma", "gamma"),
          stabilizer: float = _d("gamma", "stabilizer"),
          output=None):
    """Sign-generalised LRP-γ for a convolution."""
    g = _checks.finite(gamma, "gamma")
    e = _checks.stabilizer(stabilizer, "stabilizer")
    return _run("gamma", R, a, layer, bias,
                _hyper(stride, padding, dilation, groups, transposed, output_padding),
                _gamma_body(g, e), output)


@_checks.traceable
def alpha_beta(R, a, layer, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
               transposed=False, output_padding=0, alpha: float = _d("alpha_beta", "alpha"),
               beta: float = _d("alpha_beta", "beta"),
               stabilizer: float = _d("alpha_beta", "stabilizer"), output=None):
    """LRP-αβ for a convolution (α ≥ 0, β ≥ 0, α − β = 1, else ``ValueError``)."""
    alpha, beta = _checks.alpha_beta(alpha, beta)
    e = _checks.stabilizer(stabilizer, "stabilizer")
    return _run("alpha_beta", R, a, layer, bias,
                _hyper(stride, padding, dilation, groups, transposed, output_padding),
                _alpha_beta_body(alpha, beta, e), output)


@_checks.traceable
def z_plus(R, a, layer, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
           transposed=False, output_padding=0, stabilizer: float = _d("z_plus", "stabilizer")):
    """LRP-z⁺ for a convolution (LRP-αβ with α = 1, β = 0)."""
    e = _checks.stabilizer(stabilizer, "stabilizer")
    return _run("z_plus", R, a, layer, bias,
                _hyper(stride, padding, dilation, groups, transposed, output_padding),
                _alpha_beta_body(1.0, 0.0, e))


@_checks.traceable
def flat(R, a, layer, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
         transposed=False, output_padding=0, stabilizer: float = _d("flat", "stabilizer")):
    """Flat rule for a convolution: input and weight replaced by ones, bias dropped."""
    e = _checks.stabilizer(stabilizer, "stabilizer")
    return _run("flat", R, a, layer, bias,
                _hyper(stride, padding, dilation, groups, transposed, output_padding),
                _flat_body(e))


@_checks.traceable
def w_square(R, a, layer, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
             transposed=False, output_padding=0, stabilizer: float = _d("w_square", "stabilizer")):
    """LRP-w² for a convolution: input replaced by ones, ``z = conv(1, W²) + b²``."""
    e = _checks.stabilizer(stabilizer, "stabilizer")
    return _run("w_square", R, a, layer, bias,
                _hyper(stride, padding, dilation, groups, transposed, output_padding),
                _w_square_body(e))


@_checks.traceable
def z_box(R, a, layer, bias=None, *, low=None, high=None, stride=1, padding=0, dilation=1,
          groups=1, transposed=False, output_padding=0,
          stabilizer: float = _d("z_box", "stabilizer")):
    """LRP-z^B for a convolution (input layer); the bias cancels and is ignored."""
    e = _checks.stabilizer(stabilizer, "stabilizer")
    if isinstance(a, torch.Tensor):
        nd_a = a
        spec_nd = None
        if isinstance(layer, _CONV_TYPES):
            spec_nd = layer.weight.dim() - 2
        elif isinstance(layer, torch.Tensor):
            spec_nd = layer.dim() - 2
        elif isinstance(layer, ConvSpec):
            spec_nd = layer.nd
        if spec_nd is not None and a.dim() == spec_nd + 1:
            nd_a = a.unsqueeze(0)
        low_, high_ = _checks.bounds(low, high, nd_a)
    else:
        low_ = high_ = None
    return _run("z_box", R, a, layer, bias,
                _hyper(stride, padding, dilation, groups, transposed, output_padding),
                _z_box_body(e), None, (low_, high_))
