"""Autograd functions of the gradient×input frame.

The backward of the explained forward carries a modified gradient ``g``; the relevance of any
tensor ``t`` is ``t ⊙ g``.  Each op whose rule differs from its plain gradient is one
:class:`RuleFn` node whose backward is a handler's ``backward(g)``; every other op keeps its
plain gradient, which is already the rule in this frame (views, indexing, concatenation,
residual sums, pooling, scaling by constants).

Several targets of one forward: the backward runs once under ``torch.func.vmap`` over K output
gradients.  Autograd's own nodes batch by their vmap rules; a :class:`RuleFn` unwraps the batched
gradient and hands its node ``g`` with a leading K dim (``lead()`` is then ``(K,)``): the rules
run once at batch K·N on the forward's tensors of batch N.
"""
from __future__ import annotations

import threading

import torch

from .. import conv as _conv
from .. import ops as _ops
from .._table import COEF_KIND

__all__ = ["RuleFn", "InplaceRuleFn", "apply", "apply_inplace", "safe_div", "ratio_grad",
           "proportional", "Subgraph", "lead", "sum_to"]

_functorch = torch._C._functorch
_LOCAL = threading.local()


def lead():
    """The leading dims of the gradient a node's backward gets: ``(K,)`` inside a batched
    backward over K targets, else ``()``."""
    return getattr(_LOCAL, "lead", ())


def sum_to(t, shape):
    """``t`` summed to ``shape`` (a forward tensor's shape) keeping the leading dims."""
    return t.sum_to_size(lead() + tuple(shape))


class RuleFn(torch.autograd.Function):
    """``forward`` returns ``node.value`` (computed before); ``backward`` asks ``node``."""

    @staticmethod
    def forward(ctx, node, *inputs):
        ctx.node = node
        out = node.value
        node.value = None
        return out

    @staticmethod
    def backward(ctx, g):
        node = ctx.node
        ctx.node = None  # one backward: the node's tensors go with it
        if not _functorch.is_batchedtensor(g):
            return (None,) + tuple(node.backward(g))
        level = _functorch.maybe_get_level(g)
        gu, bdim = _functorch._unwrap_batched(g, level)
        gu = gu.movedim(bdim, 0)
        _LOCAL.lead = gu.shape[:1]
        try:
            grads = node.backward(gu)
        finally:
            _LOCAL.lead = ()
        return (None,) + tuple(None if v is None else _functorch._add_batch_dim(v, 0, level)
                               for v in grads)


def apply(node, inputs, value):
    """Connect ``value`` (already computed, no history) to ``inputs`` through ``node``."""
    node.value = value.detach()
    return RuleFn.apply(node, *inputs)


class InplaceRuleFn(RuleFn):
    """``forward`` runs ``node.value`` (an in-place function) on ``x`` and marks ``x`` dirty:
    ``x`` itself becomes the output, with ``node``'s backward as its gradient (to ``x`` and to
    the function's other input-dependent operands)."""

    @staticmethod
    def forward(ctx, node, x, *others):
        ctx.node = node
        fn, node.value = node.value, None
        fn(x)
        ctx.mark_dirty(x)
        return x


def apply_inplace(node, x, fn, others=()):
    """``fn(x)`` changes ``x`` in place (an in-place activation, ``x += y``); connect the new
    ``x`` to the old one (and to ``others``, the tensors ``fn`` reads) through ``node``: one
    pass over ``x``, no copy of the result."""
    node.value = fn
    return InplaceRuleFn.apply(node, x, *others)


def safe_div(num, den):
    """``num / den`` with 0 where ``den == 0`` (one fused pass, ``lrp_ext::safe_ratio``, for
    tensors of one shape)."""
    if num.shape == den.shape and num.dtype == den.dtype and num.device == den.device and \
            _ops.has_model_ops(den) and not (torch.is_grad_enabled() and
                                             (num.requires_grad or den.requires_grad)):
        with torch._C.DisableTorchFunction():  # the engine's arithmetic, not the model's
            return torch.ops.lrp_ext.safe_ratio(num, den)
    zero = den == 0
    out = num / torch.where(zero, torch.ones((), dtype=den.dtype, device=den.device), den)
    return out.masked_fill(zero, 0)


def ratio_grad(g, y, x):
    """``g ⊙ y / x`` (0 where ``x == 0``), the identity rule's gradient; ``g`` of ``x``'s shape
    or with leading dims (several targets).  One fused pass (``lrp_ext::safe_ratio`` with g)."""
    if x.dim() and y.shape == x.shape and g.dtype == x.dtype == y.dtype and \
            g.device == x.device and g.shape[g.dim() - x.dim():] == x.shape and \
            _ops.has_model_ops(x) and not (torch.is_grad_enabled() and g.requires_grad):
        with torch._C.DisableTorchFunction():
            return torch.ops.lrp_ext.safe_ratio(y, x, g.reshape((-1,) + tuple(x.shape[1:]))
                                                ).reshape(g.shape)
    return g * safe_div(y, x)


def proportional(g, y, e):
    """``g ⊙ y / stab(y, e)``, the gradient of the proportional (ε) rule at an op's output ``y``
    (0 where ``stab(y) == 0``, possible only for ``e == 0``); one fused pass for ``e > 0``."""
    k = g.dim() - y.dim()  # leading dims of g (several targets)
    if e > 0 and g.shape[k:] == y.shape and y.dim() >= 1 and k <= 1:
        return _ops.coefficients(y.reshape(1, -1), g.reshape(g.shape[0] if k else 1, -1), None,
                                 None, COEF_KIND["epsilon"], 1, e).reshape(g.shape)
    return g * safe_div(y, _conv._stab(y, e))


class Subgraph:
    """A private autograd graph of one op over detached copies of its dependent inputs.

    ``run(fn, inputs)`` computes ``fn(*leaves)`` with grad enabled and keeps the graph, so the
    op's own backward (cuDNN, flash attention, ...) serves the rule; ``grad(g)`` is its
    vector-Jacobian product, one entry per input (zeros where an input is not reached).
    """

    __slots__ = ("leaves", "out")

    def run(self, fn, inputs):
        self.leaves = [t.detach().requires_grad_(True) for t in inputs]
        with torch.enable_grad():
            self.out = fn(*self.leaves)
        return self.out.detach()

    def grad(self, g):
        if lead():  # K targets: one vector-Jacobian product each, stacked
            per = [self._vjp(g[k], retain=k + 1 < g.shape[0]) for k in range(g.shape[0])]
            out = [torch.stack(vs) for vs in zip(*per)]
        else:
            out = self._vjp(g, retain=False)
        self.leaves = self.out = None
        return out

    def _vjp(self, g, retain):
        got = torch.autograd.grad(self.out, self.leaves, g, allow_unused=True,
                                  retain_graph=retain)
        return [torch.zeros_like(lf) if v is None else v for lf, v in zip(self.leaves, got)]
