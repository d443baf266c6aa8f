"""The layer rules in one table: each rule's parameters with their defaults and checks, the
compiled op it calls and that op's tensor arguments.

Everything else draws from here: the functional rules (``dense``, ``conv``, ``reference``,
``conv_reference``) take their defaults and argument checks from :func:`default` and
:func:`check`, the ``Rule`` classes of ``lrp_ext.composite`` are built from :data:`RULES`, and
the fake kernels of ``lrp_ext.ops`` check the ops' scalars with the same functions.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Tuple

from . import _checks

__all__ = ["Param", "Rule", "RULES", "LRP0_EPSILON", "COEF_KIND", "default", "check",
           "op_scalars"]

LRP0_EPSILON = 1e-9  # LRP-0 is LRP-ε with this fixed ε


class Param(NamedTuple):
    name: str
    default: object
    check: Optional[Callable]  # (value, name) -> float; None: checked where it is used


class Rule(NamedTuple):
    name: str
    params: Tuple[Param, ...]
    op: str                            # the compiled op (csrc/lrp.cpp) that computes it
    fixed: Tuple[Tuple[str, float], ...] = ()  # the op's parameters this rule fixes
    joint: Optional[Callable] = None   # a check of several parameters together


_STAB = Param("stabilizer", 1e-6, _checks.stabilizer)


def _alpha_beta(p):
    p["alpha"], p["beta"] = _checks.alpha_beta(p["alpha"], p["beta"])


RULES = {r.name: r for r in (
    Rule("zero", (), "epsilon", fixed=(("epsilon", LRP0_EPSILON),)),
    Rule("epsilon", (Param("epsilon", 1e-6, _checks.stabilizer),), "epsilon"),
    Rule("gamma", (Param("gamma", 0.25, _checks.finite), _STAB), "gamma"),
    Rule("alpha_beta", (Param("alpha", 2.0, _checks.finite), Param("beta", 1.0, _checks.finite),
                        _STAB), "alpha_beta", joint=_alpha_beta),
    Rule("z_plus", (_STAB,), "alpha_beta", fixed=(("alpha", 1.0), ("beta", 0.0))),
    Rule("flat", (_STAB,), "flat"),
    Rule("w_square", (_STAB,), "w_square"),
    Rule("z_box", (Param("low", None, None), Param("high", None, None), _STAB), "z_box"),
)}

# the compiled ops: their tensor arguments (in schema order, then the rule's scalars)
OP_TENSORS = {"epsilon": ("R", "a", "W", "b"), "gamma": ("R", "a", "W", "b"),
              "alpha_beta": ("R", "a", "W", "b"), "flat": ("R", "a", "W"),
              "w_square": ("R", "a", "W", "b"), "z_box": ("R", "a", "W", "low", "high")}

# kinds of lrp_ext::coefficients, the model-level elementwise stage (rule::Kind in
# csrc/rule_math.h): epsilon (also LRP-0), z⁺, gamma, alpha_beta
# kinds of the model-level coefficients op (csrc/rule_math.h, rule::Kind); gamma_mixed is γ on an
# input of both signs, from S = |a|∗|W| + |b| in P's place (lrp_ext.conv._gamma_mixed)
COEF_KIND = {"epsilon": 0, "z_plus": 1, "gamma": 4, "alpha_beta": 5, "gamma_mixed": 6}


def default(rule, param):
    """The default value of ``param`` of ``rule``."""
    for p in RULES[rule].params:
        if p.name == param:
            return p.default
    raise KeyError(f"{rule} has no parameter {param!r}")


def check(rule, **given):
    """The parameters of ``rule``: ``given`` checked, missing ones at their defaults, as
    floats (bounds left as given); unknown names raise ``TypeError``."""
    spec = RULES[rule]
    names = {p.name for p in spec.params}
    extra = set(given) - names
    if extra:
        raise TypeError(f"{rule}: unexpected parameter(s) {', '.join(sorted(extra))}; it takes "
                        f"{', '.join(p.name for p in spec.params) or 'none'}")
    out = {}
    for p in spec.params:
        v = given.get(p.name, p.default)
        out[p.name] = v if p.check is None else p.check(v, p.name)
    if spec.joint is not None:
        spec.joint(out)
    return out


def op_scalars(op):
    """The scalar parameter names of compiled op ``op`` (those of the rule of that name)."""
    return tuple(p.name for p in RULES[op].params if p.check is not None)
