"""torch.library.opcheck on every op, and the public functions under torch.compile.

opcheck checks each op's schema, autograd registration, fake (meta) kernel against the real
one and AOT dispatch with dynamic shapes.  The public functions must compile without graph
breaks (fullgraph=True) and give the eager numbers."""
import pytest
import torch

import lrp_ext
from lrp_ext import testing
from lrp_ext.testing import RULES, make_case

OPS = ("epsilon", "gamma", "alpha_beta", "flat", "w_square", "z_box")


def _needs_ops(device):
    if not lrp_ext.has_compiled_ops(device):
        pytest.skip(f"compiled {device} ops are not built")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _op_inputs(name, device):
    """Argument tuples: bias, no bias + non-contiguous, 1-D, leading dims + float64."""
    sets = []
    for k, (batch, dtype, bias, layout) in enumerate([
            ((3,), torch.float32, True, "contiguous"),
            ((4,), torch.float32, False, "transposed"),
            ((), torch.float32, True, "strided"),
            ((2, 3), torch.float64, True, "contiguous")]):
        rule = {"epsilon": "epsilon", "alpha_beta": "alpha_beta"}.get(name, name)
        c = make_case(rule, batch, 11, 7, dtype, device, bias=bias, layout=layout, seed=k)
        if name == "epsilon":
            args = (c.R, c.a, c.W, c.b, 0.1)
        elif name == "gamma":
            args = (c.R, c.a, c.W, c.b, 0.25, 1e-6)
        elif name == "alpha_beta":
            args = (c.R, c.a, c.W, c.b, 2.0, 1.0, 1e-6)
        elif name == "flat":
            args = (c.R, c.a, c.W, 1e-6)
        elif name == "w_square":
            args = (c.R, c.a, c.W, c.b, 1e-6)
        else:  # z_box: bounds as the public function passes them (expanded views) and full
            low = torch.tensor(-2.5, dtype=dtype, device=device).expand(c.a.shape)
            high = torch.full_like(c.a, 3.0) if k % 2 else \
                torch.full(c.a.shape[-1:], 3.0, dtype=dtype, device=device).expand(c.a.shape)
            args = (c.R, c.a, c.W, low, high, 1e-6)
        sets.append(args)
    return sets


@pytest.mark.parametrize("name", OPS)
def test_opcheck(device, name):
    _needs_ops(device)
    op = getattr(torch.ops.lrp_ext, name)
    for args in _op_inputs(name, device):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("name", OPS)
def test_fake_kernel_shapes(device, name):
    """Under FakeTensorMode the op returns a's shape and dtype without running a kernel."""
    _needs_ops(device)
    from torch._subclasses.fake_tensor import FakeTensorMode
    op = getattr(torch.ops.lrp_ext, name)
    args = _op_inputs(name, device)[3]
    with FakeTensorMode() as mode:
        fargs = tuple(mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in args)
        out = op(*fargs)
    assert out.shape == args[1].shape and out.dtype == args[1].dtype


def _fn(rule, params):
    def fn(R, a, W, b):
        return getattr(lrp_ext, rule)(R, a, W, b, **params)
    return fn


@pytest.mark.parametrize("rule", RULES)
def test_compile_fullgraph(device, rule):
    """aot_eager (tracing + functionalization, no codegen): same numbers as eager, for two
    batch sizes (dynamic shapes) and without graph breaks."""
    params = dict(testing.DEFAULT_PARAMS[rule])
    fn = _fn(rule, params)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    for k, (batch, bias) in enumerate((((3,), True), ((5,), False), ((2, 4), True))):
        c = make_case(rule, batch, 13, 6, torch.float32, device, bias=bias, seed=40 + k)
        eager = fn(c.R, c.a, c.W, c.b)
        got = compiled(c.R, c.a, c.W, c.b)
        torch.testing.assert_close(got, eager, rtol=1e-6, atol=1e-7)
        testing.check_against_reference(rule, got, c)


def test_compile_tensor_bounds_and_linear(device):
    lin = torch.nn.Linear(13, 6).to(device)
    low = torch.full((13,), -2.0, device=device)
    high = torch.full((1, 13), 2.5, device=device)

    def fn(R, a):
        return (lrp_ext.z_box(R, a, lin, low=low, high=high)
                + lrp_ext.gamma(R, a, lin) + lrp_ext.epsilon(R, a, lin.weight, lin.bias))

    c = make_case("z_box", (4,), 13, 6, torch.float32, device, seed=50)
    eager = fn(c.R, c.a)
    got = torch.compile(fn, fullgraph=True, backend="aot_eager")(c.R, c.a)
    torch.testing.assert_close(got, eager, rtol=1e-6, atol=1e-6)


def test_compile_inductor(device):
    """The default backend (inductor) on one rule with a pre- and post-processing op around."""
    c = make_case("gamma", (6,), 17, 9, torch.float32, device, seed=51)

    def fn(R, a, W, b):
        return lrp_ext.gamma(R * 2, a.relu(), W, b).sum(-1)

    eager = fn(c.R, c.a, c.W, c.b)
    got = torch.compile(fn, fullgraph=True)(c.R, c.a, c.W, c.b)
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)
