"""Composites: which LRP rule each layer of a model gets.

A :class:`Composite` maps modules to rules by module name (``name_map``, highest priority), by
"first layer" (``first_map``: the first Linear/conv layer in execution order that matches one
of its types gets that rule, once), then by type (``layer_map``, first match wins), then by the
base map shared by all presets:

- elementwise activations (ReLU, GELU, SiLU, Tanh, Sigmoid, ...): ``Pass`` (relevance unchanged);
- AvgPool / AdaptiveAvgPool: ``Norm`` (proportional rule);
- BatchNorm that could not be merged into its layer: ``Pass``.

Rules: layer rules ``Zero()``, ``Epsilon(epsilon)``, ``Gamma(gamma, stabilizer)``,
``AlphaBeta(alpha, beta, stabilizer)``, ``ZPlus()``, ``Flat()``, ``WSquare()``,
``ZBox(low, high)`` (``None`` bounds are taken from ``explain(low=, high=)``) for Linear and
conv layers; ``Pass()``, ``Norm(stabilizer)``, ``Gradient()`` for the others.  A rule may also
be given as its name (``"gamma"``) or as ``(name, {params})``.

Presets (the layer maps of zennit 0.5.1's composites of the same names):

==========================  =========================================================
``epsilon_gamma_box``       conv: Gamma(0.25); Linear: Epsilon(1e-6); first conv: ZBox
``epsilon_plus``            conv: ZPlus; Linear: Epsilon
``epsilon_plus_flat``       conv: ZPlus; Linear: Epsilon; first Linear/conv: Flat
``epsilon_alpha2_beta1``    conv: AlphaBeta(2, 1); Linear: Epsilon
``epsilon_alpha2_beta1_flat``  as above; first Linear/conv: Flat
==========================  =========================================================

("conv" covers Conv1d/2d/3d and ConvTranspose1d/2d/3d.)  The residual sum of branches
(``a + b`` of two model-dependent tensors) always uses ``Composite.sum_rule`` (``Norm``).
"""
from __future__ import annotations

import inspect

import torch

from . import _checks, _table

__all__ = ["Rule", "Zero", "Epsilon", "Gamma", "AlphaBeta", "ZPlus", "Flat", "WSquare", "ZBox",
           "Pass", "Norm", "Gradient", "Composite", "PRESETS", "get_composite", "as_rule",
           "CONV_TYPES", "LINEAR_TYPES", "ACTIVATION_TYPES", "AVGPOOL_TYPES"]

CONV_TYPES = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose1d,
              torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
LINEAR_TYPES = (torch.nn.Linear,)
ACTIVATION_TYPES = tuple(getattr(torch.nn, n) for n in (
    "ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish",
    "Sigmoid", "Tanh", "Softplus", "Softsign", "Hardtanh", "Hardswish", "Hardsigmoid",
    "LogSigmoid", "Tanhshrink", "Softshrink", "Hardshrink", "Threshold") if hasattr(torch.nn, n))
AVGPOOL_TYPES = (torch.nn.modules.pooling._AvgPoolNd, torch.nn.modules.pooling._AdaptiveAvgPoolNd)
BATCHNORM_TYPES = (torch.nn.modules.batchnorm._BatchNorm,)


class Rule:
    """Base class of rules.  ``layer`` is True for the rules of Linear/conv layers."""

    name = ""
    layer = False

    def __init__(self, **params):
        self.params = params

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.params == other.params

    __hash__ = None


class _LayerRule(Rule):
    layer = True


def _layer_rule(cls_name, rule, doc, **extra):
    """A ``Rule`` class for layer rule ``rule`` of the rule table: its constructor takes the
    table's parameters (with their defaults) and checks them there."""
    spec = _table.RULES[rule]
    P = inspect.Parameter
    sig = inspect.Signature([P("self", P.POSITIONAL_OR_KEYWORD)] +
                            [P(p.name, P.POSITIONAL_OR_KEYWORD, default=p.default)
                             for p in spec.params])

    def __init__(self, *args, **kwargs):
        bound = sig.bind(self, *args, **kwargs)
        bound.arguments.pop("self")
        _LayerRule.__init__(self, **_table.check(rule, **bound.arguments))
    __init__.__signature__ = sig
    return type(cls_name, (_LayerRule,), dict(name=rule, __init__=__init__, __doc__=doc,
                                               __module__=__name__, **extra))


Zero = _layer_rule("Zero", "zero", "LRP-0 (LRP-ε with ε = 1e-9).")
Epsilon = _layer_rule("Epsilon", "epsilon", "LRP-ε.")
Gamma = _layer_rule("Gamma", "gamma", "Sign-generalised LRP-γ.")
AlphaBeta = _layer_rule("AlphaBeta", "alpha_beta", "LRP-αβ (α ≥ 0, β ≥ 0, α − β = 1).")
ZPlus = _layer_rule("ZPlus", "z_plus", "LRP-z⁺ (LRP-αβ with α = 1, β = 0).")
Flat = _layer_rule("Flat", "flat", "Flat rule (inputs and weights replaced by ones).")
WSquare = _layer_rule("WSquare", "w_square", "LRP-w².")
ZBox = _layer_rule("ZBox", "z_box", "LRP-z^B; ``low``/``high`` None: use the bounds passed to "
                   "``explain``.", __eq__=lambda self, other: self is other, __hash__=None)


class Pass(Rule):
    """Relevance passes unchanged (elementwise layers)."""
    name = "pass"


class Norm(Rule):
    """Proportional rule ``R_in = a ⊙ Jᵀ(R / stab(f(a), e))`` (pooling, sums)."""
    name = "norm"

    def __init__(self, stabilizer: float = 1e-6):
        super().__init__(stabilizer=_checks.stabilizer(stabilizer, "stabilizer"))


class Gradient(Rule):
    """Plain gradient (the layer's Jacobian transposed applied to the relevance)."""
    name = "gradient"


_BY_NAME = {c.name: c for c in (Zero, Epsilon, Gamma, AlphaBeta, ZPlus, Flat, WSquare, ZBox,
                                Pass, Norm, Gradient)}


def as_rule(spec) -> Rule:
    """A :class:`Rule` from a Rule, a rule name or ``(name, {params})``."""
    if isinstance(spec, Rule):
        return spec
    if isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) \
            and isinstance(spec[1], dict):
        name, params = spec
    else:
        raise TypeError(f"a rule must be a lrp_ext Rule, a rule name or (name, params), got "
                        f"{spec!r}")
    if name not in _BY_NAME:
        raise ValueError(f"unknown rule {name!r}; known: {', '.join(sorted(_BY_NAME))}")
    try:
        return _BY_NAME[name](**params)
    except TypeError as exc:
        raise TypeError(f"rule {name!r}: {exc}") from None


def _as_map(m, what):
    if m is None:
        return []
    if isinstance(m, dict):
        m = list(m.items())
    out = []
    for entry in m:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2):
            raise TypeError(f"{what} entries must be (module type(s), rule), got {entry!r}")
        types, rule = entry
        types = types if isinstance(types, tuple) else (types,)
        for t in types:
            if not (isinstance(t, type) and issubclass(t, torch.nn.Module)):
                raise TypeError(f"{what}: {t!r} is not an nn.Module subclass")
        out.append((types, as_rule(rule)))
    return out


class Composite:
    """Rules for a model's layers by module name, first layer and module type.

    Parameters
    ----------
    layer_map: list of ``(type or tuple of types, rule)`` (or a dict); first match wins.
    name_map: dict ``{qualified module name: rule}``; wins over everything else.
    first_map: list of ``(types, rule)``: the first Linear/conv layer (in execution order)
        matching one of these types gets the rule (only that one layer).
    sum_rule: rule for the sum of two model-dependent tensors (residual add); ``Norm()``.
    base: append the base map (activations ``Pass``, average pooling ``Norm``,
        unmerged BatchNorm ``Pass``).
    """

    def __init__(self, layer_map=None, name_map=None, first_map=None, *, sum_rule=None,
                 base=True, name="custom", product_rule="constant", bilinear_rule=None):
        self.layer_map = _as_map(layer_map, "layer_map")
        self.n_user = len(self.layer_map)  # entries before the base map
        if base:
            self.layer_map += [(ACTIVATION_TYPES, Pass()), (AVGPOOL_TYPES, Norm()),
                               (BATCHNORM_TYPES, Epsilon(1e-6))]
        if product_rule not in PRODUCT_RULES:
            raise ValueError(f"product_rule must be one of {', '.join(PRODUCT_RULES)}, got "
                             f"{product_rule!r}")
        if bilinear_rule is not None and bilinear_rule not in BILINEAR_RULES:
            raise ValueError(f"bilinear_rule must be None or one of "
                             f"{', '.join(BILINEAR_RULES)}, got {bilinear_rule!r}")
        self.product_rule, self.bilinear_rule = product_rule, bilinear_rule
        self.first_map = _as_map(first_map, "first_map")
        if name_map is None:
            name_map = {}
        if not isinstance(name_map, dict):
            raise TypeError("name_map must be a dict {module name: rule}")
        self.name_map = {str(k): as_rule(v) for k, v in name_map.items()}
        self.sum_rule = Norm() if sum_rule is None else as_rule(sum_rule)
        self.name = name

    def __repr__(self):
        return f"Composite({self.name!r})"

    def first_rule(self, module):
        for types, rule in self.first_map:
            if isinstance(module, types):
                return rule
        return None

    def first_rule_type(self, cls, fallback=None):
        """The first-layer rule for a layer of type ``cls`` (or of type ``fallback``)."""
        for types, rule in self.first_map:
            if (cls is not None and issubclass(cls, types)) or \
                    (fallback is not None and issubclass(fallback, types)):
                return rule
        return None

    def rule_for_type(self, name, cls, fallback=None, first=False):
        """The rule for a layer named ``name`` of type ``cls`` (None when unknown); types
        that no entry names fall back to ``fallback`` (``nn.Linear`` for a functional
        linear op, the matching ``nn.ConvNd`` for a convolution)."""
        if name is not None and name in self.name_map:
            return self.name_map[name]
        if first:
            r = self.first_rule_type(cls, fallback)
            if r is not None:
                return r
        for c in (cls, fallback):
            if c is None:
                continue
            for types, rule in self.layer_map:
                if issubclass(c, types):
                    return rule
        return None

    def user_rule(self, name, module):
        """The rule that ``name_map`` or the caller's own ``layer_map`` give ``module``
        (not the base map), or None."""
        if name in self.name_map:
            return self.name_map[name]
        for types, rule in self.layer_map[:self.n_user]:
            if isinstance(module, types):
                return rule
        return None

    def rule_for(self, name, module, first=False):
        """The rule for module ``module`` at path ``name`` (``first``: it is the first layer)."""
        if name in self.name_map:
            return self.name_map[name]
        if first:
            r = self.first_rule(module)
            if r is not None:
                return r
        for types, rule in self.layer_map:
            if isinstance(module, types):
                return rule
        return None


def _preset(name):
    if name == "epsilon_gamma_box":
        return Composite([(CONV_TYPES, Gamma(0.25)), (LINEAR_TYPES, Epsilon(1e-6))],
                         first_map=[(CONV_TYPES, ZBox())], name=name)
    if name == "epsilon_plus":
        return Composite([(CONV_TYPES, ZPlus()), (LINEAR_TYPES, Epsilon(1e-6))], name=name)
    if name == "epsilon_plus_flat":
        return Composite([(CONV_TYPES, ZPlus()), (LINEAR_TYPES, Epsilon(1e-6))],
                         first_map=[(CONV_TYPES + LINEAR_TYPES, Flat())], name=name)
    if name == "epsilon_alpha2_beta1":
        return Composite([(CONV_TYPES, AlphaBeta(2.0, 1.0)), (LINEAR_TYPES, Epsilon(1e-6))],
                         name=name)
    if name == "epsilon_alpha2_beta1_flat":
        return Composite([(CONV_TYPES, AlphaBeta(2.0, 1.0)), (LINEAR_TYPES, Epsilon(1e-6))],
                         first_map=[(CONV_TYPES + LINEAR_TYPES, Flat())], name=name)
    if name == "attnlrp":
        # AttnLRP (Achtibat et al. 2024) as LXT's efficient mode computes it: the plain
        # gradient (LRP-0, no stabiliser) on linear layers, ½ to each factor of products
        return Composite([(CONV_TYPES + LINEAR_TYPES, Gradient())], name=name,
                         product_rule="uniform", bilinear_rule="uniform", sum_rule=Norm(0.0))
    if name == "cp_lrp":
        # CP-LRP (Ali et al. 2022): attention probabilities and gates held constant
        return Composite([(CONV_TYPES + LINEAR_TYPES, Gradient())], name=name,
                         product_rule="constant", bilinear_rule="cp", sum_rule=Norm(0.0))
    if name == "attnlrp_gamma":
        # AttnLRP for vision transformers with γ on linear layers and convolutions
        return Composite([(CONV_TYPES + LINEAR_TYPES, Gamma(0.25))], name=name,
                         product_rule="uniform", bilinear_rule="uniform", sum_rule=Norm(0.0))
    raise ValueError(f"unknown composite {name!r}; presets: {', '.join(PRESETS)}")


PRESETS = ("epsilon_gamma_box", "epsilon_plus", "epsilon_plus_flat", "epsilon_alpha2_beta1",
           "epsilon_alpha2_beta1_flat", "attnlrp", "cp_lrp", "attnlrp_gamma")
PRODUCT_RULES = ("constant", "uniform", "gradient")
BILINEAR_RULES = ("uniform", "cp", "gradient")


def get_composite(composite) -> Composite:
    """A :class:`Composite` from a preset name or a Composite."""
    if isinstance(composite, Composite):
        return composite
    if isinstance(composite, str):
        return _preset(composite)
    raise TypeError(f"composite must be a preset name ({', '.join(PRESETS)}) or an "
                    f"lrp_ext.Composite, got {type(composite).__name__}")
