"""One handler per op kind: the rules of the engine, and the dispatch that picks them.

``dispatch(rec, func, args, kwargs)`` runs for every torch function of the explained forward.
Ops without an input-dependent tensor run unchanged.  Ops with a handler in ``HANDLERS``
(layers, BatchNorm, activations, products, bilinear contractions, norms, attention) return
their value connected to their inputs through a :class:`~._frame.RuleFn` whose backward is the
rule in the gradient×input frame.  Every other op runs unchanged and keeps its plain gradient,
which is exact in this frame for what moves, copies, sums or rescales values; an op with
parameters or with several dependent inputs that no handler covers is reported (an error, or
with ``strict=False`` the plain gradient and one warning).
"""
from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F

from .. import conv as _conv
from .. import canonize as _canon
from .. import composite as _comp
from ._frame import (Subgraph, apply, apply_inplace, lead, proportional, ratio_grad, safe_div,
                     sum_to)
from ._record import GATE, OTHER, REDUCE, Meta

__all__ = ["dispatch", "HANDLERS", "UncoveredOp"]

T = torch.Tensor
HANDLERS: dict = {}


class UncoveredOp(ValueError):
    """An op that no rule covers (raised with ``strict=True``)."""


def _funcs(*names, where=(torch, F, T)):
    out = []
    for n in names:
        for mod in where:
            f = getattr(mod, n, None)
            if f is not None and f not in out:
                out.append(f)
    return out


def register(*names, where=(torch, F, T)):
    def deco(h):
        for f in _funcs(*names, where=where):
            HANDLERS[f] = h
        return h
    return deco


def _name(func):
    n = getattr(func, "__name__", None) or repr(func)
    q = getattr(func, "__qualname__", n)
    return q if q.startswith("Tensor.") or q.startswith("_TensorBase.") else n


# ---------------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------------
def _deps(rec, args, kwargs):
    """The input-dependent tensors among the arguments (also inside lists and tuples), each
    once, in order."""
    found, seen = [], set()
    table = rec._meta
    for v in (*args, *kwargs.values()) if kwargs else args:
        if isinstance(v, T):
            e = table.get(id(v))
            if e is not None and e[0]() is v and id(v) not in seen:
                seen.add(id(v))
                found.append(v)
        elif isinstance(v, (list, tuple)):
            for u in v:
                if isinstance(u, T):
                    e = table.get(id(u))
                    if e is not None and e[0]() is u and id(u) not in seen:
                        seen.add(id(u))
                        found.append(u)
    return found


def _inplace(func, kwargs):
    n = getattr(func, "__name__", "")
    return (n.endswith("_") and not n.endswith("__")) or n in _IADD or kwargs.get("inplace") is True


_IADD = {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__setitem__", "__ior__", "__iand__",
         "__ipow__", "__idiv__"}

_LIKE = set(_funcs("zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
                   "randint_like", "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor",
                   "size", "dim", "numel", "is_floating_point", "is_contiguous", "stride"))
# ops whose later tensor arguments give only a shape or dtype
_FIRST_ONLY = set(_funcs("expand_as", "view_as", "reshape_as", "type_as", "broadcast_to"))
# ops that combine several dependent tensors by moving, selecting or summing values
_MULTI_SAFE = set(_funcs(
    "add", "add_", "sub", "sub_", "subtract", "rsub", "cat", "concat", "concatenate", "stack",
    "hstack", "vstack", "dstack", "where", "maximum", "minimum", "fmax", "fmin", "copy_",
    "index_put", "index_put_", "masked_scatter", "scatter", "scatter_", "scatter_add",
    "scatter_add_", "index_add", "index_add_", "index_copy", "index_copy_", "lerp", "__add__",
    "__radd__", "__iadd__", "__sub__", "__rsub__", "__isub__", "__setitem__", "masked_fill",
    "masked_fill_", "broadcast_tensors", "block_diag", "diag_embed", "__getitem__", "index_select",
    "gather", "take_along_dim", "max", "min", "sum", "mean"))
# ops that may take a parameter as an elementwise scale or shift (affine: linear in the input)
_PARAM_SAFE = set(_funcs(
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "__add__", "__radd__",
    "__iadd__", "__sub__", "__rsub__", "__isub__", "__mul__", "__rmul__", "__imul__",
    "__truediv__", "__itruediv__", "where", "cat", "stack", "expand_as", "type_as", "addcmul",
    "masked_fill", "__getitem__", "__setitem__", "copy_", "lerp", "maximum", "minimum"))
# elementwise ops that keep a tensor's elementwise root
_AFFINE = set(_funcs("neg", "negative", "__neg__", "positive", "__pos__", "add", "add_", "sub",
                     "sub_", "subtract", "rsub", "__add__", "__radd__", "__iadd__", "__sub__",
                     "__rsub__", "__isub__", "mul", "mul_", "multiply", "__mul__", "__rmul__",
                     "__imul__", "div", "div_", "divide", "true_divide", "__truediv__",
                     "__itruediv__"))
_SAME = set(_funcs("to", "type", "float", "double", "half", "bfloat16", "contiguous", "clone",
                   "dropout", "type_as", "requires_grad_", "alpha_dropout", "feature_alpha_dropout",
                   "dropout1d", "dropout2d", "dropout3d"))
_GATES = set(_funcs("sigmoid", "sigmoid_", "tanh", "tanh_", "hardsigmoid", "softmax",
                    "_softmax"))
_UNARY = set(_funcs("exp", "exp_", "log", "log_", "log1p", "expm1", "sqrt", "sqrt_", "rsqrt",
                    "rsqrt_", "reciprocal", "reciprocal_", "pow", "pow_", "__pow__", "square",
                    "sin", "cos", "abs", "abs_", "erf", "erfc", "clamp", "clamp_", "clip",
                    "clamp_min", "clamp_max", "sign", "floor", "ceil", "round", "exp2", "log2",
                    "tan", "atan", "sinh", "cosh", "sigmoid", "tanh", "sigmoid_", "tanh_"))
_REDUCE = set(_funcs("mean", "sum", "var", "std", "norm", "amax", "amin", "logsumexp", "nansum",
                     "nanmean", "prod", "var_mean", "std_mean")) | {torch.linalg.vector_norm,
                                                                    torch.linalg.norm}
_VIEWLIKE = set(_funcs("view", "reshape", "flatten", "unflatten", "permute", "transpose",
                       "squeeze", "unsqueeze", "contiguous", "clone", "max_pool1d", "max_pool2d",
                       "max_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
                       "adaptive_max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
                       "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
                       "dropout", "__getitem__", "narrow", "select", "to", "float"))


def _tensors_out(out):
    if isinstance(out, T):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for t in out if isinstance(t, T)]
    return []


def _mark_out(rec, out, meta_fn):
    for t in _tensors_out(out):
        if t.is_floating_point() or t.is_complex():
            rec.mark(t, meta_fn())


def _protect(rec, t, func):
    """``t`` is about to change in place: nodes that keep it take a copy.

    Except under an in-place ReLU that is ``t``'s only use so far: every later use sees the
    ReLU's output, so the gradient reaching ``t`` is 0 wherever the ReLU changes a value, and a
    rule that keeps ``t`` (as its output ``z``, for ``R = z ⊙ g``) gets the same numbers from
    the rectified values.  This saves a copy of every ReLU(inplace=True) input.
    """
    if func in _RELU_INPLACE and rec.uses.get(id(t), 0) <= 1:
        return
    ents = rec.kept.pop(id(t), None)
    rec.uses.pop(id(t), None)
    if ents:
        copy = t.detach().clone()
        for ref, node_ref, attr in ents:
            node = node_ref()
            if ref() is t and node is not None and getattr(node, attr, None) is not None:
                setattr(node, attr, copy)
        rec.protected = (t, copy)  # an in-place activation reads its input from this copy


def uncovered(rec, what, how):
    msg = f"explain: {what} in {rec.where()}: no LRP rule covers it; {how}"
    if rec.strict:
        raise UncoveredOp(msg + " (or pass strict=False to use its plain gradient)")
    if msg not in rec.uncovered:
        rec.uncovered.append(msg)


def dispatch(rec, func, args, kwargs):
    if func in _LIKE:
        return func(*args, **kwargs)
    deps = _deps(rec, args, kwargs)
    if not deps:
        return func(*args, **kwargs)
    for d in deps:  # uses of layer outputs (BatchNorm merging needs a sole use)
        ent = rec.layer_out.get(id(d))
        if ent is not None and ent[0]() is d:
            ent[1].uses += 1
        if id(d) in rec.kept:
            rec.uses[id(d)] = rec.uses.get(id(d), 0) + 1
    rec.protected = None  # set by _protect for this op only
    if _inplace(func, kwargs) and args and isinstance(args[0], T):
        relu = func in (F.relu, F.threshold) and kwargs.get("inplace") is True and \
            (func is F.relu or (len(args) >= 3 and args[1] == 0 and args[2] == 0))
        _protect(rec, args[0], torch.relu_ if relu else func)
    h = HANDLERS.get(func)
    if h is None and getattr(func, "__name__", None) == "multi_head_attention_forward":
        h = h_mha  # nn.MultiheadAttention's module calls it by another path
    if h is not None:
        out = h(rec, func, args, kwargs, deps)
        if out is not NotImplemented:
            return out
    return default(rec, func, args, kwargs, deps)


def default(rec, func, args, kwargs, deps):
    if func in _FIRST_ONLY:
        first = args[0] if args else None
        deps = [d for d in deps if d is first]
        if not deps:
            return func(*args, **kwargs)
    params = [v for v in list(args) + list(kwargs.values()) if isinstance(v, torch.nn.Parameter)]
    if params and func not in _PARAM_SAFE:
        owner = rec.owner.get(id(params[0]))
        what = f"'{_name(func)}' with parameter(s) of module {_owner_str(owner)}"
        uncovered(rec, what, "wrap it in a Linear/conv layer, or map its module to a rule")
    elif len(deps) >= 2 and func not in _MULTI_SAFE and func not in _PARAM_SAFE:
        uncovered(rec, f"'{_name(func)}' of {len(deps)} input-dependent tensors",
                  "give the product rule in the composite (Composite(product_rule=...) or "
                  "bilinear_rule=...)")
    out = func(*args, **kwargs)
    m0 = rec.meta(deps[0])
    inplace = _inplace(func, kwargs)
    if func in _SAME and len(deps) == 1:
        meta = m0
    elif func in _AFFINE and len(deps) == 1:
        meta = Meta(m0.root, m0.kind, m0.nonlin, m0.linear, False)
    elif func in _AFFINE and len(deps) == 2:
        m1 = rec.meta(deps[1])
        if m0.root is m1.root:
            meta = Meta(m0.root, OTHER, m0.nonlin or m1.nonlin, m0.linear and m1.linear)
        else:
            meta = Meta()
    elif func in _UNARY and len(deps) == 1:
        kind = REDUCE if m0.kind == REDUCE else (GATE if func in _GATES else OTHER)
        meta = Meta(m0.root, kind, True, False)
    elif func in _REDUCE:
        meta = Meta(kind=REDUCE, nonlin=True)
    elif func in _VIEWLIKE and len(deps) == 1:
        meta = Meta(kind=m0.kind, nonlin=m0.nonlin, nonneg=m0.nonneg)
    else:
        meta = Meta()
    if inplace:
        rec.mark(args[0], meta)
        return out
    _mark_out(rec, out, lambda: meta)
    return out


def _owner_str(owner):
    if owner is None:
        return "an unnamed tensor"
    name, mod = owner
    return f"'{name}' ({type(mod).__name__})"


# ---------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------
def _bind(names, args, kwargs, defaults):
    out = dict(defaults)
    for n, v in zip(names, args):
        out[n] = v
    for n, v in kwargs.items():
        out[n] = v
    return out


# ---------------------------------------------------------------------------------------------
# layers: Linear, conv, addmm, matmul with a weight
# ---------------------------------------------------------------------------------------------
class LayerNode:
    """A Linear/conv layer: its rule's coefficients are the backward."""

    def __init__(self, rec, rule, spec, a, z, name, module, nonneg, key=None):
        self.rec, self.rule, self.spec, self.key = rec, rule, spec, key
        self.a, self.z, self.name, self.module = a, z, name, module
        self.nonneg = nonneg
        self.uses = 0
        self.bn = None  # the BatchNorm node merged into this layer (decided at backward)
        self.aux = False  # a second input that takes a model input's relevance directly

    def backward(self, g):
        rec, rule = self.rec, self.rule
        a, spec, z = self.a, self.spec, self.z
        if self.bn is not None:
            bn = self.bn
            z, bn.y = bn.y, None

            def merged(spec=spec):
                dt = spec.raw_weight.dtype
                b = _canon.merge_bias(spec.bias, bn.scale, bn.shift, dt)
                return spec.with_params(spec.raw_weight, b, row_scale=bn.scale.to(dt))
            if self.key is None or bn.key is None:
                spec = merged()
            else:  # kept between calls (Explainer)
                spec = rec.prepared.spec(("merged", self.key, bn.key), merged)
        elif z is None:  # dropped for a BatchNorm merge that did not happen: recompute it
            with torch.no_grad():
                unb = not isinstance(spec, _conv.LinearSpec) and a.dim() == spec.nd + 1
                z = spec.fwd(a.unsqueeze(0) if unb else a, spec.weight, spec.bias)
                z = z.squeeze(0) if unb else z
        shape, L = a.shape, lead()  # L: (K,) for K targets at once
        if isinstance(spec, _conv.LinearSpec):
            a2 = a.reshape(-1, shape[-1])
            z2 = z.reshape(-1, z.shape[-1])
        else:
            unb = a.dim() == spec.nd + 1
            a2, z2 = (a.unsqueeze(0), z.unsqueeze(0)) if unb else (a, z)
        g2 = g.reshape((-1,) + tuple(z2.shape[1:]))  # (K·N, ...): the K gradients stacked
        if rule.name == "gradient":
            gin = spec.bwd(g2, (g2.shape[0],) + tuple(a2.shape[1:]), spec.weight)
            self.a = self.z = None
            return (gin.reshape(L + shape),) + ((None,) if self.aux else ())
        params = dict(rule.params)
        low = high = None
        if rule.name == "z_box":
            low = params.pop("low")
            high = params.pop("high")
            low = rec.low if low is None else low
            high = rec.high if high is None else high
        relevance_rule = rule.name not in _conv.COEF_RULES
        if relevance_rule and L:  # relevance not a multiple of a: the rule at batch K·N
            reps = (L[0],) + (1,) * (a2.dim() - 1)
            a2, z2 = a2.repeat(reps), z2.repeat(reps)
            low, high = (_per_target(v, a2.dim(), L[0]) for v in (low, high))
        held = [z2]  # the rule takes z out of it and frees it before its transposed conv
        self.z = None
        del z, z2
        res = _conv.rule_backward(rule.name, g2, a2, spec, output=held, nonneg=self.nonneg,
                                  sign_check=False, low=low, high=high, **params)
        self.a = None
        if relevance_rule:
            Rin = res[0].reshape(L + shape)
            if self.aux:  # a model input: its relevance directly, not through R / a
                return (None, Rin)
            return (safe_div(Rin, a),)
        cp, cn = res
        if cn is None:
            gin = cp
        else:  # a's sign picks the coefficient: (K, N, ...) against a (N, ...), or grouped views
            sh = tuple(cp.shape[1:]) if cp.dim() == a2.dim() + 1 else tuple(a2.shape[1:])
            cp, cn = cp.reshape(L + (-1,) + sh), cn.reshape(L + (-1,) + sh)
            gin = torch.where(a2.reshape((-1,) + sh) < 0, cn, cp)
        return (gin.reshape(L + shape),) + ((None,) if self.aux else ())


_RELEVANCE_RULES = frozenset(("flat", "w_square", "z_box"))


def _per_target(v, nd, K):
    """A z^B bound for the rule at batch K·N (the K targets' gradients stacked): a bound with
    a batch dim of N > 1 (one per sample) repeated K times; one that is the same for every
    sample (a broadcast view) as one sample's worth; anything else as it is."""
    if not isinstance(v, T) or v.dim() != nd or v.shape[0] == 1:
        return v
    if v.stride(0) == 0:
        return v[:1]
    return v.repeat((K,) + (1,) * (nd - 1))


def _rule_for(rec, owner, kind_type, first_ok=True):
    comp = rec.comp
    name, mod = owner if owner is not None else (None, None)
    first = False
    if first_ok and not rec.first_done:
        if comp.first_rule_type(type(mod) if mod is not None else kind_type, kind_type) \
                is not None:
            first = rec.first_done = True
    rule = comp.rule_for_type(name, type(mod) if mod is not None else None, kind_type, first)
    if rule is None:
        raise ValueError(f"explain: no rule of composite {comp.name!r} covers layer "
                         f"{_owner_str(owner) if owner else 'an unnamed ' + kind_type.__name__}")
    if not (rule.layer or rule.name == "gradient"):
        raise ValueError(f"explain: rule {rule!r} cannot be used for layer {_owner_str(owner)}")
    if rule.name == "z_box" and (rule.params["low"] is None or rule.params["high"] is None) \
            and (rec.low is None or rec.high is None):
        raise ValueError(f"explain: composite {comp.name!r} applies the z_box rule to layer "
                         f"{_owner_str(owner)} and needs low and high (the lowest and highest "
                         "input values), e.g. low=-3.0, high=3.0")
    return rule


def _layer(rec, func, args, kwargs, x, W, make_spec, kind_type, key=None):
    """A layer op ``func`` with input ``x``; ``W`` names its module (the owner of the weight),
    ``make_spec()`` builds its :class:`~lrp_ext.conv.ConvSpec`; ``key`` (from
    ``rec.prepared_key``, or None) finds it in the store an Explainer keeps between calls."""
    owner = rec.owner.get(id(W))
    rule = _rule_for(rec, owner, kind_type)
    if rule.name == "gradient":  # LRP-0 without a stabiliser: the plain op
        out = func(*args, **kwargs)
        rec.mark(out, Meta())
        return out
    with torch.no_grad():
        value = func(*args, **kwargs)
    m = rec.meta(x)
    spec = make_spec() if key is None else rec.prepared.spec(("layer",) + key, make_spec)
    node = LayerNode(rec, rule, spec, x.detach(), value, owner[0] if owner else None,
                     owner[1] if owner else None, bool(m is not None and m.nonneg), key)
    inputs = [x]
    key = rec.inputs.get(id(x))
    if key is not None and rule.name in _RELEVANCE_RULES:
        node.aux = True
        inputs.append(rec.direct_input(key, x))
    out = apply(node, inputs, value)
    node.z = out.detach()
    rec.mark(out, Meta())
    rec.layer_out[id(out)] = (weakref.ref(out), node)
    rec.keep(x, node, "a")
    rec.keep(out, node, "z")
    return out


@register("linear", where=(F, torch._C._nn))
def h_linear(rec, func, args, kwargs, deps):
    p = _bind(("input", "weight", "bias"), args, kwargs, {"bias": None})
    x, W, b = p["input"], p["weight"], p["bias"]
    if rec.meta(W) is not None or (b is not None and rec.meta(b) is not None) or \
            rec.meta(x) is None:
        return h_bilinear(rec, func, args, kwargs, deps)
    return _layer(rec, func, args, kwargs, x, W,
                  lambda: _conv.LinearSpec(W.detach(), None if b is None else b.detach()),
                  torch.nn.Linear, rec.prepared_key((W, b), "linear"))


@register("addmm")
def h_addmm(rec, func, args, kwargs, deps):
    p = _bind(("input", "mat1", "mat2"), args, kwargs, {"beta": 1, "alpha": 1})
    b, x, W = p["input"], p["mat1"], p["mat2"]
    if p["beta"] != 1 or p["alpha"] != 1 or rec.meta(x) is None or rec.meta(W) is not None \
            or rec.meta(b) is not None or b.dim() != 1:
        return NotImplemented
    return _layer(rec, func, args, kwargs, x, W,
                  lambda: _conv.LinearSpec(W.detach().t(), b.detach()), torch.nn.Linear,
                  rec.prepared_key((W, b), "addmm"))


@register("matmul", "mm", "__matmul__", "bmm")
def h_matmul(rec, func, args, kwargs, deps):
    a, b = args[0], args[1]
    da, db = rec.meta(a) is not None, rec.meta(b) is not None
    if da and db:
        return h_bilinear(rec, func, args, kwargs, deps)
    if da and b.dim() == 2 and a.dim() >= 1 and func is not torch.bmm:
        return _layer(rec, func, (a, b), {}, a, b, lambda: _conv.LinearSpec(b.detach().t(), None),
                      torch.nn.Linear, rec.prepared_key((b,), "matmul"))
    return _generic_linear(rec, func, args, kwargs, deps)


@register("__rmatmul__")
def h_rmatmul(rec, func, args, kwargs, deps):
    return h_matmul(rec, torch.matmul, (args[1], args[0]), {}, deps)


@register("einsum")
def h_einsum(rec, func, args, kwargs, deps):
    ops = args[1:] if len(args) > 2 or not isinstance(args[1], (list, tuple)) else args[1]
    dep_ops = [o for o in ops if isinstance(o, T) and rec.meta(o) is not None]
    if len(dep_ops) >= 2:
        return h_bilinear(rec, func, args, kwargs, deps)
    return _generic_linear(rec, func, args, kwargs, deps)


class SubgraphNode:
    """Backward = the op's own vector-Jacobian product, scaled per input."""

    def __init__(self, sub, scales, pre=None):
        self.sub, self.scales, self.pre = sub, scales, pre

    def backward(self, g):
        if self.pre is not None:
            g = self.pre(g)
        got = self.sub.grad(g)
        return tuple(v * s if s != 1 else v for v, s in zip(got, self.scales))


def _run_sub(rec, func, args, kwargs, inputs, scales, pre=None, meta=None):
    """``func`` over ``inputs`` (dependent tensors among args) in a private graph."""
    ids = [id(t) for t in inputs]

    def fn(*leaves):
        lut = dict(zip(ids, leaves))

        def sub(v):
            if isinstance(v, T):
                return lut.get(id(v), v)
            if isinstance(v, (list, tuple)):
                return type(v)(sub(u) for u in v)
            return v
        return func(*[sub(v) for v in args], **{k: sub(v) for k, v in kwargs.items()})
    sub = Subgraph()
    value = sub.run(fn, inputs)
    node = SubgraphNode(sub, scales, pre)
    out = apply(node, inputs, value)
    rec.mark(out, meta or Meta())
    return out


def _generic_linear(rec, func, args, kwargs, deps):
    """A contraction of one dependent tensor with constants: the ε rule through the op's own
    transpose (``R = z ⊙ g``, ``g_in = Jᵀ(R / stab(z))``); other layer rules need a weight."""
    params = [v for v in args if isinstance(v, T) and rec.meta(v) is None]
    owner = next((rec.owner.get(id(p)) for p in params if id(p) in rec.owner), None)
    rule = _rule_for(rec, owner, torch.nn.Linear, first_ok=False)
    if rule.name not in ("epsilon", "zero", "gradient"):
        uncovered(rec, f"'{_name(func)}' (a contraction with a constant tensor) under rule "
                  f"{rule!r}", "only epsilon, zero and gradient apply to it; map it to one")
        rule = _comp.Gradient()
    e = {"epsilon": rule.params.get("epsilon", 0), "zero": 1e-9}.get(rule.name)
    holder = {}

    def pre(g):
        if e is None:
            return g
        z = holder["z"]
        return proportional(g, z, e)
    out = _run_sub(rec, func, args, kwargs, deps, [1] * len(deps), pre)
    holder["z"] = out.detach()
    return out


# ---------------------------------------------------------------------------------------------
# convolutions
# ---------------------------------------------------------------------------------------------
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONVT_ARGS = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups",
               "dilation")
_HYPER = ("stride", "padding", "dilation", "groups", "output_padding")
_CONV_TYPES = {(1, False): torch.nn.Conv1d, (2, False): torch.nn.Conv2d,
               (3, False): torch.nn.Conv3d, (1, True): torch.nn.ConvTranspose1d,
               (2, True): torch.nn.ConvTranspose2d, (3, True): torch.nn.ConvTranspose3d}


def _conv_handler(nd, transposed):
    names = _CONVT_ARGS if transposed else _CONV_ARGS
    defaults = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1,
                "output_padding": 0}

    def h(rec, func, args, kwargs, deps):
        p = _bind(names, args, kwargs, defaults)
        x, W, b = p["input"], p["weight"], p["bias"]
        if rec.meta(x) is None or rec.meta(W) is not None or \
                (b is not None and rec.meta(b) is not None):
            return h_bilinear(rec, func, args, kwargs, deps)
        def spec():
            return _conv.conv_spec(W.detach(), None if b is None else b.detach(),
                                   stride=p["stride"], padding=p["padding"],
                                   dilation=p["dilation"], groups=p["groups"],
                                   transposed=transposed, output_padding=p["output_padding"])
        key = None if rec.prepared is None else \
            rec.prepared_key((W, b), nd, transposed, *(repr(p[k]) for k in _HYPER))
        return _layer(rec, func, args, kwargs, x, W, spec, _CONV_TYPES[(nd, transposed)], key)
    return h


for _nd in (1, 2, 3):
    for _f in _funcs(f"conv{_nd}d", where=(torch, F)):
        HANDLERS[_f] = _conv_handler(_nd, False)
    for _f in _funcs(f"conv_transpose{_nd}d", where=(torch, F)):
        HANDLERS[_f] = _conv_handler(_nd, True)


# ---------------------------------------------------------------------------------------------
# BatchNorm: merged into the layer before it, or an affine layer with the ε rule
# ---------------------------------------------------------------------------------------------
class BatchNormNode:
    def __init__(self, rec, rule, layer, scale, shift, canonize, key=None):
        self.rec, self.rule, self.layer, self.key = rec, rule, layer, key
        self.scale, self.shift, self.canonize = scale, shift, canonize
        self.x = self.y = None

    def merges(self):
        """Whether this BatchNorm is merged into its layer: that layer's output feeds only it
        (final once the forward has run)."""
        L = self.layer
        return L is not None and self.canonize and L.uses == 1 and L.rule.name != "gradient"

    def backward(self, g):
        nd = g.dim() - len(lead())
        shape = (1, -1) + (1,) * (nd - 2) if nd >= 2 else (-1,)
        if self.merges():
            self.layer.bn = self
            return (g,)
        s = self.scale.reshape(shape)
        name = self.rule.name
        y, x = self.y, self.x
        self.x = self.y = None
        if name == "pass":
            return (g * safe_div(y, x),)
        if name == "gradient":
            return (g * s,)
        e = self.rule.params.get("epsilon", 1e-6) if name == "epsilon" else 1e-9
        out = proportional(g, y, e)  # a fresh tensor: scaled in place when the types allow
        return (out.mul_(s) if torch.result_type(out, s) == out.dtype else out * s,)


@register("batch_norm", where=(F,))
def h_batch_norm(rec, func, args, kwargs, deps):
    p = _bind(("input", "running_mean", "running_var", "weight", "bias", "training",
               "momentum", "eps"), args, kwargs,
              {"running_mean": None, "running_var": None, "weight": None, "bias": None,
               "training": False, "momentum": 0.1, "eps": 1e-5})
    x = p["input"]
    if rec.meta(x) is None or any(rec.meta(p[k]) is not None for k in ("weight", "bias")
                                  if p[k] is not None):
        return NotImplemented
    owner = None
    for k in ("weight", "running_mean", "bias", "running_var"):
        if p[k] is not None and id(p[k]) in rec.owner:
            owner = rec.owner[id(p[k])]
            break
    if p["training"] or p["running_mean"] is None:
        raise ValueError(f"explain: module {_owner_str(owner)} is in training mode (batch statistics); "
                         "call model.eval() first (explain evaluates the model as in "
                         "inference)")
    key = rec.prepared_key([p[k] for k in ("running_mean", "running_var", "weight", "bias")],
                           float(p["eps"]))

    def scale_shift():
        return _canon.bn_scale_shift(p["running_mean"], p["running_var"], p["weight"],
                                     p["bias"], p["eps"])
    with torch.no_grad():
        value = func(*args, **kwargs)
        scale, shift = scale_shift() if key is None else rec.prepared.get(("bn",) + key,
                                                                          scale_shift)
    ent = rec.layer_out.get(id(x))
    layer = ent[1] if ent is not None and ent[0]() is x else None
    mod = owner[1] if owner else None
    rule = rec.comp.rule_for_type(owner[0] if owner else None,
                                  type(mod) if mod is not None else None,
                                  torch.nn.BatchNorm2d, False)
    if rule is None:
        rule = _comp.Epsilon()
    node = BatchNormNode(rec, rule, layer, scale, shift, rec.canonize, key)
    if rule.name == "pass":
        node.x = x.detach()
        rec.keep(x, node, "x")
    out = apply(node, [x], value)
    node.y = out.detach()
    rec.mark(out, Meta())
    rec.keep(out, node, "y")
    if layer is not None and node.merges():
        layer.z = None  # the merged rule reads the BatchNorm's output (recomputed if not merged)
    return out


# ---------------------------------------------------------------------------------------------
# elementwise activations: the identity rule, g_in = g · y / x
# ---------------------------------------------------------------------------------------------
class RatioNode:
    """The identity rule of an elementwise activation ``y = f(x)``: ``g_x = g · y / x`` (0
    where ``x == 0``).  It keeps ``x`` and ``y``, which the layers beside an activation keep
    anyway (a layer's output ``z``, the next layer's input ``a``), and forms the ratio in the
    backward: no tensor of its own lives from the forward to the backward."""

    def __init__(self, x):
        self.x, self.y = x, None

    def backward(self, g):
        x, y = self.x, self.y
        self.x = self.y = None
        return (ratio_grad(g, y, x),)


_RELU = set(_funcs("relu", "relu_", "leaky_relu", "leaky_relu_"))
_RELU_INPLACE = set(_funcs("relu_"))
_NONNEG = set(_funcs("relu", "relu_", "relu6", "hardsigmoid", "sigmoid", "sigmoid_", "softplus"))


def h_activation(rec, func, args, kwargs, deps):
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, T) or rec.meta(x) is None or len(deps) != 1:
        return NotImplemented
    m = rec.meta(x)
    kind = REDUCE if m.kind == REDUCE else (GATE if func in _GATES else OTHER)
    meta = Meta(m.root, kind, True, False, func in _NONNEG)
    if func in _RELU:  # homogeneous: y / x is the gradient
        out = func(*args, **kwargs)
        rec.mark(out, meta)
        return out
    if _inplace(func, kwargs):  # x's old values: the copy _protect took for x's keepers
        prot, rec.protected = rec.protected, None
        old = prot[1] if prot is not None and prot[0] is x else x.detach().clone()
        node = RatioNode(old)
        # the model's own in-place op writes y into x, with the node's history
        apply_inplace(node, x, lambda t: func(t, *args[1:], **kwargs))
        node.y = x.detach()
        rec.keep(x, node, "y")
        rec.mark(x, meta)
        return x
    with torch.no_grad():
        value = func(*args, **kwargs)
    return identity_rule(rec, x, value, meta)


def identity_rule(rec, x, value, meta):
    """``value`` (``f(x)`` of an elementwise ``f``, without history) connected to ``x`` by the
    identity rule (a :class:`RatioNode`)."""
    node = RatioNode(x.detach())
    out = apply(node, [x], value)
    node.y = out.detach()
    rec.keep(x, node, "x")
    # this is a use of x (for _protect's in-place ReLU exception, which needs every use of a
    # kept tensor counted; x may not have been kept before)
    rec.uses[id(x)] = max(rec.uses.get(id(x), 0), 1)
    rec.keep(out, node, "y")
    rec.mark(out, meta)
    return out


for _f in _funcs("relu", "relu_", "leaky_relu", "leaky_relu_", "gelu", "silu", "elu", "elu_",
                 "selu", "selu_", "celu", "celu_", "softplus", "mish", "hardswish",
                 "hardsigmoid", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardtanh", "hardtanh_",
                 "relu6", "logsigmoid", "softsign", "tanhshrink", "softshrink", "hardshrink",
                 "threshold", "threshold_", "prelu", "rrelu", "rrelu_", "glu"):
    if _f not in (torch.nn.functional.glu,):
        HANDLERS[_f] = h_activation


# ---------------------------------------------------------------------------------------------
# products of two dependent tensors
# ---------------------------------------------------------------------------------------------
class ProductNode:
    """``a ⊙ b`` (or ``a / b`` with ``divide``): ``g_a = wa · g ⊙ b``, ``g_b = wb · g ⊙ a``
    (``g_a = g / b`` and nothing to ``b`` for a quotient); ``a`` is kept only if needed."""

    def __init__(self, a, b, wa, wb, divide, shape_a):
        self.a, self.b, self.wa, self.wb, self.divide = a, b, wa, wb, divide
        self.shapes = (shape_a,)

    def backward(self, g):
        a, b = self.a, self.b
        self.a = self.b = None
        if self.divide:
            ga = sum_to(g / b, self.shapes[0]) if self.wa else None
            return (ga, None)
        ga = sum_to(g * b * self.wa, self.shapes[0]) if self.wa else None
        gb = sum_to(g * a * self.wb, b.shape) if self.wb else None
        return ga, gb


def _product_weights(rec, ma, mb, what):
    """(weight of a, weight of b) for the product ``a ⊙ b`` of two dependent tensors."""
    if ma.root is mb.root:  # an activation's own arithmetic: hold the nonlinear factor
        return (0.0, 1.0) if (not ma.linear and mb.linear) else (1.0, 0.0)
    if mb.kind == REDUCE and ma.kind != REDUCE:  # a normalisation factor is held constant
        return (1.0, 0.0)
    if ma.kind == REDUCE and mb.kind != REDUCE:
        return (0.0, 1.0)
    rule = rec.comp.product_rule
    if rule == "uniform":
        return (0.5, 0.5)
    if rule == "gradient":
        return (1.0, 1.0)
    ga, gb = ma.kind == GATE, mb.kind == GATE
    if gb != ga:
        return (1.0, 0.0) if gb else (0.0, 1.0)
    if ma.nonlin != mb.nonlin:
        return (1.0, 0.0) if mb.nonlin else (0.0, 1.0)
    uncovered(rec, f"{what} of two input-dependent tensors, neither of which is a gate",
              "choose Composite(product_rule='uniform' or 'gradient')")
    return (1.0, 1.0)


def _product(rec, func, kwargs, a, b, value, wa, wb, divide=False):
    """Connect ``value`` (``a ⊙ b`` or ``a / b``) to both factors through a ProductNode that
    keeps only what its backward reads; in-place ops write it into ``a``."""
    inplace = _inplace(func, kwargs)
    keep_a = wb != 0 and not divide
    node = ProductNode(None if not keep_a else (a.detach().clone() if inplace else a.detach()),
                       b.detach(), wa, wb, divide, a.shape)
    out = apply(node, [a, b], value)
    if keep_a and not inplace:
        rec.keep(a, node, "a")
    rec.keep(b, node, "b")
    ma = rec.meta(a)
    meta = Meta(ma.root, OTHER, True, False) if rec.meta(b).root is ma.root else Meta()
    if inplace:
        a.copy_(out)
        out = a
    rec.mark(out, meta)
    return out


@register("mul", "mul_", "multiply", "__mul__", "__rmul__", "__imul__")
def h_mul(rec, func, args, kwargs, deps):
    if len(args) < 2 or not all(isinstance(v, T) for v in args[:2]) or len(deps) != 2:
        return NotImplemented
    a, b = args[0], args[1]
    wa, wb = _product_weights(rec, rec.meta(a), rec.meta(b), f"'{_name(func)}'")
    with torch.no_grad():
        value = a * b
    return _product(rec, func, kwargs, a, b, value, wa, wb)


@register("div", "div_", "divide", "true_divide", "__truediv__", "__itruediv__")
def h_div(rec, func, args, kwargs, deps):
    """``a / b`` of two dependent tensors: the denominator is held constant (a norm)."""
    if len(args) < 2 or not all(isinstance(v, T) for v in args[:2]) or len(deps) != 2 or \
            kwargs.get("rounding_mode") is not None:
        return NotImplemented
    a, b = args[0], args[1]
    with torch.no_grad():
        value = a / b
    return _product(rec, func, kwargs, a, b, value, 1.0, 0.0, divide=True)


# ---------------------------------------------------------------------------------------------
# bilinear contractions of two dependent tensors (attention's q·kᵀ and A·v)
# ---------------------------------------------------------------------------------------------
def _bilinear_scales(rec, ma, mb, what):
    rule = rec.comp.bilinear_rule
    if rule == "uniform":
        return [0.5, 0.5]
    if rule == "gradient":
        return [1.0, 1.0]
    if rule == "cp":  # the attention probabilities (a softmax output) are held constant
        ga, gb = ma.kind == GATE, mb.kind == GATE
        if ga != gb:
            return [0.0, 1.0] if ga else [1.0, 0.0]
        return [0.0, 0.0]
    uncovered(rec, f"{what} of two input-dependent tensors (attention?)",
              "use a transformer composite ('attnlrp', 'cp_lrp') or "
              "Composite(bilinear_rule='uniform'|'cp'|'gradient')")
    return [1.0, 1.0]


def h_bilinear(rec, func, args, kwargs, deps):
    if len(deps) != 2:
        return default(rec, func, args, kwargs, deps)
    ma, mb = rec.meta(deps[0]), rec.meta(deps[1])
    scales = _bilinear_scales(rec, ma, mb, f"'{_name(func)}'")
    return _run_sub(rec, func, args, kwargs, deps, scales)


# ---------------------------------------------------------------------------------------------
# softmax (AttnLRP's rule is its plain gradient in this frame) and attention
# ---------------------------------------------------------------------------------------------
@register("softmax", "_softmax")
def h_softmax(rec, func, args, kwargs, deps):
    out = func(*args, **kwargs)
    rec.mark(out, Meta(kind=GATE, nonlin=True, nonneg=True))
    return out


@register("scaled_dot_product_attention", where=(F,))
def h_sdpa(rec, func, args, kwargs, deps):
    p = _bind(("query", "key", "value"), args, kwargs, {})
    q, k, v = p["query"], p["key"], p["value"]
    dq, dk, dv = ((rec.meta(t) is not None or t.requires_grad) for t in (q, k, v))
    rule = rec.comp.bilinear_rule
    if rule is None:
        uncovered(rec, "'scaled_dot_product_attention'",
                  "use a transformer composite ('attnlrp', 'cp_lrp') or "
                  "Composite(bilinear_rule='uniform'|'cp'|'gradient')")
        rule = "gradient"
    sc = {"uniform": (0.25, 0.25, 0.5), "cp": (0.0, 0.0, 1.0), "gradient": (1.0, 1.0, 1.0)}[rule]
    inputs = [t for t, d in zip((q, k, v), (dq, dk, dv)) if d]
    scales = [s for s, d in zip(sc, (dq, dk, dv)) if d]
    return _run_sub(rec, func, args, kwargs, inputs, scales)


# ---------------------------------------------------------------------------------------------
# LayerNorm / RMSNorm / GroupNorm: the identity rule (the std held constant)
# ---------------------------------------------------------------------------------------------
class NormNode:
    def __init__(self, inv, w, dims, center, groups=None):
        self.inv, self.w, self.dims, self.center, self.groups = inv, w, dims, center, groups

    def backward(self, g):
        gw = g if self.w is None else g * self.w
        if self.groups is not None:
            k = len(lead())
            gg = gw.reshape(gw.shape[:k + 1] + (self.groups, -1))
            if self.center:
                gg = gg - gg.mean(-1, keepdim=True)
            out = (gg * self.inv).reshape(gw.shape)
        else:
            if self.center:
                gw = gw - gw.mean(self.dims, keepdim=True)
            out = gw * self.inv
        self.inv = self.w = None
        return (out,)


def _norm_value(rec, func, args, kwargs, x, node, value=None):
    if value is None:
        with torch.no_grad():
            value = func(*args, **kwargs)
    out = apply(node, [x], value)
    rec.mark(out, Meta())
    return out


def _trailing_norm(center):
    """LayerNorm (``center``: mean and variance) or RMSNorm over the trailing dims."""
    names = ("input", "normalized_shape", "weight") + (("bias", "eps") if center else ("eps",))

    def h(rec, func, args, kwargs, deps):
        p = _bind(names, args, kwargs, {"weight": None, "bias": None,
                                        "eps": 1e-5 if center else None})
        x = p["input"]
        if rec.meta(x) is None or len(deps) != 1:
            return NotImplemented
        nd = len(tuple(p["normalized_shape"]))
        dims = tuple(range(-nd, 0))  # trailing: also with the leading dims of several targets
        eps = p["eps"] if p["eps"] is not None else torch.finfo(x.dtype).eps
        value = None
        with torch.no_grad():
            if center:  # the output and 1/std from one pass, as the model's layer_norm
                value, _, inv = torch.native_layer_norm(x, list(p["normalized_shape"]),
                                                        p["weight"], p["bias"], eps)
                inv = inv.to(x.dtype)
            else:
                inv = torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)
        w = None if p["weight"] is None else p["weight"].detach()
        return _norm_value(rec, func, args, kwargs, x, NormNode(inv, w, dims, center), value)
    return h


for _f in _funcs("layer_norm", where=(F, torch)):
    HANDLERS[_f] = _trailing_norm(True)
for _f in _funcs("rms_norm", where=(F, torch)):
    HANDLERS[_f] = _trailing_norm(False)


@register("group_norm", where=(F, torch))
def h_group_norm(rec, func, args, kwargs, deps):
    p = _bind(("input", "num_groups", "weight", "bias", "eps"), args, kwargs,
              {"weight": None, "bias": None, "eps": 1e-5})
    x = p["input"]
    if rec.meta(x) is None or len(deps) != 1:
        return NotImplemented
    G = int(p["num_groups"])
    N, C = x.shape[:2]
    with torch.no_grad():
        xg = x.reshape(N, G, -1)
        inv = torch.rsqrt(xg.var(-1, unbiased=False, keepdim=True) + p["eps"])
    w = None if p["weight"] is None else p["weight"].detach().reshape(
        (1, C) + (1,) * (x.dim() - 2))
    return _norm_value(rec, func, args, kwargs, x, NormNode(inv, w, None, True, groups=G))


# ---------------------------------------------------------------------------------------------
# dropout: eval mode only
# ---------------------------------------------------------------------------------------------
@register("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
          "feature_alpha_dropout", where=(F,))
def h_dropout(rec, func, args, kwargs, deps):
    p = _bind(("input", "p", "training", "inplace"), args, kwargs,
              {"p": 0.5, "training": True, "inplace": False})
    if p["training"] and p["p"] > 0:
        raise ValueError(f"explain: dropout in {rec.where()} is in training mode; call "
                         "model.eval() first (explain evaluates the model as in inference)")
    return NotImplemented



# ---------------------------------------------------------------------------------------------
# proportional rules: average pooling and sums of dependent tensors (LRP's Norm rule,
# ``R_in = a ⊙ Jᵀ(R / stab(y))``: in this frame the plain gradient of ``g · y / stab(y)``)
# ---------------------------------------------------------------------------------------------
def _module_rule(rec, types):
    """The composite's rule for the module running now, when it is one of ``types``."""
    if rec.module_stack:
        name, mod = rec.module_stack[-1]
        if isinstance(mod, types):
            return rec.comp.rule_for(name, mod)
    return None


def _proportional(rec, func, args, kwargs, deps, e):
    holder = {}

    def pre(g):
        y = holder["y"]
        return proportional(g, y, e)
    if deps is None:
        deps = [v for v in args if isinstance(v, T) and rec.meta(v) is not None]
    out = _run_sub(rec, func, args, kwargs, deps, [1.0] * len(deps), pre)
    holder["y"] = out.detach()
    return out


@register("avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
          "adaptive_avg_pool3d", where=(F, torch, torch._C._nn))
def h_avg_pool(rec, func, args, kwargs, deps):
    rule = _module_rule(rec, _comp.AVGPOOL_TYPES) or _comp.Norm()
    if rule.name != "norm" or len(deps) != 1 or rule.params["stabilizer"] == 0:
        return NotImplemented  # without a stabiliser the proportional rule is the gradient
    return _proportional(rec, func, args, kwargs, deps, rule.params["stabilizer"])


class SumNode:
    """The proportional rule of a sum ``y = a + b``: ``g_in = g · y / stab(y)`` to each term
    (summed over broadcast dims).  Keeps only ``y``."""

    def __init__(self, e, shapes):
        self.e, self.shapes = e, shapes
        self.y = None

    def backward(self, g):
        y, self.y = self.y, None
        gs = proportional(g, y, self.e)
        return tuple(sum_to(gs, sh) for sh in self.shapes)


@register("add", "add_", "__add__", "__radd__", "__iadd__")
def h_add(rec, func, args, kwargs, deps):
    if len(deps) != 2 or "alpha" in kwargs or len(args) != 2:
        return NotImplemented
    rule = rec.comp.sum_rule
    if rule.name != "norm" or rule.params["stabilizer"] == 0 or \
            rec.meta(deps[0]).root is rec.meta(deps[1]).root:
        return NotImplemented  # a sum inside an activation's arithmetic keeps its lineage
    a, b = args
    node = SumNode(rule.params["stabilizer"], (a.shape, b.shape))
    if _inplace(func, kwargs):  # a's old values are copied by whoever keeps them (_protect)
        out = apply_inplace(node, a, lambda t: func(t, b, **kwargs), [b])  # the model's a += b
    else:
        with torch.no_grad():
            value = a + b
        out = apply(node, [a, b], value)
        del value
    node.y = out.detach()
    rec.mark(out, Meta())
    rec.keep(out, node, "y")
    return out


# ---------------------------------------------------------------------------------------------
# nn.MultiheadAttention: its projections with their plain gradient (LRP-0), the attention
# through SDPA with the composite's bilinear rule at (q, k, v)
# ---------------------------------------------------------------------------------------------
_MHA_ARGS = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight",
             "in_proj_bias", "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight",
             "out_proj_bias", "training", "key_padding_mask", "need_weights", "attn_mask",
             "use_separate_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
             "static_k", "static_v", "average_attn_weights", "is_causal")


@register("multi_head_attention_forward", where=(F,))
def h_mha(rec, func, args, kwargs, deps):
    p = _bind(_MHA_ARGS, args, kwargs, {"training": True, "key_padding_mask": None,
                                        "need_weights": True, "attn_mask": None,
                                        "use_separate_proj_weight": False, "q_proj_weight": None,
                                        "k_proj_weight": None, "v_proj_weight": None,
                                        "static_k": None, "static_v": None,
                                        "average_attn_weights": True, "is_causal": False})
    if p["bias_k"] is not None or p["bias_v"] is not None or p["add_zero_attn"] or \
            p["static_k"] is not None or p["static_v"] is not None or \
            p["query"].dim() != 3:
        return NotImplemented
    if p["training"] and p["dropout_p"] > 0:
        raise ValueError(f"explain: {rec.where()} is in training mode; call model.eval() first")
    q, k, v = p["query"], p["key"], p["value"]
    L, N, E = q.shape
    S = k.shape[0]
    H = int(p["num_heads"])
    hd = E // H
    if p["use_separate_proj_weight"]:
        Wq, Wk, Wv = p["q_proj_weight"], p["k_proj_weight"], p["v_proj_weight"]
    else:
        Wq, Wk, Wv = p["in_proj_weight"].chunk(3)
    bq = bk = bv = None
    if p["in_proj_bias"] is not None:
        bq, bk, bv = p["in_proj_bias"].chunk(3)

    def heads(t, n):
        return t.reshape(n, N, H, hd).permute(1, 2, 0, 3)
    qh = heads(F.linear(q, Wq, bq), L)
    kh = heads(F.linear(k, Wk, bk), S)
    vh = heads(F.linear(v, Wv, bv), S)
    mask = None
    am, kpm = p["attn_mask"], p["key_padding_mask"]
    if am is not None:
        am = am.reshape(N, H, L, S) if am.dim() == 3 else am
        mask = am.logical_not() if am.dtype == torch.bool else am
    if kpm is not None:
        km = kpm.reshape(N, 1, 1, S)
        km = km.logical_not() if km.dtype == torch.bool else km
        if mask is None:
            mask = km
        elif mask.dtype == torch.bool and km.dtype == torch.bool:
            mask = mask & km
        else:
            to_f = (lambda m: torch.zeros(m.shape, dtype=qh.dtype, device=qh.device).masked_fill(
                m.logical_not(), float("-inf")) if m.dtype == torch.bool else m)
            mask = to_f(mask) + to_f(km)
    sdpa_kw = {"attn_mask": mask, "is_causal": bool(p["is_causal"]) and mask is None}
    att = h_sdpa(rec, F.scaled_dot_product_attention, (qh, kh, vh), sdpa_kw, [qh, kh, vh])
    o = att.permute(2, 0, 1, 3).reshape(L, N, E)
    out = F.linear(o, p["out_proj_weight"], p["out_proj_bias"])
    rec.mark(out, Meta())
    weights = None
    if p["need_weights"]:
        with torch.no_grad():
            s = (qh @ kh.transpose(-1, -2)) / math.sqrt(hd)
            if mask is not None:
                s = s.masked_fill(mask.logical_not(), float("-inf")) if mask.dtype == torch.bool \
                    else s + mask
            weights = s.softmax(-1)
            if p["average_attn_weights"]:
                weights = weights.mean(1)
    return out, weights
