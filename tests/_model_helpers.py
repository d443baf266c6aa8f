"""Helpers for the whole-model tests: random-weight models with working statistics, bias-free
copies on which the LRP rules conserve relevance, and a snapshot of everything explain must
leave untouched on a model.
"""
import copy
import hashlib
import threading

import torch

nn = torch.nn

_BN = nn.modules.batchnorm._BatchNorm
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
# parameters that are added to the signal (biases in all but name)
_ADDITIVE_NAMES = ("bias", "class_token", "cls_token", "pos_embedding", "pos_embed")


# ---------------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------------
def reinit_zero_layers(model, gen):
    """Layers initialised to all-zero weights (e.g. torchvision's ViT head) get random weights,
    so that the output depends on the input."""
    for mod in model.modules():
        w = getattr(mod, "weight", None)
        if isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)) and w is not None \
                and not bool(w.detach().any()):
            fan_in = w[0].numel()
            with torch.no_grad():
                w.copy_(torch.randn(w.shape, generator=gen) / fan_in ** 0.5)
    return model


@torch.no_grad()
def calibrate_batchnorm(model, x, gen):
    """BatchNorm statistics of the data instead of the init's (0, 1), so that activations stay
    of order one through deep random-weight models (with the init's statistics they shrink to
    1e-13 in EfficientNet and grow to 1e7 in ResNet-152, where the rules' stabilisers would
    dominate); then random affine parameters so that every merge is non-trivial.  Leaves the
    model in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, _BN)]
    if not bns:
        return model.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batch
    model.eval()
    for m in bns:
        m.train()
    model(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
        n = m.num_features
        if m.affine:
            m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# bias-free copies
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def make_bias_free_(model):
    """In place: every conv/Linear/attention bias 0, LayerNorm/GroupNorm biases 0, ViT's class
    token and position embedding 0, and every BatchNorm's bias chosen so that
    ``BN(x) = x * weight / sqrt(var + eps)`` (shift 0: ``bias = weight * mean / sqrt(var + eps)``),
    so a BatchNorm merged into its layer leaves that layer without a bias.  Returns the model."""
    for mod in model.modules():
        if isinstance(mod, _BN):
            scale = torch.rsqrt(mod.running_var + mod.eps)
            if mod.affine:
                scale = scale * mod.weight
                mod.bias.copy_(scale * mod.running_mean)
            else:
                mod.running_mean.zero_()
            continue
        for pname, p in mod.named_parameters(recurse=False):
            if isinstance(mod, _NORMS) and pname == "weight":
                continue
            if pname.endswith(_ADDITIVE_NAMES):
                p.zero_()
    return model


def bias_free_copy(model):
    return make_bias_free_(copy.deepcopy(model))


# ---------------------------------------------------------------------------------------------
# snapshot of a model
# ---------------------------------------------------------------------------------------------
def _digest(t):
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    raw = t.reshape(-1).contiguous().view(torch.uint8)
    return hashlib.sha1(raw.numpy()).hexdigest()


_PLAIN = (bool, int, float, str, bytes, type(None))


def _value(v):
    if isinstance(v, _PLAIN):
        return ("=", v)
    if isinstance(v, (tuple, frozenset)) and all(isinstance(e, _PLAIN) for e in v):
        return ("=", v)
    return ("id", id(v), type(v).__name__)


def _global_hooks():
    import torch.nn.modules.module as M
    out = {}
    for k, v in vars(M).items():
        if k.startswith("_global") and isinstance(v, dict):
            out[k] = tuple(v.keys())
    return out


def snapshot(model):
    """Everything explain promises to leave unchanged: every state_dict entry (dtype, shape,
    strides, storage address and a digest of its bytes), and for every module its class,
    training flag, the keys and values (identity for objects) of its ``__dict__``, its
    parameters (identity, requires_grad) and buffers (identity), its submodules and its hook
    dicts; plus the global module hooks and the grad mode."""
    state = {}
    for k, v in model.state_dict(keep_vars=True).items():
        if isinstance(v, torch.Tensor):
            state[k] = (v.dtype, tuple(v.shape), v.stride(), v.data_ptr(), v.requires_grad,
                        id(v), _digest(v))
        else:
            state[k] = _value(v)
    mods = {}
    for name, mod in model.named_modules(remove_duplicate=False):
        d = {}
        for k, v in vars(mod).items():
            if isinstance(v, dict) and (k.endswith("hooks") or "hooks_" in k
                                        or k in ("_parameters", "_buffers", "_modules")):
                d[k] = ("dict", id(v), tuple((kk, id(vv)) for kk, vv in v.items()))
            elif isinstance(v, set):
                d[k] = ("set", id(v), frozenset(v) if all(isinstance(e, _PLAIN) for e in v)
                        else len(v))
            else:
                d[k] = _value(v)
        params = {k: (id(p), p.requires_grad) for k, p in mod._parameters.items()
                  if p is not None}
        mods[name] = (type(mod), mod.training, d, params)
    return {"state": state, "modules": mods, "global_hooks": _global_hooks(),
            "grad_mode": torch.is_grad_enabled()}


def assert_unchanged(before, after, what="model"):
    """Compare two snapshots; the assertion message names the first difference."""
    assert before["grad_mode"] == after["grad_mode"], f"{what}: grad mode changed"
    assert before["global_hooks"] == after["global_hooks"], f"{what}: global module hooks changed"
    sb, sa = before["state"], after["state"]
    assert sb.keys() == sa.keys(), \
        f"{what}: state_dict keys changed: +{sorted(sa.keys() - sb.keys())} " \
        f"-{sorted(sb.keys() - sa.keys())}"
    for k in sb:
        assert sb[k] == sa[k], f"{what}: state_dict entry {k!r} changed"
    mb, ma = before["modules"], after["modules"]
    assert mb.keys() == ma.keys(), f"{what}: module tree changed"
    for name in mb:
        tb, trb, db, pb = mb[name]
        ta, tra, da, pa = ma[name]
        where = f"{what}: module {name or '<root>'!r}"
        assert tb is ta, f"{where}: class changed"
        assert trb == tra, f"{where}: training flag changed"
        assert db.keys() == da.keys(), \
            f"{where}: attributes changed: +{sorted(da.keys() - db.keys())} " \
            f"-{sorted(db.keys() - da.keys())}"
        for k in db:
            assert db[k] == da[k], f"{where}: attribute {k!r} changed"
        assert pb == pa, f"{where}: parameters changed"


# ---------------------------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------------------------
def rel_err(got, want):
    got, want = got.double(), want.double()
    den = want.norm()
    assert den > 0, "reference is all zero: the comparison would prove nothing"
    return float((got - want).norm() / den)


def top_target(out):
    """Index of the largest-magnitude logit of each sample (a nonzero target)."""
    return out.detach().abs().argmax(dim=1)


def in_threads(fn, inputs, repeats=3):
    """``fn(x)`` for every ``x`` of ``inputs``, each in its own thread, all at once, ``repeats``
    times per thread; the last result of each (an exception in any thread is raised)."""
    got, errors = [None] * len(inputs), []

    def work(i):
        try:
            for _ in range(repeats):
                got[i] = fn(inputs[i])
        except Exception as exc:  # pragma: no cover - raised below
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return got
