"""Registration glue for the compiled kernels: loading, fake kernels, fallback decisions.

The schemas live in ``csrc/lrp.cpp`` (``TORCH_LIBRARY(lrp_ext, m)``); CPU kernels in
``csrc/cpu``, CUDA kernels in ``csrc/cuda``.  Importing ``lrp_ext._C`` registers them.  When the
module is missing or fails to load, every public function falls back to ``lrp_ext.reference``
and warns once.
"""
from __future__ import annotations

import warnings

import torch

from . import _table

OP_NAMES = tuple(_table.OP_TENSORS)
# and the model-level stages
ALL_OPS = OP_NAMES + ("coefficients", "signed_weights", "safe_ratio", "sign_sum")

_load_error: str | None = None
try:  # importing the extension registers the ops with the dispatcher
    from . import _C  # noqa: F401
except Exception as exc:  # pragma: no cover - exercised by the no-extension test
    _load_error = f"{type(exc).__name__}: {exc}"

# dtypes with a compiled kernel, by device type
_KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64, torch.bfloat16),
    "cuda": (torch.float32, torch.float64, torch.bfloat16, torch.float16),
}
_DISPATCH_KEY = {"cpu": "CPU", "cuda": "CUDA"}
_warned = False


def _loaded() -> bool:
    return _load_error is None and hasattr(torch.ops.lrp_ext, "epsilon")


def has_compiled_ops(device="cpu") -> bool:
    """True when the compiled (C++ or CUDA) kernels for ``device`` are loaded."""
    dev_type = torch.device(device).type
    key = _DISPATCH_KEY.get(dev_type)
    if key is None or not _loaded():
        return False
    return all(torch._C._dispatch_has_kernel_for_dispatch_key(f"lrp_ext::{n}", key)
               for n in ALL_OPS)


_compiled_cache: dict = {}


@torch._dynamo.assume_constant_result   # a constant under torch.compile, even on a first call
def _device_has_kernels(dev_type: str) -> bool:
    ok = _compiled_cache.get(dev_type)
    if ok is None:
        ok = _compiled_cache[dev_type] = has_compiled_ops(dev_type)
        if not ok and dev_type in _DISPATCH_KEY:
            _warn_missing(dev_type)
    return ok


def use_compiled(t: torch.Tensor) -> bool:
    """Whether the compiled op serves tensors like ``t`` (device type and dtype)."""
    dev_type = t.device.type
    return _device_has_kernels(dev_type) and t.dtype in _KERNEL_DTYPES.get(dev_type, ())


def _warn_missing(dev_type):
    global _warned
    if _warned:
        return
    _warned = True
    why = _load_error or f"no {dev_type} kernels were built"
    warnings.warn(f"lrp_ext: compiled kernels not available for {dev_type} ({why}); "
                  "falling back to the slower lrp_ext.reference", RuntimeWarning, stacklevel=3)


_TENSOR_ARGS = _table.OP_TENSORS


def _make_fake(name):
    def fake(*args):
        # the same dtype/device/shape checks as the compiled kernels (csrc/lrp.cpp), so a
        # mismatch fails under fake tensors too instead of producing a result
        names = _TENSOR_ARGS[name]
        tensors = [(n, t) for n, t in zip(names, args) if t is not None]
        try:  # the scalar checks of the compiled op (csrc/lrp.cpp), from the rule table
            _table.check(name, **dict(zip(_table.op_scalars(name), args[len(names):])))
        except (TypeError, ValueError) as exc:
            raise RuntimeError(str(exc)) from None
        a = args[1]
        for n, t in tensors:
            if t.dtype != a.dtype:
                raise RuntimeError(f"{name}: dtype mismatch: a is {a.dtype} but {n} is {t.dtype}")
            if t.device != a.device:
                raise RuntimeError(f"{name}: device mismatch: a is on {a.device} but {n} is on "
                                   f"{t.device}")
        R, W = args[0], args[2]
        torch._check(W.dim() == 2, lambda: f"{name}: W must be 2-D (O, I)")
        torch._check(a.dim() >= 1 and a.shape[-1] == W.shape[1],
                     lambda: f"{name}: a's last dim must equal W's in_features")
        torch._check(R.dim() >= 1 and R.shape[-1] == W.shape[0],
                     lambda: f"{name}: R's last dim must equal W's out_features")
        torch._check(R.shape[:-1] == a.shape[:-1], lambda: f"{name}: batch dims of R and a differ")
        return torch.empty(a.shape, dtype=a.dtype, device=a.device)
    return fake


# An argument error found while torch.compile traces a public function: the trace cannot raise
# (Dynamo turns that into torch._dynamo.exc.Unsupported under fullgraph=True), so the graph gets
# this op instead, which raises the same exception with the same message when the graph runs.
_ERRORS = {"ValueError": ValueError, "TypeError": TypeError}


@torch.library.custom_op("lrp_ext_checks::raise_error", mutates_args=())
def raise_error(kind: str, message: str, like: torch.Tensor) -> torch.Tensor:
    raise _ERRORS[kind](message)


@raise_error.register_fake
def _(kind, message, like):
    return torch.empty_like(like)


def _coefficients_fake(z, g, P, M, kind, groups, e, gamma, alpha, beta, times_z):
    for n, t in (("g", g), ("P", P), ("M", M)):
        if t is None:
            continue
        if t.dtype != z.dtype or t.device != z.device:
            raise RuntimeError(f"coefficients: {n} must match z's dtype and device")
        torch._check(t.shape[1:] == z.shape[1:], lambda: f"coefficients: {n} must have z's shape")
    if kind not in tuple(_table.COEF_KIND.values()):
        raise RuntimeError(f"coefficients: unknown kind {kind}")
    if kind == _table.COEF_KIND["gamma_mixed"]:
        if M is not None:
            raise RuntimeError("coefficients: kind 6 (gamma_mixed) takes no M")
        return g.new_empty((2,) + tuple(g.shape))
    if kind in (_table.COEF_KIND["gamma"], _table.COEF_KIND["alpha_beta"]):
        N, O = g.shape[:2]
        return z.new_empty((N, groups, 2, O // groups) + tuple(z.shape[2:]))
    return g.new_empty(g.shape)


COEF_DTYPES = (torch.float32, torch.float64)


def has_model_ops(t):
    """Whether ``coefficients`` / ``signed_weights`` are compiled for ``t``'s device and dtype."""
    return t.dtype in COEF_DTYPES and _device_has_kernels(t.device.type)


def _check_stacked_fake(op, name, t, x):
    if t.dtype != x.dtype or t.device != x.device:
        raise RuntimeError(f"{op}: {name} and x must have one dtype and device")
    torch._check(t.dim() == x.dim() and t.shape[1:] == x.shape[1:],
                 lambda: f"{op}: {name} must have x's shape or a multiple of its batch")


def _safe_ratio_fake(y, x, g=None):
    if x.dtype not in COEF_DTYPES or y.dtype != x.dtype or y.device != x.device:
        raise RuntimeError("safe_ratio: y and x must have one dtype (float32/float64) and device")
    torch._check(y.shape == x.shape, lambda: "safe_ratio: y and x must have one shape")
    if g is None:
        return x.new_empty(x.shape)
    _check_stacked_fake("safe_ratio", "g", g, x)
    return g.new_empty(g.shape)


def _sign_sum_fake(A, B, x):
    if x.dtype not in COEF_DTYPES:
        raise RuntimeError("sign_sum: float32 or float64 only")
    torch._check(A.shape == B.shape, lambda: "sign_sum: A and B must have one shape")
    _check_stacked_fake("sign_sum", "A", A, x)
    _check_stacked_fake("sign_sum", "B", B, x)
    return A.new_empty(A.shape)


def sign_sum(A, B, x):
    """``lrp_ext::sign_sum`` where compiled for ``x``'s device and dtype, else its plain PyTorch
    form :func:`lrp_ext.reference.sign_sum`."""
    if has_model_ops(x):
        return torch.ops.lrp_ext.sign_sum(A, B, x)
    from . import reference
    return reference.sign_sum(A, B, x)


def _signed_weights_fake(W, scale, groups, both):
    if W.dtype not in COEF_DTYPES:
        raise RuntimeError(f"signed_weights: W must be float32 or float64, got {W.dtype}")
    torch._check(W.shape[0] % groups == 0, lambda: "signed_weights: groups must divide O")
    if scale is not None:
        torch._check(tuple(scale.shape) == (W.shape[0],),
                     lambda: "signed_weights: scale must have shape (O,)")
    return W.new_empty(((2 if both else 1) * W.shape[0],) + tuple(W.shape[1:]))


def coefficients(z, g, P, M, kind, groups, e, gamma=0.0, alpha=1.0, beta=0.0, times_z=True):
    """``lrp_ext::coefficients`` where compiled for ``z``'s device and dtype, else its plain
    PyTorch form :func:`lrp_ext.reference.coefficients` (the same numbers)."""
    if has_model_ops(z):
        return torch.ops.lrp_ext.coefficients(z, g, P, M, kind, groups, e, gamma, alpha, beta,
                                              times_z)
    from . import reference
    return reference.coefficients(z, g, P, M, kind, groups, e, gamma, alpha, beta, times_z)


if _loaded():
    for _name in OP_NAMES:
        torch.library.register_fake(f"lrp_ext::{_name}")(_make_fake(_name))
    torch.library.register_fake("lrp_ext::coefficients")(_coefficients_fake)
    torch.library.register_fake("lrp_ext::signed_weights")(_signed_weights_fake)
    torch.library.register_fake("lrp_ext::safe_ratio")(_safe_ratio_fake)
    torch.library.register_fake("lrp_ext::sign_sum")(_sign_sum_fake)
