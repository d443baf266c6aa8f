"""lrp_ext: fast Layer-wise Relevance Propagation for PyTorch.

Dense-layer rules (``lrp_ext.gamma(R, a, W, b)`` and friends) run fused C++/CUDA kernels when
they are built and fall back to ``lrp_ext.reference`` (plain PyTorch) otherwise. Conv layers:
``lrp_ext.conv``; whole models: ``lrp_ext.explain`` with a composite (``lrp_ext.Composite``), or
``lrp_ext.Explainer`` for many calls on one model.
"""
from . import reference
from .ops import has_compiled_ops
from .dense import alpha_beta, epsilon, flat, gamma, w_square, z_box, z_plus, zero
from . import conv
from .composite import Composite
from .explain import Explainer, explain

__version__ = "0.1.0"

__all__ = ["reference", "has_compiled_ops", "zero", "epsilon", "gamma", "alpha_beta", "z_plus",
           "flat", "w_square", "z_box", "conv", "Composite", "explain", "Explainer"]
