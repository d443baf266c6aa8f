"""explain() on the models people use, and on the cases that used to go silently wrong.

Oracles: zennit 0.5.1 (an independent implementation, module hooks), hand-rolled LRP layer by
layer in float64 with lrp_ext's dense and conv reference rules (``lrp_ext.reference``), and
conservation on bias-free models.  Each library gets its own copy of a model.
"""
import collections
import copy
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from zennit.attribution import Gradient
from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat
from zennit.layer import Sum

import lrp_ext
from lrp_ext import reference as ref
from lrp_ext.composite import Epsilon, Flat, Gamma, Pass, ZBox, ZPlus

from _model_helpers import (assert_unchanged, calibrate_batchnorm, make_bias_free_, rel_err,
                            snapshot, top_target)

nn = torch.nn
BOUNDS = dict(low=-3.0, high=3.0)
ZENNIT = {"epsilon_gamma_box": lambda: EpsilonGammaBox(**BOUNDS),
          "epsilon_plus_flat": lambda: EpsilonPlusFlat()}
EPS = 1e-6
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
         nn.ConvTranspose3d)
_BN = nn.modules.batchnorm._BatchNorm


def _kw(preset):
    return BOUNDS if preset == "epsilon_gamma_box" else {}


def _zennit(model, x, R, preset):
    with Gradient(model, ZENNIT[preset]()) as attributor:
        _, rel = attributor(x.clone().requires_grad_(True), R)
    return rel.detach()


def _one_hot_logit(out, target):
    R = torch.zeros_like(out)
    idx = torch.arange(out.shape[0])
    R[idx, target] = out[idx, target]
    return R


def _mirror_zennit(preset):
    """The rules zennit's composite of that name gives a model without canonizers: its base
    map has (BatchNorm, Pass), so an unmerged BatchNorm passes relevance unchanged; conv and
    Linear as the preset.  Spelled out so the comparison does not depend on what lrp_ext does
    by default with a BatchNorm it does not merge."""
    bn = (_BN, Pass())
    if preset == "epsilon_gamma_box":
        return lrp_ext.Composite([bn, (_CONV, Gamma(0.25)), (nn.Linear, Epsilon(EPS))],
                                 first_map=[(_CONV, ZBox())])
    return lrp_ext.Composite([bn, (_CONV, ZPlus()), (nn.Linear, Epsilon(EPS))],
                             first_map=[(_CONV + (nn.Linear,), Flat())])


# ---------------------------------------------------------------------------------------------
# zennit parity: DenseNet-121, canonizers off on both sides
# ---------------------------------------------------------------------------------------------
_densenet = {}


def _densenet121():
    if not _densenet:
        gen = torch.Generator().manual_seed(121)
        torch.manual_seed(121)
        model = torchvision.models.densenet121(num_classes=10)
        calibrate_batchnorm(model, torch.randn(4, 3, 32, 32, generator=gen), gen)
        _densenet["m"] = (model, torch.randn(2, 3, 32, 32, generator=gen))
    return _densenet["m"]


@pytest.mark.parametrize("preset", ["epsilon_gamma_box", "epsilon_plus_flat"])
def test_densenet121_matches_zennit(preset):
    # zennit's BatchNorm merge crashes on DenseNet's concatenations, so both sides run without
    # merging (lrp_ext: canonize=False; zennit: no canonizer).  zennit's hooks carry relevance
    # itself backwards, and ops without a hook (the concatenations, the head's functional
    # F.relu and F.adaptive_avg_pool2d) apply their plain gradient to it: exact for the
    # concatenations (relevance routed to its slices) and for F.relu (relevance is already 0
    # where the ReLU output is); the head's average pool is exact only because its input is
    # 1x1 at this input size (32x32): at larger sizes zennit would spread relevance uniformly.
    model, x = _densenet121()
    with torch.no_grad():
        out = model(x)
    target = torch.tensor([3, 7])
    R = _one_hot_logit(out, target)
    want = _zennit(copy.deepcopy(model), x, R, preset)
    got = lrp_ext.explain(copy.deepcopy(model), x, target=target, composite=_mirror_zennit(preset),
                          canonize=False, **_kw(preset))
    assert got.shape == x.shape and torch.isfinite(got).all()
    assert rel_err(got, want) <= 1e-4


# ---------------------------------------------------------------------------------------------
# the same network written with modules and with functional calls
# ---------------------------------------------------------------------------------------------
class ModuleNet(nn.Module):
    """Conv, ReLU, max pool, a residual block, average pool, flatten, two Linear layers."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.add = Sum()  # the residual sum as a module (zennit gives it the proportional rule)
        self.relu3 = nn.ReLU()
        self.avg = nn.AdaptiveAvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32, 16)
        self.relu4 = nn.ReLU()
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x):
        h = self.pool(self.relu1(self.conv1(x)))
        r = self.conv3(self.relu2(self.conv2(h)))
        h = self.relu3(self.add(torch.stack([h, r], dim=-1)))
        h = self.flatten(self.avg(h))
        return self.fc2(self.relu4(self.fc1(h)))


class FunctionalNet(nn.Module):
    """ModuleNet's computation with functional calls on this module's own parameters."""

    def __init__(self, src: ModuleNet):
        super().__init__()
        for layer in ("conv1", "conv2", "conv3", "fc1", "fc2"):
            m = getattr(src, layer)
            self.register_parameter(f"{layer}_w", nn.Parameter(m.weight.detach().clone()))
            self.register_parameter(f"{layer}_b", nn.Parameter(m.bias.detach().clone()))

    def forward(self, x):
        h = F.max_pool2d(F.relu(F.conv2d(x, self.conv1_w, self.conv1_b, padding=1)), 2)
        r = F.relu(F.conv2d(h, self.conv2_w, self.conv2_b, padding=1))
        r = F.conv2d(r, self.conv3_w, self.conv3_b, padding=1)
        h = F.relu(h + r)
        h = torch.flatten(F.adaptive_avg_pool2d(h, 2), 1)
        return F.linear(F.relu(F.linear(h, self.fc1_w, self.fc1_b)), self.fc2_w, self.fc2_b)


@pytest.mark.parametrize("preset", ["epsilon_gamma_box", "epsilon_plus_flat"])
def test_functional_model_matches_module_model_and_zennit(preset):
    torch.manual_seed(5)
    mod = ModuleNet().eval()
    fun = FunctionalNet(mod).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = mod(x)
        torch.testing.assert_close(fun(x), out)
    target = torch.tensor([1, 4])
    got_mod = lrp_ext.explain(mod, x, target=target, composite=preset, **_kw(preset))
    got_fun = lrp_ext.explain(fun, x, target=target, composite=preset, **_kw(preset))
    # zennit on the module version: zennit's hooks carry relevance itself backwards, so a plain
    # `+` would hand the full relevance to both branches there; its Sum module gets the
    # proportional rule, which lrp_ext applies to `+` (and to stack-and-sum)
    want = _zennit(copy.deepcopy(mod), x, _one_hot_logit(out, target), preset)
    assert rel_err(got_fun, got_mod) <= 1e-5
    assert rel_err(got_mod, want) <= 1e-4
    assert rel_err(got_fun, want) <= 1e-4


# ---------------------------------------------------------------------------------------------
# timm
# ---------------------------------------------------------------------------------------------
TIMM = ["efficientnet_b0", "mobilenetv3_small_100", "resnet18"]


@pytest.mark.parametrize("name", TIMM)
def test_timm_model(name):
    import timm  # test extra: models are built from code, nothing is downloaded

    gen = torch.Generator().manual_seed(len(name))
    torch.manual_seed(len(name))
    model = timm.create_model(name, pretrained=False, num_classes=10)
    calibrate_batchnorm(model, torch.randn(4, 3, 64, 64, generator=gen), gen)
    x = torch.randn(1, 3, 64, 64, generator=gen)
    low, high = float(x.min()), float(x.max())
    with torch.no_grad():
        target = top_target(model(x))
    before = snapshot(model)
    for preset in ("epsilon_plus_flat", "epsilon_gamma_box"):
        kw = dict(low=low, high=high) if preset == "epsilon_gamma_box" else {}
        R = lrp_ext.explain(model, x, target=target, composite=preset, **kw)
        assert R.shape == x.shape and R.dtype == x.dtype
        assert torch.isfinite(R).all() and R.abs().sum() > 0, preset
    assert_unchanged(before, snapshot(model), name)
    # bias-free: conserves, also through the squeeze-excitation gates of efficientnet_b0 and
    # mobilenetv3 (default product rule: the sigmoid/hardsigmoid gate is held constant)
    make_bias_free_(model)
    with torch.no_grad():
        out = model(x)
    target = top_target(out)
    logit = float(out[0, target].double())
    R = lrp_ext.explain(model, x, target=target, composite="epsilon_gamma_box", low=low,
                        high=high)
    assert logit != 0.0
    assert abs(float(R.double().sum()) - logit) <= 1e-3 * abs(logit)


# ---------------------------------------------------------------------------------------------
# Hugging Face transformers from tiny configs
# ---------------------------------------------------------------------------------------------
# Accepted until the transformer rules land: an error that names LayerNorm / RMSNorm or the
# attention (its softmax, matmul or scaled_dot_product_attention, or a module path inside it).
TRANSFORMER_ERROR = re.compile(r"layer_?norm|rms_?norm|attention|attn|softmax|matmul|bmm",
                               re.IGNORECASE)


def _hf(name):
    import transformers as T

    common = dict(vocab_size=50)
    if name == "gpt2":
        cfg = T.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=16, **common)
        model, hidden = T.GPT2LMHeadModel(cfg), 32
    elif name == "bert":
        cfg = T.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=16, num_labels=3,
                           **common)
        model, hidden = T.BertForSequenceClassification(cfg), 32
    else:
        cfg = T.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=64,
                            max_position_embeddings=16, **common)
        model, hidden = T.LlamaForCausalLM(cfg), 32
    return model.eval(), hidden


# GPT-2's Linear layers are transformers' Conv1D (a torch.addmm with the weight): give them the
# ε rule too.  LRP-ε on every linear layer (z⁺ and γ are wrong for transformers).
def _transformer_composite():
    from transformers.pytorch_utils import Conv1D
    return lrp_ext.Composite([((nn.Linear, Conv1D), Epsilon(EPS))])


def _hf_case(name):
    """A tiny model, its keyword inputs (the token mask is an integer tensor) and the output
    selector: the last position's logits (GPT-2, Llama), the classification head's logits
    (BERT: ``ModelOutput.logits``, the default)."""
    torch.manual_seed(3)
    model, hidden = _hf(name)
    inputs = {"inputs_embeds": torch.randn(1, 6, hidden) * 0.5}
    output = (lambda o: o.logits[:, -1])
    if name == "bert":
        inputs["attention_mask"] = torch.tensor([[1, 1, 1, 1, 1, 0]])
        output = None
    return model, inputs, output


@pytest.mark.parametrize("name", ["gpt2", "bert", "llama"])
def test_hf_transformer(name):
    # Observed with the engine as first committed: all three raise the clear error for
    # 'scaled_dot_product_attention' (this composite gives attention no rule); the
    # transformer composites are run in test_hf_transformer_cp_lrp.
    model, inputs, output = _hf_case(name)
    emb = inputs["inputs_embeds"]
    with torch.no_grad():
        o = model(**inputs)
        logits = o.logits if output is None else output(o)
    target = top_target(logits)
    before = snapshot(model)
    try:
        R = lrp_ext.explain(model, inputs, target=target, composite=_transformer_composite(),
                            output=output)
    except Exception as exc:
        assert_unchanged(before, snapshot(model), f"{name} after explain raised {exc!r}")
        # ---- accepted until the transformer rules land: a clear error naming the op ----
        assert TRANSFORMER_ERROR.search(str(exc)), f"{name}: unclear error {exc!r}"
        return
    assert_unchanged(before, snapshot(model), name)
    assert isinstance(R, dict) and set(R) == {"inputs_embeds"}  # token mask: integer, no entry
    r = R["inputs_embeds"]
    assert r.shape == emb.shape and r.dtype == emb.dtype
    assert torch.isfinite(r).all() and r.abs().sum() > 0


_ADDED_EMBEDDINGS = ("wpe.weight", "position_embeddings.weight", "token_type_embeddings.weight")


@pytest.mark.parametrize("name", ["gpt2", "bert", "llama"])
def test_hf_transformer_cp_lrp(name):
    # The transformer composites.  CP-LRP (LRP-0 on linear layers; attention probabilities,
    # gates and the norms' std held constant) conserves on a bias-free model: every bias 0
    # and the embeddings added to inputs_embeds (positions, token types) 0.  AttnLRP (half
    # of a product to each factor, softmax by its gradient) does not conserve by design:
    # finite, of the right shape.
    model, inputs, output = _hf_case(name)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("bias") or pname.endswith(_ADDED_EMBEDDINGS):
                p.zero_()
        o = model(**inputs)
        logits = o.logits if output is None else output(o)
    target = top_target(logits)
    logit = float(logits[0, target].double())
    before = snapshot(model)
    R, out = lrp_ext.explain(model, inputs, target=target, composite="cp_lrp", output=output,
                             return_output=True)
    torch.testing.assert_close(out, logits)
    r = R["inputs_embeds"]
    assert r.shape == inputs["inputs_embeds"].shape and torch.isfinite(r).all()
    assert logit != 0.0
    assert abs(float(r.double().sum()) - logit) <= 1e-3 * abs(logit)
    R = lrp_ext.explain(model, inputs, target=target, composite="attnlrp", output=output)
    r = R["inputs_embeds"]
    assert r.shape == inputs["inputs_embeds"].shape and torch.isfinite(r).all()
    assert r.abs().sum() > 0
    assert_unchanged(before, snapshot(model), name)


# ---------------------------------------------------------------------------------------------
# small models with oracles computed layer by layer (float64)
# ---------------------------------------------------------------------------------------------
EPS_ONLY = lrp_ext.Composite([(nn.Linear, Epsilon(EPS))])


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(8, 7)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(7, 3)

    def forward(self, x):
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


class InplaceMLP(MLP):
    """MLP whose ReLUs are in-place ops whose results are not assigned."""

    def __init__(self, how):
        super().__init__()
        self.how = how

    def forward(self, x):
        y = self.fc1(x)
        if self.how == "method":
            y.relu_()
        else:
            F.relu(y, inplace=True)
        z = self.fc2(y)
        if self.how == "method":
            z.relu_()
        else:
            F.relu(z, inplace=True)
        return self.fc3(z)


def _mlp(cls=MLP, *args):
    torch.manual_seed(17)
    src = MLP().double().eval()
    model = cls(*args).double().eval()
    model.load_state_dict(src.state_dict())
    x = torch.randn(4, 6, dtype=torch.float64)
    return model, x


def _mlp_oracle(model, x, target):
    """LRP-ε layer by layer with lrp_ext.reference.epsilon; ReLUs pass relevance.  Returns the
    input relevance, the relevance at each module's output, and the model output."""
    with torch.no_grad():
        a1 = F.relu(F.linear(x, model.fc1.weight, model.fc1.bias))
        a2 = F.relu(F.linear(a1, model.fc2.weight, model.fc2.bias))
        out = F.linear(a2, model.fc3.weight, model.fc3.bias)
    R3 = _one_hot_logit(out, target)
    R2 = ref.epsilon(R3, a2, model.fc3.weight, model.fc3.bias, EPS)
    R1 = ref.epsilon(R2, a1, model.fc2.weight, model.fc2.bias, EPS)
    R0 = ref.epsilon(R1, x, model.fc1.weight, model.fc1.bias, EPS)
    return R0, {"fc1": R1, "relu1": R1, "fc2": R2, "relu2": R2, "fc3": R3}, out


TARGET4 = torch.tensor([0, 2, 1, 2])


@pytest.mark.parametrize("how", ["method", "functional"])
def test_inplace_op_not_assigned(how):
    model, x = _mlp(InplaceMLP, how)
    want_R, _, want_out = _mlp_oracle(model, x, TARGET4)
    R, out = lrp_ext.explain(model, x, target=TARGET4, composite=EPS_ONLY, return_output=True)
    torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(R, want_R, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["none", "no_grad", "inference_mode"])
def test_grad_modes(mode):
    model, x0 = _mlp()
    want, _, _ = _mlp_oracle(model, x0, TARGET4)
    if mode == "none":
        R = lrp_ext.explain(model, x0, target=TARGET4, composite=EPS_ONLY)
    elif mode == "no_grad":
        with torch.no_grad():
            R = lrp_ext.explain(model, x0, target=TARGET4, composite=EPS_ONLY)
            assert not torch.is_grad_enabled()
    else:
        with torch.inference_mode():
            x = x0.clone()  # an inference tensor, as the caller's data would be
            R = lrp_ext.explain(model, x, target=TARGET4, composite=EPS_ONLY)
            assert torch.is_inference_mode_enabled()
    assert torch.is_grad_enabled()
    torch.testing.assert_close(R, want, rtol=1e-10, atol=1e-12)


def test_relevance_at_hidden_modules():
    model, x = _mlp()
    want_R, want_at, want_out = _mlp_oracle(model, x, TARGET4)
    names = ["fc1", "relu2", "fc3"]
    R, at = lrp_ext.explain(model, x, target=TARGET4, composite=EPS_ONLY, at=names)
    torch.testing.assert_close(R, want_R, rtol=1e-10, atol=1e-12)
    assert set(at) == set(names)
    for n in names:
        torch.testing.assert_close(at[n], want_at[n], rtol=1e-10, atol=1e-12, msg=n)
    R2, at2, out = lrp_ext.explain(model, x, target=TARGET4, composite=EPS_ONLY, at=["fc2"],
                                   return_output=True)
    torch.testing.assert_close(at2["fc2"], want_at["fc2"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)


class PoolNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.relu(self.conv(x)))))


@pytest.mark.parametrize("how", ["target", "relevance"])
def test_empty_batch_maxpool(how):
    torch.manual_seed(2)
    model = PoolNet().eval()
    x = torch.randn(0, 3, 8, 8)
    kw = dict(target=1) if how == "target" else dict(relevance=torch.zeros(0, 5))
    R = lrp_ext.explain(model, x, composite="epsilon_gamma_box", low=-1.0, high=1.0, **kw)
    assert R.shape == (0, 3, 8, 8) and R.dtype == x.dtype


# ---------------------------------------------------------------------------------------------
# squeeze-excitation: x * sigmoid(fc(pool(x))), bias-free
# ---------------------------------------------------------------------------------------------
class SENet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(6, 6, bias=False)
        self.head = nn.Linear(6, 4, bias=False)

    def forward(self, x):
        h = self.relu(self.conv(x))
        gate = torch.sigmoid(self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)))
        p = h * gate[:, :, None, None]
        return self.head(torch.flatten(F.adaptive_avg_pool2d(p, 1), 1))


def _se():
    torch.manual_seed(23)
    model = SENet().double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    return model, x


def _avgpool_rule(R, a):
    """Proportional rule of a global average pool: R_in = a * R / stab(mean(a)) / (H W)."""
    z = a.mean(dim=(2, 3))
    s = R / ref.stabilize(z, EPS)
    return a * s[:, :, None, None] / (a.shape[2] * a.shape[3])


def _se_oracle(model, x, target, product_rule):
    """ε on conv and Linear layers, the proportional rule on the pools, pass through ReLU and
    sigmoid; the product h * gate split by the product rule: "constant" all to h, "uniform"
    half each, "gradient" the full relevance to each factor (gradient times input of a
    product of two factors)."""
    with torch.no_grad():
        h = F.relu(F.conv2d(x, model.conv.weight, padding=1))
        q = h.mean(dim=(2, 3))
        gate = torch.sigmoid(q @ model.fc.weight.t())
        p = h * gate[:, :, None, None]
        pooled = p.mean(dim=(2, 3))
        out = pooled @ model.head.weight.t()
    R_out = _one_hot_logit(out, target)
    R_pooled = ref.epsilon(R_out, pooled, model.head.weight, None, EPS)
    R_p = _avgpool_rule(R_pooled, p)
    share = {"constant": (1.0, 0.0), "uniform": (0.5, 0.5), "gradient": (1.0, 1.0)}
    to_h, to_gate = share[product_rule]
    R_h = to_h * R_p
    R_gate = to_gate * R_p.sum(dim=(2, 3))  # the broadcast gate: its copies' relevance summed
    if to_gate:
        R_q = ref.epsilon(R_gate, q, model.fc.weight, None, EPS)  # sigmoid passes
        R_h = R_h + _avgpool_rule(R_q, h)
    R_x = ref.conv.epsilon(R_h, x, model.conv.weight, None, padding=1, epsilon=EPS)
    return R_x, out


SE_TARGET = torch.tensor([1, 3])


@pytest.mark.parametrize("product_rule", [None, "constant", "uniform", "gradient"])
def test_squeeze_excitation_product_rule(product_rule):
    model, x = _se()
    kw = {} if product_rule is None else dict(product_rule=product_rule)
    comp = lrp_ext.Composite([(nn.Conv2d, Epsilon(EPS)), (nn.Linear, Epsilon(EPS))], **kw)
    want, out = _se_oracle(model, x, SE_TARGET, product_rule or "constant")
    R = lrp_ext.explain(model, x, target=SE_TARGET, composite=comp)
    torch.testing.assert_close(R, want, rtol=1e-8, atol=1e-10)
    logit = out[torch.arange(2), SE_TARGET]
    sums = R.sum(dim=(1, 2, 3))
    if product_rule == "gradient":  # the gate's share comes on top: not conserved
        assert ((sums - logit).abs() > 1e-2 * logit.abs()).all()
    else:
        torch.testing.assert_close(sums, logit, rtol=1e-3, atol=0)


def test_squeeze_excitation_preset_conserves():
    # epsilon_gamma_box: z^B on the first conv, ε on the Linear layers, gate held constant
    model, x = _se()
    with torch.no_grad():
        out = model(x)
    R = lrp_ext.explain(model, x, target=SE_TARGET, composite="epsilon_gamma_box",
                        low=float(x.min()), high=float(x.max()))
    logit = out[torch.arange(2), SE_TARGET]
    torch.testing.assert_close(R.sum(dim=(1, 2, 3)), logit, rtol=1e-3, atol=0)


# ---------------------------------------------------------------------------------------------
# strict: an op with parameters that no rule covers
# ---------------------------------------------------------------------------------------------
class RBF(nn.Module):
    """Distances to learned centres (torch.cdist): nonlinear, with a parameter."""

    def __init__(self, dim, k):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(k, dim))

    def forward(self, h):
        return torch.cdist(h, self.centers)


def _rbf_net(n_rbf=1):
    torch.manual_seed(31)
    layers = [("fc", nn.Linear(4, 5))]
    for i in range(n_rbf):
        layers.append((f"rbf{i}", RBF(5, 5)))
    layers.append(("head", nn.Linear(5, 2)))
    return nn.Sequential(collections.OrderedDict(layers)).double().eval()


def test_strict_raises_for_uncovered_op_with_parameters():
    model = _rbf_net()
    x = torch.randn(3, 4, dtype=torch.float64)
    before = snapshot(model)
    with pytest.raises(Exception) as info:
        lrp_ext.explain(model, x, target=0, composite=EPS_ONLY)
    msg = str(info.value)
    assert "cdist" in msg and "rbf0" in msg and "rule" in msg.lower(), msg
    assert_unchanged(before, snapshot(model))


def _lrp_warnings(record):
    return [w for w in record if "cdist" in str(w.message)]


def test_strict_false_uses_the_gradient_and_warns_once():
    model = _rbf_net()
    x = torch.randn(3, 4, dtype=torch.float64)
    target = torch.tensor([0, 1, 1])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        R = lrp_ext.explain(model, x, target=target, composite=EPS_ONLY, strict=False)
    assert len(_lrp_warnings(record)) == 1
    # oracle: ε on head, the plain gradient through cdist (gradient×input frame: the
    # relevance at the distances d divided by d is the gradient there), ε on fc
    fc, rbf, head = model.fc, model.rbf0, model.head
    with torch.enable_grad():
        h = fc(x).detach().requires_grad_(True)
        d = torch.cdist(h, rbf.centers)
        out = head(d)
        R_d = ref.epsilon(_one_hot_logit(out.detach(), target), d.detach(), head.weight,
                          head.bias, EPS)
        g_h, = torch.autograd.grad(d, h, R_d / d.detach())
    R_h = h.detach() * g_h
    want = ref.epsilon(R_h, x, fc.weight, fc.bias, EPS)
    torch.testing.assert_close(R, want, rtol=1e-10, atol=1e-12)


def test_strict_false_warns_once_for_several_uncovered_ops():
    model = _rbf_net(n_rbf=2)
    x = torch.randn(3, 4, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        R = lrp_ext.explain(model, x, target=0, composite=EPS_ONLY, strict=False)
    assert len(_lrp_warnings(record)) == 1
    assert R.shape == x.shape and torch.isfinite(R).all()


# ---------------------------------------------------------------------------------------------
# several inputs: a tuple of positional arguments, one of them an integer tensor
# ---------------------------------------------------------------------------------------------
class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(7, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, a, b, keep):
        return self.fc2(F.relu(self.fc1(torch.cat([a, b * keep], dim=1))))


def test_tuple_inputs():
    torch.manual_seed(41)
    model = TwoInputs().double().eval()
    a = torch.randn(4, 3, dtype=torch.float64)
    b = torch.randn(4, 4, dtype=torch.float64)
    keep = torch.tensor([[1], [0], [1], [1]])  # integer: no relevance of its own
    target = torch.tensor([2, 0, 1, 1])
    with torch.no_grad():
        h0 = torch.cat([a, b * keep], dim=1)
        a1 = F.relu(model.fc1(h0))
        out = model.fc2(a1)
    R1 = ref.epsilon(_one_hot_logit(out, target), a1, model.fc2.weight, model.fc2.bias, EPS)
    R0 = ref.epsilon(R1, h0, model.fc1.weight, model.fc1.bias, EPS)
    # b * keep is linear in b (keep does not depend on the inputs explained): R_b = R_(b*keep)
    R = lrp_ext.explain(model, (a, b, keep), target=target, composite=EPS_ONLY)
    assert isinstance(R, tuple) and len(R) == 3 and R[2] is None
    torch.testing.assert_close(R[0], R0[:, :3], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(R[1], R0[:, 3:], rtol=1e-10, atol=1e-12)
