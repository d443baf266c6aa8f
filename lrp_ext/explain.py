"""Model-level LRP: ``explain(model, x, target)`` -> relevance at ``x``.

How it works
------------
1. The model is traced with ``torch.fx`` (``torch.fx.Tracer().trace``; the graph is cached per
   model and re-traced when the model's modules or training flags change).  Standard
   ``torch.nn`` layers are leaves; residual additions, ``torch.flatten``, functional
   activations etc. appear as graph nodes.
2. A plan assigns each node on the path from ``x`` to the output its rule (see
   ``lrp_ext.composite``): Linear/conv layers get the composite's LRP rule (BatchNorm right
   after a layer is merged into copies of its weight and bias, ``lrp_ext.canonize``); the sum
   of two model-dependent tensors gets the proportional rule; elementwise activations pass
   relevance unchanged; average pooling gets the proportional rule; everything else without
   parameters (max pooling, dropout, flatten/reshape/indexing, ...) the plain gradient.
   A module with parameters that no rule covers is an error naming its path and type.
3. One forward pass runs the graph node by node (no hooks), keeping what the rules need: the
   input of each layer, and its output when the rule uses it (ε, γ, αβ on convolutions).
   Nodes that use the plain gradient record their own small autograd graph.
4. The nodes are walked in reverse, each rule turning the relevance at its output into
   relevance at its inputs; relevance arriving from several consumers is summed.

The model is never modified (no hooks, no parameter changes, no training-flag changes), so
concurrent calls from several threads with the same model are safe.  In-place operations of
the model (``ReLU(inplace=True)``, ``out += identity``) are run out of place where their input
is still needed.  Models that ``torch.fx`` cannot trace (data-dependent control flow) raise a
``TypeError`` saying so.
"""
from __future__ import annotations

import math
import operator
import threading
import weakref

import torch
import torch.fx
import torch.nn.functional as F

from . import canonize as _canon
from . import composite as _comp
from . import conv as _conv
from . import rules as _rules

__all__ = ["explain"]

_LOCK = threading.RLock()  # fx tracing patches nn.Module globally: no forward may overlap it
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

_INPLACE_FUNCS = {operator.iadd: operator.add, operator.isub: operator.sub,
                  operator.imul: operator.mul, operator.itruediv: operator.truediv}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_", "__add__", "__iadd__", "__radd__"}
_ACT_FUNCS = set()
for _mod, _names in ((torch, ("relu", "relu_", "sigmoid", "tanh", "sigmoid_", "tanh_")),
                     (F, ("relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_",
                          "selu", "celu", "gelu", "silu", "mish", "sigmoid", "tanh", "softplus",
                          "softsign", "hardtanh", "hardtanh_", "hardswish", "hardsigmoid",
                          "logsigmoid", "tanhshrink", "softshrink", "hardshrink", "threshold"))):
    for _n in _names:
        if hasattr(_mod, _n):
            _ACT_FUNCS.add(getattr(_mod, _n))
_ACT_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_"}
_AVGPOOL_FUNCS = {getattr(F, n) for n in ("avg_pool1d", "avg_pool2d", "avg_pool3d",
                                          "adaptive_avg_pool1d", "adaptive_avg_pool2d",
                                          "adaptive_avg_pool3d")}
_TRAIN_SENSITIVE = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.dropout._DropoutNd)
_Z_RULES = {"epsilon", "zero", "gamma", "alpha_beta"}  # conv rules that reuse the output


class _Node:
    """Per-node plan: ``kind`` in layer / pass / norm / sum / grad / getitem."""

    __slots__ = ("kind", "rule", "module", "bn", "bn_module", "zsrc", "nonneg", "a_relu_of")

    def __init__(self, kind, rule=None, module=None):
        self.kind, self.rule, self.module = kind, rule, module
        self.bn = self.bn_module = self.zsrc = None
        self.nonneg = False
        self.a_relu_of = None  # the layer input is relu(value of this node), kept anyway


# ---------------------------------------------------------------------------------------------
# tracing
# ---------------------------------------------------------------------------------------------
def _model_key(model):
    return (type(model).forward,
            tuple((n, id(m), type(m), m.training) for n, m in model.named_modules()))


def _trace(model):
    key = _model_key(model)
    with _LOCK:
        hit = _CACHE.get(model)
        if hit is not None and hit[0] == key:
            return hit[1]
        try:
            graph = torch.fx.Tracer().trace(model)
        except Exception as exc:
            raise TypeError(
                f"explain: torch.fx cannot trace {type(model).__name__} "
                f"({type(exc).__name__}: {exc}); explain needs a model that torch.fx."
                "symbolic_trace can trace (no data-dependent control flow)") from None
        _CACHE[model] = (key, graph)
        return graph


def _fetch_attr(model, target):
    obj = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _is_float_tensor(v):
    return isinstance(v, torch.Tensor) and v.is_floating_point()


# ---------------------------------------------------------------------------------------------
# planning
# ---------------------------------------------------------------------------------------------
def _has_params(mod):
    return any(True for _ in mod.parameters(recurse=True))


def _param_args(node, model):
    out = []
    for inp in node.all_input_nodes:
        if inp.op == "get_attr":
            v = _fetch_attr(model, inp.target)
            if isinstance(v, torch.nn.Parameter):
                out.append(inp.target)
    return out


_NONNEG_MODULES = (torch.nn.ReLU, torch.nn.ReLU6)
_NONNEG_FUNCS = {torch.relu, F.relu, F.relu6}
_KEEP_SIGN_MODULES = (torch.nn.modules.pooling._MaxPoolNd, torch.nn.modules.pooling._AvgPoolNd,
                      torch.nn.modules.pooling._AdaptiveAvgPoolNd,
                      torch.nn.modules.pooling._AdaptiveMaxPoolNd, torch.nn.Flatten,
                      torch.nn.Unflatten, torch.nn.Identity, torch.nn.modules.dropout._DropoutNd)
_KEEP_SIGN_FUNCS = {torch.flatten, torch.reshape} | _AVGPOOL_FUNCS | {
    getattr(F, n) for n in ("max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d",
                            "adaptive_max_pool2d", "adaptive_max_pool3d", "dropout")}
_KEEP_SIGN_METHODS = {"flatten", "view", "reshape", "contiguous", "relu"}


_MAXPOOL = (torch.nn.MaxPool1d, torch.nn.MaxPool2d, torch.nn.MaxPool3d)
_MAXPOOL_FN = {torch.nn.MaxPool1d: (F.max_pool1d, 1), torch.nn.MaxPool2d: (F.max_pool2d, 2),
               torch.nn.MaxPool3d: (F.max_pool3d, 3)}


def _relu_input(node, modules):
    """The input node of ``node`` when ``node`` is a plain ReLU, else None."""
    if not isinstance(node, torch.fx.Node) or not node.args or \
            not isinstance(node.args[0], torch.fx.Node):
        return None
    if node.op == "call_module" and type(modules[node.target]) is torch.nn.ReLU:
        return node.args[0]
    if node.op == "call_function" and node.target in (torch.relu, F.relu):
        return node.args[0]
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return node.args[0]
    return None


def _nonneg_nodes(nodes, modules):
    """Nodes whose value is >= 0 by construction (ReLU outputs and what keeps their sign)."""
    out = set()
    for n in nodes:
        first = n.args[0] if n.args else None
        first_nn = isinstance(first, torch.fx.Node) and first in out
        if n.op == "call_module":
            mod = modules[n.target]
            if isinstance(mod, _NONNEG_MODULES) or (isinstance(mod, _KEEP_SIGN_MODULES)
                                                    and first_nn):
                out.add(n)
        elif n.op == "call_function":
            if n.target in _NONNEG_FUNCS or (n.target in _KEEP_SIGN_FUNCS and first_nn):
                out.add(n)
            elif n.target in _ADD_FUNCS and len(n.args) == 2 and not n.kwargs and \
                    all(isinstance(a, torch.fx.Node) and a in out for a in n.args):
                out.add(n)
        elif n.op == "call_method":
            if n.target in ("relu", "relu_") or (n.target in _KEEP_SIGN_METHODS and first_nn):
                out.add(n)
    return out


def _plan(graph, model, comp, canonize, have_bounds):
    modules = dict(model.named_modules())
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if not placeholders:
        raise TypeError("explain: the model's forward takes no input")
    x_node = placeholders[0]
    for p in placeholders[1:]:
        if not p.args:
            raise TypeError(f"explain: the model's forward takes more than one input "
                            f"('{x_node.target}', '{p.target}', ...); explain supports one "
                            "tensor input (others need defaults)")
    depends = {x_node}
    for n in nodes:
        if n not in depends and any(i in depends for i in n.all_input_nodes):
            depends.add(n)
    merges = _canon.find_batchnorm_merges(nodes, modules, depends) if canonize else {}
    merged_bn = set(merges.values())
    nonneg = _nonneg_nodes(nodes, modules)
    plan = {}
    stored = set()
    first_done = False
    for n in nodes:
        if n not in depends or n.op in ("placeholder", "output"):
            continue
        if n.op == "call_module":
            mod = modules[n.target]
            path = f"'{n.target}' ({type(mod).__name__})"
            if isinstance(mod, _TRAIN_SENSITIVE) and mod.training:
                raise ValueError(f"explain: module {path} is in training mode; call model.eval() "
                                 "first (explain evaluates the model as in inference)")
            if isinstance(mod, _canon.LAYER_TYPES):
                first = False
                if not first_done and comp.first_rule(mod) is not None:
                    first = first_done = True
                rule = comp.rule_for(n.target, mod, first)
                if rule is None:
                    raise ValueError(f"explain: no rule of composite {comp.name!r} covers layer "
                                     f"{path}")
                if rule.layer:
                    p = _Node("layer", rule, mod)
                    p.bn = merges.get(n)
                    p.nonneg = n.args[0] in nonneg
                    if p.bn is not None:
                        p.bn_module = modules[p.bn.target]
                    src = _relu_input(n.args[0], modules)
                    if src is not None and src in stored:
                        p.a_relu_of = src  # keep nothing new: recompute relu(src) later
                    else:
                        stored.add(n.args[0])
                    if isinstance(mod, _comp.CONV_TYPES) and (
                            rule.name in ("epsilon", "zero", "gamma")
                            or (rule.name == "alpha_beta" and rule.params["beta"] != 0)):
                        p.zsrc = p.bn if p.bn is not None else n
                        stored.add(p.zsrc)
                    if rule.name == "z_box" and not have_bounds and (
                            rule.params["low"] is None or rule.params["high"] is None):
                        raise ValueError(f"explain: composite {comp.name!r} applies the z_box "
                                         f"rule to layer {path} and needs low and high (the "
                                         "lowest and highest input values), e.g. low=-3.0, "
                                         "high=3.0")
                    plan[n] = p
                elif rule.name == "gradient":
                    plan[n] = _Node("grad", rule, mod)
                    stored.add(n.args[0])
                    stored.add(n)
                else:
                    raise ValueError(f"explain: rule {rule!r} cannot be used for layer {path}")
                continue
            if n in merged_bn:
                plan[n] = _Node("pass", None, mod)
                continue
            rule = comp.rule_for(n.target, mod)
            if rule is None and isinstance(mod, _MAXPOOL) and not mod.return_indices:
                plan[n] = _Node("maxpool", None, mod)  # winner takes all, from the indices
                continue
            if rule is None:
                if _has_params(mod):
                    raise ValueError(f"explain: module {path} has parameters and no rule of "
                                     f"composite {comp.name!r} covers it")
                plan[n] = _Node("grad", None, mod)
            elif rule.layer:
                raise ValueError(f"explain: layer rule {rule!r} cannot be used for module "
                                 f"{path} (only for Linear and convolution layers)")
            else:
                plan[n] = _Node({"pass": "pass", "norm": "norm", "gradient": "grad"}[rule.name],
                                rule, mod)
            continue
        # call_function / call_method
        if n.op == "call_function" and n.target is operator.getitem:
            plan[n] = _Node("getitem")
            continue
        tensor_deps = [i for i in n.all_input_nodes if i in depends]
        is_add = ((n.op == "call_function" and n.target in _ADD_FUNCS)
                  or (n.op == "call_method" and n.target in _ADD_METHODS)) \
            and "alpha" not in n.kwargs and len(n.args) == 2
        if is_add and all(isinstance(a, torch.fx.Node) and a in depends for a in n.args):
            plan[n] = _Node("sum", comp.sum_rule)
            if comp.sum_rule.name == "gradient":
                plan[n].kind = "grad"
            elif comp.sum_rule.name == "pass":
                raise ValueError("explain: Pass cannot be the rule of a sum of two tensors")
            stored.update(n.args)
            stored.add(n)
            continue
        if is_add:
            plan[n] = _Node("grad")
        elif (n.op == "call_function" and n.target in _ACT_FUNCS) or \
                (n.op == "call_method" and n.target in _ACT_METHODS):
            plan[n] = _Node("pass")
            continue
        elif n.op == "call_function" and n.target in _AVGPOOL_FUNCS:
            plan[n] = _Node("norm", _comp.Norm())
        else:
            params = _param_args(n, model)
            if params:
                raise ValueError(f"explain: operation '{n.name}' ({n.target if isinstance(n.target, str) else getattr(n.target, '__name__', n.target)}) "
                                 f"uses parameter(s) {', '.join(params)} and no LRP rule covers "
                                 "it; wrap it in an nn.Linear / nn.Conv module")
            plan[n] = _Node("grad")
        stored.update(tensor_deps)
        stored.add(n)
    return nodes, x_node, depends, plan, stored


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------
def _inplace_module(mod):
    return bool(getattr(mod, "inplace", False))


def _forward(nodes, x_node, depends, plan, stored, model, x):
    env = {}
    saved = {}
    remaining = {n: len(n.users) for n in nodes}
    layer_of_z = {}
    for n, p in plan.items():
        if p.kind == "layer":
            saved[n] = {}
            if p.a_relu_of is not None:
                remaining[p.a_relu_of] += 1
            if p.zsrc is not None:
                layer_of_z[p.zsrc] = n
    out = None
    for n in nodes:
        op = n.op
        if op == "placeholder":
            if n is x_node:
                env[n] = x
            else:
                env[n] = n.args[0]
        elif op == "get_attr":
            env[n] = _fetch_attr(model, n.target)
        elif op == "output":
            out = torch.fx.node.map_arg(n.args[0], lambda m: env[m])
            break
        else:
            p = plan.get(n)
            if p is not None and p.kind == "getitem" and \
                    isinstance(env.get(n.args[0]), torch.Tensor):
                p.kind = "grad"  # indexing a tensor (not a tuple of outputs): plain gradient
            args = torch.fx.node.map_arg(n.args, lambda m: env[m])
            kwargs = torch.fx.node.map_arg(n.kwargs, lambda m: env[m])
            if op == "call_module":
                fn = model.get_submodule(n.target)
            elif op == "call_function":
                fn = n.target
            else:
                fn = None
            if p is not None and p.kind == "maxpool":
                m = p.module
                xin = args[0]
                res, idx = _MAXPOOL_FN[type(m)][0](xin, m.kernel_size, m.stride, m.padding,
                                                   m.dilation, ceil_mode=m.ceil_mode,
                                                   return_indices=True)
                saved[n] = (idx, tuple(xin.shape))
                env[n] = res
            elif p is not None and p.kind in ("grad", "norm"):
                leaves = {}

                def _leaf(m):
                    v = env[m]
                    if m in depends and _is_float_tensor(v):
                        if m not in leaves:
                            leaves[m] = v.detach().requires_grad_(True)
                        return leaves[m]
                    return v
                args = torch.fx.node.map_arg(n.args, _leaf)
                kwargs = torch.fx.node.map_arg(n.kwargs, _leaf)
                if op == "call_function" and fn in _INPLACE_FUNCS:
                    fn = _INPLACE_FUNCS[fn]
                with torch.enable_grad():
                    if op == "call_method":
                        name = n.target
                        if name.endswith("_") and not name.endswith("__") and \
                                hasattr(args[0], name[:-1]):
                            name = name[:-1]
                        res = getattr(args[0], name)(*args[1:], **kwargs)
                    else:
                        if op == "call_module" and _inplace_module(fn) and args and \
                                isinstance(args[0], torch.Tensor):
                            args = (args[0].clone(),) + tuple(args[1:])
                        res = fn(*args, **kwargs)
                if leaves and (isinstance(res, torch.Tensor) or
                               (isinstance(res, (tuple, list)) and res and
                                all(isinstance(r, torch.Tensor) for r in res))):
                    saved[n] = (list(leaves.items()), res)
                if isinstance(res, torch.Tensor):
                    env[n] = res.detach()
                elif isinstance(res, (tuple, list)):
                    env[n] = type(res)(r.detach() if isinstance(r, torch.Tensor) else r
                                       for r in res)
                else:
                    env[n] = res
            else:
                # in-place operations whose input is kept for later: run out of place
                first = n.args[0] if n.args else None
                protect = isinstance(first, torch.fx.Node) and first in stored
                if op == "call_function" and fn in _INPLACE_FUNCS:
                    fn = _INPLACE_FUNCS[fn]
                if op == "call_function" and kwargs.get("inplace", False) and protect:
                    kwargs = dict(kwargs, inplace=False)
                if op == "call_method":
                    name = n.target
                    if protect and name.endswith("_") and not name.endswith("__") and \
                            hasattr(args[0], name[:-1]):
                        name = name[:-1]
                    res = getattr(args[0], name)(*args[1:], **kwargs)
                else:
                    if op == "call_module" and protect and _inplace_module(fn):
                        if type(fn) is torch.nn.ReLU and not fn._forward_hooks and \
                                not fn._forward_pre_hooks:
                            fn = torch.relu
                        else:
                            args = (args[0].clone(),) + tuple(args[1:])
                    res = fn(*args, **kwargs)
                env[n] = res
                if p is not None:
                    if p.kind == "pass" and args and isinstance(args[0], torch.Tensor):
                        saved[n] = tuple(args[0].shape)
                    if p.kind == "layer":
                        if p.a_relu_of is not None:
                            saved[n]["a_relu"] = env[p.a_relu_of]
                            remaining[p.a_relu_of] -= 1
                            if remaining[p.a_relu_of] == 0 and p.a_relu_of is not x_node:
                                env.pop(p.a_relu_of, None)
                        else:
                            saved[n]["a"] = env[n.args[0]]
                    elif p.kind == "sum":
                        saved[n] = (env[n.args[0]], env[n.args[1]], res)
                if n in layer_of_z:
                    saved[layer_of_z[n]]["z"] = res
            # free values nobody needs any more
            for i in n.all_input_nodes:
                remaining[i] -= 1
                if remaining[i] == 0 and i is not x_node:
                    env.pop(i, None)
    return out, saved


# ---------------------------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------------------------
def _stab(z, e):
    """``z + e·sgn(z)``, sgn(0) = sgn(-0.0) = +1 (the rule specification's stabilizer)."""
    return _conv._stab(z, e)


def _reduce_to(t, shape):
    if tuple(t.shape) == tuple(shape):
        return t
    while t.dim() > len(shape):
        t = t.sum(0)
    dims = [d for d, (s, ts) in enumerate(zip(shape, t.shape)) if s == 1 and ts != 1]
    return t.sum(dim=dims, keepdim=True) if dims else t


def _layer_params(p):
    mod = p.module
    if p.bn_module is not None:
        return _canon.merged_parameters(mod, p.bn_module)
    return mod.weight.detach(), None if mod.bias is None else mod.bias.detach()


def _layer_rule(n, p, R, saved, low, high):
    st = saved.pop(n)
    a = torch.relu(st["a_relu"]) if "a_relu" in st else st["a"]
    rule = p.rule
    params = dict(rule.params)
    if rule.name == "z_box":
        params["low"] = low if params["low"] is None else params["low"]
        params["high"] = high if params["high"] is None else params["high"]
    W, b = _layer_params(p)
    mod = p.module
    if isinstance(mod, torch.nn.Linear):
        fn = getattr(_rules, rule.name)
        if rule.name == "z_box":
            return fn(R, a, W, b, params.pop("low"), params.pop("high"), **params)
        return fn(R, a, W, b, **params)
    spec = _conv.conv_spec(mod, rule=rule.name).with_params(W, b)
    return _conv.apply_spec(rule.name, R, a, spec, output=st.get("z"), nonneg=p.nonneg,
                            **params)


def _backward(nodes, x_node, depends, plan, saved, out_node, R, low, high):
    rel = {}
    if isinstance(out_node, torch.fx.Node):
        rel[out_node] = R

    def give(node, t):
        if not isinstance(node, torch.fx.Node) or node not in depends or t is None:
            return
        prev = rel.get(node)
        if prev is None:
            rel[node] = t
        elif isinstance(prev, dict):
            for k, v in t.items():
                prev[k] = v if k not in prev else prev[k] + v
        else:
            rel[node] = prev + t

    for n in reversed(nodes):
        if n is x_node:
            break
        Rn = rel.pop(n, None)
        if Rn is None:
            saved.pop(n, None)
            continue
        p = plan.get(n)
        if p is None:
            continue
        kind = p.kind
        if kind == "pass":
            src = n.args[0]
            in_shape = saved.pop(n, None)
            if isinstance(Rn, torch.Tensor) and in_shape is not None and \
                    in_shape != tuple(Rn.shape):
                raise ValueError(f"explain: rule Pass at '{n.name}' needs equal input and "
                                 f"output shapes, got {in_shape} -> {tuple(Rn.shape)}")
            give(src, Rn)
        elif kind == "layer":
            give(n.args[0], _layer_rule(n, p, Rn, saved, low, high))
        elif kind == "sum":
            a, b, z = saved.pop(n)
            e = p.rule.params.get("stabilizer", 1e-6)
            s = Rn / _stab(z, e)
            give(n.args[0], _reduce_to(a * s, a.shape))
            give(n.args[1], _reduce_to(b * s, b.shape))
        elif kind == "maxpool":  # the plain gradient: each output's relevance to its argmax
            idx, in_shape = saved.pop(n)
            nd = _MAXPOOL_FN[type(p.module)][1]
            lead = math.prod(in_shape[:len(in_shape) - nd])
            g = torch.zeros((lead, math.prod(in_shape[len(in_shape) - nd:])), dtype=Rn.dtype,
                            device=Rn.device)
            g.scatter_add_(1, idx.reshape(lead, -1), Rn.reshape(lead, -1))
            give(n.args[0], g.reshape(in_shape))
        elif kind == "getitem":
            give(n.args[0], {n.args[1]: Rn})
        elif kind in ("grad", "norm"):
            st = saved.pop(n, None)
            if st is None:
                continue
            leaves, res = st
            if isinstance(Rn, dict):
                outs = [res[k] for k in Rn]
                grads = list(Rn.values())
            else:
                outs, grads = [res], [Rn]
            if kind == "norm":
                e = p.rule.params.get("stabilizer", 1e-6)
                grads = [g / _stab(o.detach(), e) for g, o in zip(grads, outs)]
            got = torch.autograd.grad(outs, [lf for _, lf in leaves], grads, allow_unused=True)
            for (node, leaf), g in zip(leaves, got):
                if g is None:
                    continue
                give(node, leaf.detach() * g if kind == "norm" else g)
    return rel.get(x_node)


# ---------------------------------------------------------------------------------------------
# public entry
# ---------------------------------------------------------------------------------------------
def _output_relevance(out, target, relevance):
    if relevance is not None:
        if not isinstance(relevance, torch.Tensor):
            raise TypeError(f"explain: relevance must be a tensor, got "
                            f"{type(relevance).__name__}")
        if tuple(relevance.shape) != tuple(out.shape):
            raise ValueError(f"explain: relevance must have the model output's shape "
                             f"{tuple(out.shape)}, got {tuple(relevance.shape)}")
        return relevance.detach().to(dtype=out.dtype, device=out.device)
    if out.dim() < 2:
        raise ValueError(f"explain: target needs an output of shape (N, classes, ...), got "
                         f"{tuple(out.shape)}; pass relevance= instead")
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
        idx = idx.long().reshape(-1)
        if idx.numel() == 1:
            idx = idx.expand(N)
        if idx.numel() != N:
            raise ValueError(f"explain: target has {idx.numel()} entries but the batch has "
                             f"{N} samples")
    if N and (int(idx.min()) < 0 or int(idx.max()) >= K):
        raise ValueError(f"explain: target index out of range for an output with {K} "
                         f"classes: {idx.tolist()}")
    mask = torch.zeros(out.shape, dtype=torch.bool, device=out.device)
    shape = (N, 1) + (1,) * (out.dim() - 2)
    mask.scatter_(1, idx.reshape(shape).expand((N, 1) + tuple(out.shape[2:])), True)
    return torch.where(mask, out, torch.zeros((), dtype=out.dtype, device=out.device))


def explain(model, x, target=None, *, relevance=None, composite="epsilon_gamma_box",
            low=None, high=None, canonize=True, return_output=False):
    """LRP relevance of ``model`` at ``x``.

    Parameters
    ----------
    model: ``nn.Module`` in eval mode, traceable by ``torch.fx``; it is not modified.
    x: the input tensor (one tensor input).
    target: int, or per-sample class indices: the output relevance is the one-hot mask times
        the output (the logit of the target class, zeros elsewhere).
    relevance: the output relevance itself (same shape as ``model(x)``), used as given.
        Exactly one of ``target`` and ``relevance``.
    composite: a preset name (``epsilon_gamma_box``, ``epsilon_plus``, ``epsilon_plus_flat``,
        ``epsilon_alpha2_beta1``, ``epsilon_alpha2_beta1_flat``) or an ``lrp_ext.Composite``.
    low, high: bounds of the input for the z_box rule (floats or tensors broadcastable to the
        first layer's input); required by ``epsilon_gamma_box``.
    canonize: merge BatchNorm layers into the preceding Linear/conv layer (on copies).
    return_output: also return the model output.

    Returns the relevance at ``x`` (``x``'s shape), or ``(relevance, output)``.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"explain: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"explain: x must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"explain: x must be a floating tensor, got dtype {x.dtype}")
    if (target is None) == (relevance is None):
        raise ValueError("explain: pass exactly one of target (class index) and relevance "
                         "(output relevance)"
                         + (", not both" if target is not None else "; got neither"))
    comp = _comp.get_composite(composite)
    graph = _trace(model)
    have_bounds = low is not None and high is not None
    nodes, x_node, depends, plan, stored = _plan(graph, model, comp, canonize, have_bounds)
    x = x.detach()
    with _LOCK, torch.no_grad():
        out, saved = _forward(nodes, x_node, depends, plan, stored, model, x)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"explain: the model must return one tensor, got {type(out).__name__}")
    out_node = [n for n in nodes if n.op == "output"][0].args[0]
    R = _output_relevance(out, target, relevance)
    with torch.no_grad():
        Rx = _backward(nodes, x_node, depends, plan, saved, out_node, R, low, high)
    if Rx is None:
        Rx = torch.zeros_like(x)
    if return_output:
        return Rx, out
    return Rx
