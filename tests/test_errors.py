"""Bad input: a clear exception naming the argument and the shapes, never a crash or a number.

Public functions and lrp_ext.reference validate the same way (lrp_ext._checks): TypeError for
non-tensors / non-floating dtypes, ValueError for shapes, dtypes, devices and rule parameters.
The compiled ops validate again in C++ (RuntimeError), for callers of torch.ops.lrp_ext.*."""
import math
import re

import pytest
import torch

import lrp_ext
from lrp_ext import reference
from lrp_ext.testing import RULES, DEFAULT_PARAMS

IMPLS = [lrp_ext, reference]
IMPL_IDS = ["public", "reference"]


def _good(O=4, I=6, B=3, dtype=torch.float32, device="cpu"):
    opts = dict(dtype=dtype, device=device)
    return (torch.randn(B, O, **opts), torch.randn(B, I, **opts), torch.randn(O, I, **opts),
            torch.randn(O, **opts))


def _call(impl, rule, R, a, W, b=None, **kw):
    params = dict(DEFAULT_PARAMS[rule])
    params.update(kw)
    return getattr(impl, rule)(R, a, W, b, **params)


def _raises(exc, *fragments):
    """pytest.raises matching every fragment (literally) in the message."""
    return pytest.raises(exc, match="(?s)" + "".join(f"(?=.*{re.escape(f)})" for f in fragments))


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
@pytest.mark.parametrize("rule", RULES)
class TestShapes:
    def test_a_vs_W(self, impl, rule):
        R, a, W, b = _good()
        with _raises(ValueError, rule, "a's last dim", "I=6", "a (3, 5)", "W (4, 6)"):
            _call(impl, rule, R, a[:, :5], W, b)

    def test_R_vs_W(self, impl, rule):
        R, a, W, b = _good()
        with _raises(ValueError, rule, "R's last dim", "O=4", "R (3, 3)", "W (4, 6)"):
            _call(impl, rule, R[:, :3], a, W, b)

    def test_batch_dims(self, impl, rule):
        R, a, W, b = _good()
        with _raises(ValueError, "batch dims of R and a differ", "R (2, 4)", "a (3, 6)"):
            _call(impl, rule, R[:2], a, W, b)
        with _raises(ValueError, "batch dims", "R (4,)", "a (3, 6)"):
            _call(impl, rule, R[0], a, W, b)
        with _raises(ValueError, "batch dims", "R (1, 3, 4)", "a (3, 6)"):
            _call(impl, rule, R[None], a, W, b)

    def test_bias_length(self, impl, rule):
        R, a, W, b = _good()
        with _raises(ValueError, "b must have shape (O,) = (4,)", "W (4, 6)", "got b (5,)"):
            _call(impl, rule, R, a, W, torch.randn(5))
        with _raises(ValueError, "b must have shape", "got b (1, 4)"):
            _call(impl, rule, R, a, W, b[None])
        with _raises(ValueError, "b must have shape", "got b ()"):
            _call(impl, rule, R, a, W, torch.tensor(1.0))

    def test_rank(self, impl, rule):
        R, a, W, b = _good()
        with _raises(ValueError, "W must be 2-D (O, I)", "(24,)"):
            _call(impl, rule, R, a, W.reshape(-1), b)
        with _raises(ValueError, "W must be 2-D (O, I)", "(1, 4, 6)"):
            _call(impl, rule, R, a, W[None], b)
        with _raises(ValueError, "a must have shape (..., I)", "I=6", "0-d"):
            _call(impl, rule, R, torch.tensor(1.0), W, b)
        with _raises(ValueError, "R must have shape (..., O)", "O=4", "0-d"):
            _call(impl, rule, torch.tensor(1.0), a, W, b)

    def test_dtype_mismatch(self, impl, rule):
        R, a, W, b = _good()
        with _raises(ValueError, "dtype mismatch", "torch.float32", "a", "torch.float64"):
            _call(impl, rule, R, a.double(), W, b)
        with _raises(ValueError, "dtype mismatch", "W", "torch.bfloat16"):
            _call(impl, rule, R, a, W.bfloat16(), b)
        with _raises(ValueError, "dtype mismatch", "b", "torch.float64"):
            _call(impl, rule, R, a, W, b.double())

    def test_integer_dtype(self, impl, rule):
        R, a, W, b = (t.round().int() for t in _good())
        with _raises(TypeError, "R must be a floating tensor", "torch.int32"):
            _call(impl, rule, R, a, W, b)
        R, a, W, b = _good()
        with _raises(TypeError, "a must be a floating tensor", "torch.int64"):
            _call(impl, rule, R, a.long(), W, b)

    def test_device_mismatch(self, impl, rule):
        R, a, W, b = _good()
        with _raises(ValueError, "device mismatch", "a is on meta"):
            _call(impl, rule, R, a.to("meta"), W, b)
        with _raises(ValueError, "device mismatch", "b is on meta"):
            _call(impl, rule, R, a, W, b.to("meta"))
        if torch.cuda.is_available():
            with _raises(ValueError, "device mismatch", "W is on cuda"):
                _call(impl, rule, R, a, W.cuda(), b)

    def test_non_tensor(self, impl, rule):
        R, a, W, b = _good()
        with _raises(TypeError, "R must be a torch.Tensor", "list"):
            _call(impl, rule, R.tolist(), a, W, b)
        with _raises(TypeError, "a must be a torch.Tensor", "ndarray"):
            _call(impl, rule, R, a.numpy(), W, b)
        with _raises(TypeError, "W must be a torch.Tensor", "NoneType"):
            _call(impl, rule, R, a, None, b)
        with _raises(TypeError, "b must be a torch.Tensor or None", "float"):
            _call(impl, rule, R, a, W, 0.5)

    def test_nn_linear_with_b(self, impl, rule):
        R, a, W, b = _good()
        lin = torch.nn.Linear(6, 4)
        with _raises(ValueError, "W is an nn.Linear, so b must be None"):
            _call(impl, rule, R, a, lin, b)
        with _raises(ValueError, "a's last dim", "I=6"):
            _call(impl, rule, R, a[:, :5], lin)

    def test_stabilizer(self, impl, rule):
        if rule == "zero":
            pytest.skip("zero has no parameters")
        name = "epsilon" if rule == "epsilon" else "stabilizer"
        R, a, W, b = _good()
        for bad in (-1e-3, math.nan, math.inf):
            with pytest.raises(ValueError, match=name):
                _call(impl, rule, R, a, W, b, **{name: bad})
        for bad in ("0.1", None, True, torch.tensor([0.1])):   # a 0-d tensor is a number
            with pytest.raises((ValueError, TypeError), match=name):
                _call(impl, rule, R, a, W, b, **{name: bad})


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
@pytest.mark.parametrize("alpha,beta", [(2.0, 0.5), (1.0, 1.0), (-1.0, -2.0), (0.5, -0.5),
                                        (math.nan, 1.0), (2.0, math.inf)])
def test_alpha_beta_parameters(impl, alpha, beta):
    R, a, W, b = _good()
    # the message names the offending parameter (both when their relation is violated)
    names = ["alpha"] if not math.isfinite(alpha) else ["beta"] if not math.isfinite(beta) \
        else ["alpha", "beta", repr(alpha), repr(beta)]
    with _raises(ValueError, *names):
        impl.alpha_beta(R, a, W, b, alpha=alpha, beta=beta)


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_gamma_parameter(impl):
    R, a, W, b = _good()
    for bad in (math.nan, -math.inf, "0.25"):
        with pytest.raises(ValueError, match="gamma"):
            impl.gamma(R, a, W, b, gamma=bad)


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_z_box_bounds_errors(impl):
    R, a, W, b = _good()
    with _raises(ValueError, "z_box", "low of shape (5,) is not broadcastable to a (3, 6)"):
        impl.z_box(R, a, W, low=torch.zeros(5), high=1.0)
    with _raises(ValueError, "high of shape (4, 6) is not broadcastable to a (3, 6)"):
        impl.z_box(R, a, W, low=0.0, high=torch.ones(4, 6))
    with _raises(ValueError, "high of shape (2, 3, 6) is not broadcastable to a (3, 6)"):
        impl.z_box(R, a, W, low=0.0, high=torch.ones(2, 3, 6))
    with _raises(ValueError, "z_box: low is required"):
        impl.z_box(R, a, W, high=1.0)
    with _raises(ValueError, "z_box: high is required"):
        impl.z_box(R, a, W, low=-1.0)
    with _raises(ValueError, "low", "finite"):
        impl.z_box(R, a, W, low=math.nan, high=1.0)
    with _raises(ValueError, "device mismatch", "low is on meta"):
        impl.z_box(R, a, W, low=torch.zeros(6, device="meta"), high=1.0)


# ------------------------------------------------------------------------------------------
# the compiled ops, called directly
# ------------------------------------------------------------------------------------------
def _ops_or_skip(device="cpu"):
    if not lrp_ext.has_compiled_ops(device):
        pytest.skip(f"compiled {device} ops are not built")
    return torch.ops.lrp_ext


def _op_args(name, R, a, W, b):
    if name == "epsilon":
        return (R, a, W, b, 1e-6)
    if name == "gamma":
        return (R, a, W, b, 0.25, 1e-6)
    if name == "alpha_beta":
        return (R, a, W, b, 2.0, 1.0, 1e-6)
    if name == "flat":
        return (R, a, W, 1e-6)
    if name == "w_square":
        return (R, a, W, b, 1e-6)
    if name == "z_box":
        return (R, a, W, torch.full_like(a, -1.0), torch.full_like(a, 1.0), 1e-6)
    raise ValueError(name)


OPS = ("epsilon", "gamma", "alpha_beta", "flat", "w_square", "z_box")


@pytest.mark.parametrize("name", OPS)
def test_op_direct_bad_shapes(device, name):
    ops = _ops_or_skip(device)
    op = getattr(ops, name)
    R, a, W, b = _good(device=device)
    cases = [
        ((R, a[:, :5], W, b), ["a's last dim", "I=6", "[3, 5]"]),
        ((R[:, :3], a, W, b), ["R's last dim", "O=4", "[3, 3]"]),
        ((R[:2], a, W, b), ["batch dims of R and a differ", "[2, 4]", "[3, 6]"]),
        ((R, a, W.reshape(-1), b), ["W must be 2-D", "[24]"]),
        ((R.double(), a, W, b), ["dtype mismatch", "R"]),
        ((R, a, W.double(), b), ["dtype mismatch", "W"]),
    ]
    if name not in ("flat", "z_box"):  # the ops that take a bias
        cases.append(((R, a, W, torch.randn(5, device=device)),
                      ["b must have shape (O,)", "[5]"]))
        cases.append(((R, a, W, b.double()), ["dtype mismatch", "b"]))
    for (R_, a_, W_, b_), fragments in cases:
        args = _op_args(name, R_, a_, W_, b_)
        if name == "z_box" and a_.shape != a.shape:
            args = (R_, a_, W_, torch.zeros_like(a_), torch.ones_like(a_), 1e-6)
        with _raises(RuntimeError, name, *fragments):
            op(*args)


def test_op_direct_z_box_bounds(device):
    ops = _ops_or_skip(device)
    R, a, W, _ = _good(device=device)
    with _raises(RuntimeError, "low of shape", "[5]", "not broadcastable", "[3, 6]"):
        ops.z_box(R, a, W, torch.zeros(5, device=device), torch.ones_like(a), 1e-6)
    with _raises(RuntimeError, "high", "dtype mismatch"):
        ops.z_box(R, a, W, torch.zeros_like(a), torch.ones_like(a).double(), 1e-6)
    with _raises(RuntimeError, "device mismatch"):
        ops.z_box(R, a, W, torch.zeros_like(a).to("meta"), torch.ones_like(a), 1e-6)


@pytest.mark.parametrize("name", OPS)
def test_op_direct_integer_dtype(device, name):
    ops = _ops_or_skip(device)
    R, a, W, b = (t.round().int() for t in _good(device=device))
    with pytest.raises(RuntimeError, match="floating"):
        getattr(ops, name)(*_op_args(name, R, a, W, b))


def test_fake_kernels_check_the_scalars_like_the_ops():
    """Under fake tensors (torch.compile, export) a bad scalar fails as the compiled op does."""
    import lrp_ext
    from torch._subclasses.fake_tensor import FakeTensorMode
    if not lrp_ext.has_compiled_ops("cpu"):
        pytest.skip("no compiled CPU ops")
    with FakeTensorMode():
        R, a, W = torch.ones(2, 3), torch.ones(2, 4), torch.ones(3, 4)
        with pytest.raises(RuntimeError, match="alpha - beta = 1"):
            torch.ops.lrp_ext.alpha_beta(R, a, W, None, 1.0, 1.0, 1e-6)
        with pytest.raises(RuntimeError, match="stabilizer must be >= 0"):
            torch.ops.lrp_ext.gamma(R, a, W, None, 0.25, -1.0)
        assert torch.ops.lrp_ext.gamma(R, a, W, None, 0.25, 1e-6).shape == a.shape
