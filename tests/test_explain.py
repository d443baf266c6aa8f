"""explain(): semantics, independence from zennit-specific details, safety and argument errors."""
import io

import pytest
import torch
import torch.nn.functional as F

from lrp_ext import conv_reference as cref
from lrp_ext import reference as dref
from lrp_ext.composite import Composite, Epsilon, Gamma, Gradient, Norm
from lrp_ext.explain import explain

from _model_helpers import in_threads

nn = torch.nn


class Residual(nn.Module):
    """Functional relu, residual sum, max/avg pooling, flatten: no biases (homogeneous)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(6 * 4 * 4, 5, bias=False)

    def forward(self, x):
        y = F.relu(self.c1(x))
        y = self.pool(y)
        z = torch.relu(self.c2(y))
        y = z + y
        y = self.avg(y)
        return self.fc(torch.flatten(y, 1))


def _state(model):
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    attrs = {n: (m.training, sorted(k for k in vars(m) if not k.startswith("_")),
                 {k: v for k, v in vars(m).items() if isinstance(v, (int, float, bool, str,
                                                                        tuple))})
             for n, m in model.named_modules()}
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())
    return buf.getvalue(), attrs, hooks


def test_lrp0_equals_gradient_times_input():
    """LRP-0 (ε = 1e-14) on a bias-free ReLU network (pass through activations, proportional sum and
    average pooling, winner-takes-all max pooling) is gradient × input."""
    torch.manual_seed(0)
    model = Residual().double().eval()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    comp = Composite([((nn.Conv2d, nn.Linear), Epsilon(1e-14)), (nn.AdaptiveAvgPool2d, Norm(1e-14))],
                     sum_rule=Norm(1e-14))
    got = explain(model, x, target=[0, 2, 4], composite=comp)
    xx = x.clone().requires_grad_(True)
    out = model(xx)
    sel = out[torch.arange(3), torch.tensor([0, 2, 4])]
    g, = torch.autograd.grad(sel.sum(), xx)
    torch.testing.assert_close(got, g * x, rtol=1e-8, atol=1e-10)


def test_custom_composite_by_name_and_first_layer():
    """name_map beats first_map beats layer_map; checked layer by layer with the references."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2),
                          nn.ReLU(), nn.Conv2d(4, 3, 2), nn.Flatten(), nn.Linear(12, 2)).double()
    model.eval()
    comp = Composite(layer_map=[(nn.Conv2d, Gamma(0.1)), (nn.Linear, Epsilon(0.01))],
                     name_map={"2": ("alpha_beta", {"alpha": 1.5, "beta": 0.5})},
                     first_map=[(nn.Conv2d, "w_square")])
    x = torch.randn(2, 2, 9, 9, dtype=torch.float64)
    got, out = explain(model, x, target=1, composite=comp, return_output=True)
    torch.testing.assert_close(out, model(x))
    # by hand
    with torch.no_grad():
        a0 = x
        a1 = model[1](model[0](a0))
        a2 = model[3](model[2](a1))
        a3 = model[5](model[4](a2))
        o = model[6](a3)
    R = torch.zeros_like(o)
    R[:, 1] = o[:, 1]
    R = dref.epsilon(R, a3, model[6].weight, model[6].bias, epsilon=0.01)
    R = R.reshape(2, 3, 2, 2)
    R = cref.gamma(R, a2, model[4], gamma=0.1)
    R = cref.alpha_beta(R, a1, model[2], alpha=1.5, beta=0.5)
    R = cref.w_square(R, a0, model[0])
    torch.testing.assert_close(got, R, rtol=1e-9, atol=1e-12)


def test_model_unchanged_and_no_hooks():
    import torchvision
    torch.manual_seed(2)
    model = torchvision.models.resnet18(num_classes=4).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 3, 32, 32)
    x0 = x.clone()
    before = _state(model)
    assert before[2] == 0
    explain(model, x, target=1, low=-3.0, high=3.0)
    explain(model, x, target=1, composite="epsilon_plus_flat", canonize=False)
    assert _state(model) == before
    torch.testing.assert_close(x, x0, rtol=0, atol=0)
    # and when explain raises (before and after the forward pass)
    with pytest.raises(ValueError):
        explain(model, x, target=1)  # low/high missing
    with pytest.raises(ValueError):
        explain(model, x, relevance=torch.zeros(1, 5), low=-3.0, high=3.0)
    with pytest.raises(ValueError):
        explain(model, x, target=9, low=-3.0, high=3.0)
    assert _state(model) == before
    assert not torch.nn.modules.module._global_forward_hooks
    assert not torch.nn.modules.module._global_forward_pre_hooks


def test_two_threads_same_model():
    torch.manual_seed(3)
    model = Residual().eval()
    xs = [torch.randn(2, 3, 8, 8) for _ in range(4)]
    want = [explain(model, x, target=1, composite="epsilon_plus") for x in xs]
    got = in_threads(lambda x: explain(model, x, target=1, composite="epsilon_plus"), xs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_target_forms_and_return_output():
    torch.manual_seed(4)
    model = Residual().eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        out = model(x)
    R = torch.zeros_like(out)
    R[:, 2] = out[:, 2]
    a = explain(model, x, target=2, composite="epsilon_plus")
    b = explain(model, x, relevance=R, composite="epsilon_plus")
    c = explain(model, x, target=torch.tensor([2, 2, 2]), composite="epsilon_plus")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    rel, o = explain(model, x, target=2, composite="epsilon_plus", return_output=True)
    torch.testing.assert_close(o, out)
    assert rel.shape == x.shape


def test_bad_arguments():
    model = Residual().eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="exactly one of target .* not both"):
        explain(model, x, target=1, relevance=torch.zeros(1, 5))
    with pytest.raises(ValueError, match="exactly one of target .* got neither"):
        explain(model, x)
    with pytest.raises(ValueError, match=r"needs low and high"):
        explain(model, x, target=1)
    with pytest.raises(ValueError, match=r"relevance must have the model output's shape"):
        explain(model, x, relevance=torch.zeros(1, 4), composite="epsilon_plus")
    with pytest.raises(ValueError, match="out of range"):
        explain(model, x, target=5, composite="epsilon_plus")
    with pytest.raises(ValueError, match="target has 2 entries"):
        explain(model, x, target=[1, 2], composite="epsilon_plus")
    with pytest.raises(ValueError, match="unknown composite"):
        explain(model, x, target=1, composite="nope")
    with pytest.raises(TypeError, match="composite must be"):
        explain(model, x, target=1, composite=3)
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        explain(model, x.long(), target=1, composite="epsilon_plus")
    class PowP(nn.Module):  # an op with a parameter that no rule covers
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.tensor(2.0))

        def forward(self, x):
            return x.abs().pow(self.p)
    bad = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(PowP()), nn.Linear(4, 2)).eval()
    with pytest.raises(ValueError, match=r"'pow' with parameter\(s\) of module '2\.0' \(PowP\) "
                                         r"in module '2\.0' \(PowP\): no LRP rule covers it"):
        explain(bad, torch.randn(2, 4), target=0, composite="epsilon_plus")
    with pytest.warns(RuntimeWarning, match="took their plain gradient"):
        explain(bad, torch.randn(2, 4), target=0, composite="epsilon_plus", strict=False)
    bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"'1' \(BatchNorm1d\) is in training mode"):
        explain(bn, torch.randn(2, 4), target=0, composite="epsilon_plus")

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:
                return self.fc(x)
            return -self.fc(x)
    # data-dependent control flow runs as the model runs it
    m = Untraceable().double().eval()
    for sign in (1.0, -1.0):
        x = sign * torch.rand(2, 4, dtype=torch.float64) + sign * 0.1
        o = m(x)
        R = torch.zeros_like(o)
        R[:, 0] = o[:, 0]
        want = dref.epsilon(R, x, m.fc.weight, m.fc.bias)  # -z carries the relevance of z
        got = explain(m, x, target=0, composite="epsilon_plus")
        torch.testing.assert_close(got, want)


def test_custom_composite_missing_rule_and_bad_rule():
    model = nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)).eval()
    x = torch.randn(2, 1, 4)
    with pytest.raises(ValueError, match=r"no rule of composite 'custom' covers layer '3' "
                                         r"\(Linear\)"):
        explain(model, x, target=0, composite=Composite([(nn.Conv1d, "epsilon")]))
    with pytest.raises(ValueError, match="unknown rule"):
        Composite([(nn.Conv1d, "bogus")])
    with pytest.raises(ValueError, match="alpha"):
        Composite([(nn.Conv1d, ("alpha_beta", {"alpha": 1.0, "beta": 1.0}))])


def test_batchnorm_merge_conv_transpose_and_linear():
    """Merged BatchNorm after ConvTranspose2d (grouped) and Linear equals a hand-folded copy."""
    torch.manual_seed(6)
    model = nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), nn.BatchNorm2d(6),
                          nn.ReLU(), nn.Conv2d(6, 4, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 7 * 7, 8), nn.BatchNorm1d(8), nn.ReLU(),
                          nn.Linear(8, 3)).double()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-1.5, 1.5)  # negative scales too
            m.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    folded = nn.Sequential(*[copy_module(m) for m in model]).eval()
    with torch.no_grad():
        bn = model[1]
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        W = folded[0].weight  # (Cin, Cout/g, k, k); output channel = group * Cout/g + j
        W.copy_((W.reshape(2, 2, 3, 3, 3) * s.reshape(2, 1, 3, 1, 1)).reshape(W.shape))
        folded[0].bias.copy_((folded[0].bias - bn.running_mean) * s + bn.bias)
        folded[1] = nn.Identity()
        bn = model[7]
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        folded[6].weight.mul_(s[:, None])
        folded[6].bias.copy_((folded[6].bias - bn.running_mean) * s + bn.bias)
        folded[7] = nn.Identity()
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(folded(x), model(x))
    for comp in ("epsilon_gamma_box", "epsilon_alpha2_beta1_flat", "epsilon_plus"):
        got = explain(model, x, target=1, composite=comp, low=-4.0, high=4.0)
        want = explain(folded, x, target=1, composite=comp, low=-4.0, high=4.0, canonize=False)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def copy_module(m):
    import copy
    return copy.deepcopy(m)


def test_indexing_chunk_and_pass_shape_check():
    """Tensor indexing and tuple outputs (chunk) take the plain gradient; Pass needs equal
    shapes."""
    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 4)

        def forward(self, x):
            a, b = torch.chunk(x, 2, dim=1)
            y = torch.cat([b, a[:, :2], a[:, 2:]], dim=1)
            return self.fc(y)

    torch.manual_seed(7)
    model = Split().double().eval()
    x = torch.randn(3, 6, dtype=torch.float64)
    got = explain(model, x, target=2, composite="epsilon_plus")
    with torch.no_grad():
        o = model(x)
    R = torch.zeros_like(o)
    R[:, 2] = o[:, 2]
    perm = torch.cat([x[:, 3:], x[:, :3]], dim=1)
    want_perm = dref.epsilon(R, perm, model.fc.weight, model.fc.bias)
    want = torch.cat([want_perm[:, 3:], want_perm[:, :3]], dim=1)
    torch.testing.assert_close(got, want)
    bad = nn.Sequential(nn.Linear(6, 4), nn.Flatten(), nn.Unflatten(1, (2, 2)), nn.Flatten(),
                        nn.Linear(4, 2)).eval()
    comp = Composite([(nn.Linear, "epsilon"), (nn.Unflatten, "pass")])
    with pytest.raises(ValueError, match="rule Pass at .* needs equal input and output shapes"):
        explain(bad, torch.randn(2, 6), target=0, composite=comp)


def test_buffers_changed_by_the_forward_are_restored():
    """A forward that updates its own buffer leaves the model as it was after explain, also
    when explain raises."""
    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.register_buffer("calls", torch.zeros(()))
            self.register_buffer("last", torch.zeros(4))

        def forward(self, x):
            self.calls.add_(1)
            self.last = x[0].detach().clone()  # rebinding a buffer
            return self.fc(x)

    m = Counting().eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    last_obj = m.last
    explain(m, torch.randn(2, 4), target=0, composite="epsilon_plus")
    with pytest.raises(ValueError, match="out of range"):
        explain(m, torch.randn(2, 4), target=7, composite="epsilon_plus")
    assert m.last is last_obj
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_torchscript_module_is_refused():
    m = torch.jit.script(nn.Sequential(nn.Linear(4, 3)).eval())
    with pytest.raises(TypeError, match="TorchScript modules are not supported"):
        explain(m, torch.randn(2, 4), target=0, composite="epsilon_plus")


def test_inplace_relu_after_a_layer_needs_no_copy_and_keeps_the_numbers():
    """ReLU(inplace=True) on a layer's output (its only use) leaves the rules' numbers as they
    are with an out-of-place ReLU; a second use before the ReLU makes the engine keep a copy."""
    class Net(nn.Module):
        def __init__(self, inplace, extra_use):
            super().__init__()
            self.c1 = nn.Conv2d(2, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.c2 = nn.Conv2d(4, 3, 3)
            self.fc = nn.Linear(3 * 4 * 4, 5)
            self.inplace, self.extra_use = inplace, extra_use

        def forward(self, x):
            z = self.bn(self.c1(x))
            side = z.mean() if self.extra_use else 0.0  # a use of z before the ReLU
            z = F.relu(z, inplace=self.inplace)
            z = self.c2(z) + side
            return self.fc(F.relu(z, inplace=self.inplace).flatten(1))
    torch.manual_seed(3)
    for extra in (False, True):
        ref = Net(False, extra).double().eval()
        with torch.no_grad():
            ref.bn.running_mean.uniform_(-0.3, 0.3)
            ref.bn.running_var.uniform_(0.5, 1.5)
        inp = copy_module(ref)
        inp.inplace = True
        x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
        for comp in ("epsilon_gamma_box", "epsilon_alpha2_beta1", "epsilon_plus_flat"):
            want = explain(ref, x, target=1, composite=comp, low=-4.0, high=4.0)
            got = explain(inp, x, target=1, composite=comp, low=-4.0, high=4.0)
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)


def test_layer_output_used_again_after_its_batchnorm():
    """A layer whose output feeds its BatchNorm and, later, something else is not merged: the
    result equals canonize=False (the engine recomputes the output it let go at the BatchNorm)."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(2, 3, 3)
            self.bn = nn.BatchNorm2d(3)
            self.fc = nn.Linear(3 * 6 * 6, 4)

        def forward(self, x):
            z = self.c(x)
            y = torch.relu(self.bn(z))
            return self.fc((y + z).flatten(1))  # z used again, after the BatchNorm
    torch.manual_seed(4)
    m = Net().double().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.3, 0.3)
        m.bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    for comp in ("epsilon_gamma_box", "epsilon_plus"):
        got = explain(m, x, target=2, composite=comp, low=-4.0, high=4.0)
        want = explain(m, x, target=2, composite=comp, low=-4.0, high=4.0, canonize=False)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_activation_inputs_and_outputs_changed_in_place_later():
    """The identity rule keeps an activation's input and output (no ratio tensor of its own):
    changing either in place afterwards, or running the activation itself in place, gives the
    numbers of the out-of-place model; and the numbers are the identity rule's g·y/x, computed
    here by hand for a two-layer net with the plain gradient on its layers."""
    class Net(nn.Module):
        def __init__(self, inplace):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 4)
            self.bn = nn.BatchNorm1d(8)
            self.inplace = inplace

        def forward(self, x):
            h = self.fc1(x) + 0.0  # not a layer output: first kept by the activation
            y = F.silu(h)
            z = self.bn(self.fc1(x))
            if self.inplace:
                h.relu_()  # the activation's input, changed after its use
                y.mul_(2.0)  # its output
                F.silu(z, inplace=True)  # an in-place activation on a kept BatchNorm output
            else:
                h, y, z = h.relu(), y * 2.0, F.silu(z)
            return self.fc2(y + h + z)
    torch.manual_seed(7)
    ref = Net(False).double().eval()
    with torch.no_grad():
        ref.bn.running_mean.uniform_(-0.3, 0.3)
        ref.bn.running_var.uniform_(0.5, 1.5)
    inp = copy_module(ref)
    inp.inplace = True
    x = torch.randn(5, 6, dtype=torch.float64)
    comp = Composite([((nn.Linear, nn.BatchNorm1d), Gradient())], sum_rule=Norm(0.0))
    want = explain(ref, x, target=1, composite=comp)
    got = explain(inp, x, target=1, composite=comp)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    # by hand: every path is linear in this frame but for the activations' y/x
    with torch.no_grad():
        h = ref.fc1(x)
        z = ref.bn(h)
        W1, W2 = ref.fc1.weight, ref.fc2.weight
        s = ref.bn.weight / torch.sqrt(ref.bn.running_var + ref.bn.eps)
        g = W2[1].expand(5, 8)  # gradient at y + h + z
        ratio = lambda v: F.silu(v) / v
        g_h = 2.0 * g * ratio(h) + g * (h > 0)
        g_z = g * ratio(z)
        want_hand = x * ((g_h + g_z * s) @ W1)
    torch.testing.assert_close(want, want_hand, rtol=1e-10, atol=1e-12)
