"""Model-level LRP: ``explain(model, inputs, target)`` -> relevance at the inputs.

How it works
------------
The model's own eager forward runs once under a ``TorchFunctionMode`` (``_record``): whatever
its Python control flow, every torch function it calls passes through ``_ops.dispatch``.  Ops
whose LRP rule differs from their plain gradient (Linear/conv layers, BatchNorm, activations,
products of two input-dependent tensors, norms, attention) return their usual value connected
to their inputs through an autograd node whose backward is the rule; all other ops keep their
autograd gradient.  One ``torch.autograd.grad`` then carries a modified gradient ``g`` from the
output back to the inputs: the relevance of any tensor ``t`` is ``t ⊙ g`` (the gradient×input
frame), so moving, copying, summing and rescaling ops are exact with their plain gradient.

Rules come from the composite by module (a layer's module is the owner of its weight: module
name, type, first layer in execution order); functional calls with a module's parameters get
that module's rule.  The model is not modified: no hooks or attributes are left on it, its
parameters and buffers are unchanged (a buffer the forward changes is restored), also when
explain raises; threads may share a model.
"""
from __future__ import annotations

import threading
import warnings

import torch

from .. import composite as _comp
from ._frame import safe_div
from ._ops import UncoveredOp, dispatch, identity_rule
from ._prepared import Prepared
from ._record import Meta, Recorder, RecordMode, current

__all__ = ["explain", "Explainer", "UncoveredOp"]

_HOOK_LOCK = threading.Lock()
_HOOKS = {"count": 0, "handles": None}


def _pre_hook(module, args):
    rec = current()
    if rec is not None:
        name = rec.names.get(id(module))
        if name is not None:
            rec.module_stack.append((name, module))


def _post_hook(module, args, out):
    rec = current()
    if rec is None:
        return None
    name = rec.names.get(id(module))
    if name is None:
        return None
    if rec.module_stack and rec.module_stack[-1][1] is module:
        rec.module_stack.pop()
    new = None
    if isinstance(out, torch.Tensor) and rec.meta(out) is not None and not module._parameters:
        new = _module_rule(rec, name, module, args, out)
        if new is not None:
            out = new
    if name in rec.at and isinstance(out, torch.Tensor) and rec.meta(out) is not None:
        rec.at_out[name] = out
    return new


def _module_rule(rec, name, module, args, out):
    """A parameter-free module mapped to ``Pass`` by the caller's composite: the identity
    rule over the whole module (``g_in = g · y / x``), whatever ops it runs inside."""
    rule = rec.comp.user_rule(name, module)
    if rule is None and type(module).__module__.startswith(_ACTIVATION_MODULES):
        rule = _comp.Pass()  # an activation of a model library: one elementwise function
    if rule is None or rule.name != "pass":
        return None
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or rec.meta(x) is None or x is out:
        return None
    if tuple(x.shape) != tuple(out.shape):
        raise ValueError(f"explain: rule Pass at module '{name}' ({type(module).__name__}) "
                         f"needs equal input and output shapes, got {tuple(x.shape)} -> "
                         f"{tuple(out.shape)}")
    return identity_rule(rec, x, out.detach(), Meta(nonlin=True, linear=False))


# modules of these libraries' activation files are elementwise functions of one tensor, however
# they compute it (tanh-GELU, QuickGELU, ...): the identity rule over the whole module
_ACTIVATION_MODULES = ("transformers.activations", "timm.layers.activations",
                       "timm.models.layers.activations")


class _ModuleHooks:
    """Process-wide module hooks, present only while some explain runs; they act only for
    the thread whose explain installed a recorder (module stack for messages, ``at=``)."""

    def __enter__(self):
        with _HOOK_LOCK:
            if _HOOKS["count"] == 0:
                m = torch.nn.modules.module
                _HOOKS["handles"] = (m.register_module_forward_pre_hook(_pre_hook),
                                     m.register_module_forward_hook(_post_hook))
            _HOOKS["count"] += 1
        return self

    def __exit__(self, *exc):
        with _HOOK_LOCK:
            _HOOKS["count"] -= 1
            if _HOOKS["count"] == 0:
                for h in _HOOKS["handles"]:
                    h.remove()
                _HOOKS["handles"] = None
        return False


class _BufferGuard:
    """Buffers as they were before the forward, put back after it (values and objects)."""

    def __init__(self, modules):
        self.saved = []
        for mod in modules:
            for name, buf in mod._buffers.items():
                if buf is not None:
                    self.saved.append((mod, name, buf, buf._version, buf.detach().clone()))

    def restore(self):
        with torch.no_grad():
            for mod, name, buf, version, copy in self.saved:
                if mod._buffers.get(name) is not buf:
                    mod._buffers[name] = buf
                if buf._version != version:
                    buf.copy_(copy)


def _select(out, output):
    if output is not None:
        if not callable(output):
            raise TypeError(f"explain: output must be a callable mapping the model's output to "
                            f"a tensor, got {type(output).__name__}")
        sel = output(out)
    elif isinstance(out, torch.Tensor):
        sel = out
    elif hasattr(out, "logits") and isinstance(getattr(out, "logits"), torch.Tensor):
        sel = out.logits
    elif isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        sel = out[0]
    elif isinstance(out, dict) and out:
        sel = out.get("logits", next(iter(out.values())))
    else:
        sel = out
    if not isinstance(sel, torch.Tensor):
        raise TypeError(f"explain: the model must return a tensor (or pass output= to select "
                        f"one from its output), got {type(sel).__name__}")
    return sel


def _start_gradient(out, target, relevance):
    """The gradient that starts the backward: the one-hot target mask (relevance = the target
    logit), or ``relevance / output``."""
    if relevance is not None:
        if not isinstance(relevance, torch.Tensor):
            raise TypeError(f"explain: relevance must be a tensor, got "
                            f"{type(relevance).__name__}")
        if tuple(relevance.shape) != tuple(out.shape):
            raise ValueError(f"explain: relevance must have the model output's shape "
                             f"{tuple(out.shape)}, got {tuple(relevance.shape)}")
        R = relevance.detach().to(dtype=out.dtype, device=out.device)
        return safe_div(R, out.detach())
    if out.dim() < 2:
        raise ValueError(f"explain: target needs an output of shape (N, classes, ...), got "
                         f"{tuple(out.shape)}; pass relevance= (or output= to select one)")
    N, K = out.shape[:2]
    if isinstance(target, bool):
        raise TypeError("explain: target must be an int or a sequence of ints, got a bool")
    if isinstance(target, int):
        idx = torch.full((N,), int(target), dtype=torch.long, device=out.device)
    else:
        try:
            idx = torch.as_tensor(target, device=out.device)
        except Exception:
            raise TypeError(f"explain: target must be an int or a sequence of ints, got "
                            f"{type(target).__name__}") from None
        if idx.is_floating_point() or idx.dtype == torch.bool or idx.is_complex():
            raise TypeError(f"explain: target must hold integers, got dtype {idx.dtype}")
        if idx.dim() == 2:  # several targets per sample: (N, T) or (1, T) for every sample
            if idx.shape[0] not in (1, N) or idx.shape[1] == 0:
                raise ValueError(f"explain: a 2-D target must have shape (N, T) or (1, T) "
                                 f"with N={N} samples and T >= 1 targets, got "
                                 f"{tuple(idx.shape)}")
            idx = idx.long().expand(N, idx.shape[1])
        elif idx.dim() > 2:
            raise ValueError(f"explain: target must be an int, (N,) or (N, T), got shape "
                             f"{tuple(idx.shape)}")
        else:
            idx = idx.long().reshape(-1)
            if idx.numel() == 1:
                idx = idx.expand(N)
            if idx.numel() != N:
                raise ValueError(f"explain: target has {idx.numel()} entries but the batch "
                                 f"has {N} samples (for several targets per sample pass an "
                                 f"(N, T) or (1, T) target)")
    if N and (int(idx.min()) < 0 or int(idx.max()) >= K):
        raise ValueError(f"explain: target index out of range for an output with {K} "
                         f"classes: {idx.tolist()}")
    if idx.dim() == 2:  # (T, *out.shape): one start gradient per target
        T = idx.shape[1]
        mask = torch.zeros((T,) + tuple(out.shape), dtype=out.dtype, device=out.device)
        shape = (T, N, 1) + (1,) * (out.dim() - 2)
        mask.scatter_(2, idx.t().reshape(shape).expand((T, N, 1) + tuple(out.shape[2:])), 1.0)
        return mask
    mask = torch.zeros(out.shape, dtype=out.dtype, device=out.device)
    shape = (N, 1) + (1,) * (out.dim() - 2)
    mask.scatter_(1, idx.reshape(shape).expand((N, 1) + tuple(out.shape[2:])), 1.0)
    return mask


def _backward(out, wrt, g0, multi):
    """The modified gradients at ``wrt``: one backward, or for K targets one backward under
    ``torch.func.vmap`` over the K start gradients (the rule nodes run at batch K·N)."""
    if not (out.requires_grad and wrt):
        return [None] * len(wrt)
    if not multi:
        return torch.autograd.grad([out], wrt, [g0], allow_unused=True)

    def one(g):
        got = torch.autograd.grad([out], wrt, [g], allow_unused=True)
        return tuple(torch.zeros_like(w) if v is None else v for w, v in zip(wrt, got))
    return torch.func.vmap(one)(g0)


def _inputs(inputs):
    """(args, kwargs, keys) with keys naming the floating tensors to explain."""
    if isinstance(inputs, torch.Tensor):
        if not inputs.is_floating_point():
            raise TypeError(f"explain: x must be a floating tensor, got dtype {inputs.dtype}")
        return [inputs], {}, [0]
    if isinstance(inputs, (tuple, list)):
        args = list(inputs)
        return args, {}, [i for i, v in enumerate(args)
                          if isinstance(v, torch.Tensor) and v.is_floating_point()]
    if isinstance(inputs, dict):
        kwargs = dict(inputs)
        return [], kwargs, [k for k, v in kwargs.items()
                            if isinstance(v, torch.Tensor) and v.is_floating_point()]
    raise TypeError(f"explain: inputs must be a tensor, a tuple of model arguments or a dict of "
                    f"keyword arguments, got {type(inputs).__name__}")


def explain(model, inputs, target=None, *, relevance=None, composite="epsilon_gamma_box",
            low=None, high=None, canonize=True, return_output=False, at=None, strict=True,
            output=None):
    """LRP relevance of ``model`` at its inputs.

    Parameters
    ----------
    model: ``nn.Module`` in eval mode (any Python forward); it is not modified.
    inputs: the input tensor, a tuple of positional arguments or a dict of keyword arguments
        (e.g. ``{"inputs_embeds": e, "attention_mask": m}`` for a Hugging Face model).
        Relevance is returned for every floating tensor among them; integer inputs (token ids)
        get none — to explain a text model pass ``inputs_embeds`` and sum the relevance over
        the hidden dim for per-token scores.
    target: int, or per-sample class indices along dim 1 of the output: the output relevance
        is the target logit (the one-hot mask times the output).  A 2-D target, (N, T) or
        (1, T) for every sample, explains T targets from one forward and one batched backward
        (the rules run at batch T·N) and returns relevance of shape (N, T, ...).
    relevance: the output relevance itself (same shape as the output); exactly one of
        ``target`` and ``relevance``.  (Entries where the output is exactly 0 carry none.)
    composite: a preset name (``epsilon_gamma_box``, ``epsilon_plus``, ``epsilon_plus_flat``,
        ``epsilon_alpha2_beta1``, ``epsilon_alpha2_beta1_flat``, ``attnlrp``, ``cp_lrp``,
        ``attnlrp_gamma``) or an ``lrp_ext.Composite``.
    low, high: bounds of the input for the z_box rule; required by ``epsilon_gamma_box``.
    canonize: merge each eval-mode BatchNorm into the layer before it when that layer's
        output feeds only the BatchNorm (on copies of the weights).
    return_output: also return the model output (the selected tensor).
    at: module names whose output relevance to return too, as a dict ``{name: tensor}``.
    strict: an op with parameters, or of several input-dependent tensors, that no rule covers
        raises ``UncoveredOp`` (a ``ValueError``) naming it; ``strict=False`` uses its plain
        gradient and warns once listing such ops.
    output: a callable mapping the model's output to the tensor that ``target`` indexes
        (default: a tensor output itself, ``.logits``, or the first element of a tuple).

    Returns the relevance (a tensor for a tensor input; a tuple with None for non-floating
    entries; a dict of the floating entries), then ``{name: relevance}`` when ``at`` is given,
    then the output when ``return_output``.

    For many calls on one model, :class:`Explainer` gives the same results and keeps what the
    rules derive from the weights between calls.
    """
    return _explain(model, inputs, target, relevance=relevance, composite=composite, low=low,
                    high=high, canonize=canonize, return_output=return_output, at=at,
                    strict=strict, output=output)


def _explain(model, inputs, target=None, *, relevance=None, composite="epsilon_gamma_box",
             low=None, high=None, canonize=True, return_output=False, at=None, strict=True,
             output=None, prepared=None):
    """:func:`explain`; ``prepared``: a :class:`~._prepared.Prepared` store for this model."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"explain: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError("explain: TorchScript modules are not supported (their forward does not "
                        "run in Python); explain the original nn.Module")
    if (target is None) == (relevance is None):
        raise ValueError("explain: pass exactly one of target (class index) and relevance "
                         "(output relevance)"
                         + (", not both" if target is not None else "; got neither"))
    comp = _comp.get_composite(composite)
    args, kwargs, keys = _inputs(inputs)
    at = [] if at is None else ([at] if isinstance(at, str) else list(at))
    named = list(model.named_modules())  # one walk of the module tree serves every table below
    names = {id(m): n for n, m in named}
    unknown = [n for n in at if n not in set(names.values())]
    if unknown:
        raise ValueError(f"explain: at= names no module of the model: {unknown}")

    rec = Recorder()
    rec.comp, rec.strict, rec.canonize = comp, bool(strict), bool(canonize)
    rec.low, rec.high = low, high
    rec.names = names
    rec.at, rec.at_out = set(at), {}
    tensors = []
    for mname, mod in named:
        for t in list(mod._parameters.values()) + list(mod._buffers.values()):
            if t is not None and id(t) not in rec.owner:
                rec.owner[id(t)] = (mname, mod)
                tensors.append(t)
    if prepared is not None:
        prepared.check(tensors)
        rec.prepared = prepared

    guard = _BufferGuard(m for _, m in named)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            leaves = {}
            for k in keys:
                src = args[k] if isinstance(k, int) and not kwargs else kwargs[k]
                leaf = src.detach().clone().requires_grad_(True)
                x_in = leaf.clone()
                leaves[k] = leaf
                rec.mark(x_in, Meta())
                rec.inputs[id(x_in)] = k
                if isinstance(k, int) and not kwargs:
                    args[k] = x_in
                else:
                    kwargs[k] = x_in
            with _ModuleHooks(), RecordMode(rec, dispatch):
                out = _select(model(*args, **kwargs), output)
            guard.restore()
            g0 = _start_gradient(out, target, relevance)  # (K, *out.shape) for K targets
            multi = g0.dim() == out.dim() + 1
            at_names = [n for n in at if n in rec.at_out]
            direct = [k for k in keys if k in rec.direct]
            wrt = ([leaves[k] for k in keys] + [rec.at_out[n] for n in at_names]
                   + [rec.direct[k] for k in direct])
            grads = _backward(out, wrt, g0, multi)
    finally:
        guard.restore()
    if rec.uncovered:
        warnings.warn("explain: ops without an LRP rule took their plain gradient:\n  "
                      + "\n  ".join(rec.uncovered), RuntimeWarning, stacklevel=2)

    def relevance_of(t, g):  # t ⊙ g; for K targets (N, K, ...)
        t = t.detach()
        if g is None:
            return torch.zeros(((t.shape[0], g0.shape[0]) + t.shape[1:]) if multi else t.shape,
                               dtype=t.dtype, device=t.device)
        return (t * g).movedim(0, 1) if multi else t * g
    n_in, n_at = len(keys), len(at_names)
    rel = {k: relevance_of(leaves[k], g) for k, g in zip(keys, grads)}
    for k, g in zip(direct, grads[n_in + n_at:]):
        if g is not None:
            rel[k] = rel[k] + (g.movedim(0, 1) if multi else g)
    hidden = {n: relevance_of(rec.at_out[n], g) for n, g in zip(at_names, grads[n_in:])}
    for n in at:
        hidden.setdefault(n, None)
    if isinstance(inputs, torch.Tensor):
        result = rel[0]
    elif isinstance(inputs, (tuple, list)):
        result = tuple(rel.get(i) for i in range(len(inputs)))
    else:
        result = rel
    parts = [result]
    if at:
        parts.append(hidden)
    if return_output:
        parts.append(out.detach())
    return parts[0] if len(parts) == 1 else tuple(parts)


class Explainer:
    """:func:`explain` for one model and composite, keeping what the rules derive from the
    model's weights between calls: each layer's weights with its merged BatchNorm, the signed
    weights ``W⁺``/``W⁻`` of z⁺, γ and αβ, and ``|W|``.  Repeated calls (a data set, several
    batches) then skip that work; the results are those of :func:`explain`.

    ``Explainer(model, composite="epsilon_gamma_box", *, canonize=True, **defaults)``;
    ``defaults`` are any other keyword arguments of :func:`explain` (``low``, ``high``,
    ``strict``, ``output``, ...), which a call may override:
    ``explainer(inputs, target=None, **kwargs)``.

    The kept tensors cost memory: up to about twice the size of the weights of the layers
    that z⁺, γ and αβ apply to, held as long as the explainer lives.  They are rebuilt when a
    parameter or buffer of the model is replaced or changed in place by a PyTorch op (its
    version counter moves: optimiser steps, ``load_state_dict``); after a change that bypasses
    the counter, such as ``p.data.copy_(…)``, call :meth:`refresh`.  Calls are serialised by
    a lock (one explainer may serve several threads, one call at a time).
    """

    def __init__(self, model, composite="epsilon_gamma_box", *, canonize=True, **defaults):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"Explainer: model must be an nn.Module, got {type(model).__name__}")
        bad = sorted(set(defaults) - _CALL_KWARGS)
        if bad:
            raise TypeError(f"Explainer: unknown keyword argument(s) {bad}; the keywords of "
                            f"explain are {sorted(_CALL_KWARGS)}")
        self.model, self.composite = model, _comp.get_composite(composite)
        self.canonize, self.defaults = bool(canonize), defaults
        self._prepared = Prepared()
        self._lock = threading.Lock()

    def __call__(self, inputs, target=None, **kwargs):
        bad = sorted(set(kwargs) - _CALL_KWARGS)
        if bad:
            raise TypeError(f"Explainer: unknown keyword argument(s) {bad}; the keywords of a "
                            f"call are {sorted(_CALL_KWARGS)}")
        kw = dict(self.defaults, **kwargs)
        with self._lock:
            return _explain(self.model, inputs, target, composite=self.composite,
                            canonize=self.canonize, prepared=self._prepared, **kw)

    def refresh(self):
        """Drop the kept tensors (they are rebuilt at the next call)."""
        with self._lock:
            self._prepared.clear()

    def kept_bytes(self):
        """Memory held between calls: the bytes of the kept tensors (not counting the model's
        own parameters and buffers)."""
        with self._lock:
            own = list(self.model.parameters()) + list(self.model.buffers())
            return self._prepared.nbytes(own)


_CALL_KWARGS = frozenset(("relevance", "low", "high", "return_output", "at", "strict", "output"))
