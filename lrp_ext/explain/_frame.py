"""Autograd functions of the gradient×input frame.

The backward of the explained forward carries a modified gradient ``g``; the relevance of any
tensor ``t`` is ``t ⊙ g``.  Each op whose rule differs from its plain gradient is one
:class:`RuleFn` node whose backward is a handler's ``backward(g)``; every other op keeps its
plain gradient, which is already the rule in this frame (views, indexing, concatenation,
residual sums, pooling, scaling by constants).
"""
from __future__ import annotations

import torch

from .. import conv as _conv
from .. import ops as _ops
from .._table import COEF_KIND

__all__ = ["RuleFn", "apply", "safe_div", "proportional", "Subgraph"]


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
        grads = node.backward(g)
        ctx.node = None  # one backward: the node's tensors go with it
        return (None,) + tuple(grads)


def apply(node, inputs, value):
    """Connect ``value`` (already computed, no history) to ``inputs`` through ``node``."""
    node.value = value.detach()
    return RuleFn.apply(node, *inputs)


def safe_div(num, den):
    """``num / den`` with 0 where ``den == 0``."""
    zero = den == 0
    out = num / torch.where(zero, torch.ones((), dtype=den.dtype, device=den.device), den)
    return out.masked_fill(zero, 0)


def proportional(g, y, e):
    """``g ⊙ y / stab(y, e)``, the gradient of the proportional (ε) rule at an op's output ``y``
    (0 where ``stab(y) == 0``, possible only for ``e == 0``); one fused pass for ``e > 0``."""
    if e > 0 and y.shape == g.shape and y.dim() >= 1:
        flat = (1, -1)
        return _ops.coefficients(y.reshape(flat), g.reshape(flat), None, None,
                                 COEF_KIND["epsilon"], 1, e).reshape(y.shape)
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
        got = torch.autograd.grad(self.out, self.leaves, g, allow_unused=True)
        out = [torch.zeros_like(lf) if v is None else v for lf, v in zip(self.leaves, got)]
        self.leaves = self.out = None
        return out
