"""Model loading for the command line, the small digits CNN of the demo, and the one place where
the command line turns (model, input) into an attribution.

Model SPEC strings (``load_model``):

* a file: TorchScript (``torch.jit.save``) or a whole pickled module (``torch.save(model)``);
* ``package.module:factory``: ``factory()`` is called (or ``factory`` is used if it already is a
  module);
* a torchvision model name (``resnet18``, ``vgg16``, ...): built with ``weights=None``, i.e.
  randomly initialised — nothing is downloaded.
"""
import importlib
import os
import sys
import warnings
import zipfile

import numpy as np
import torch
from torch import nn

LRP_COMPOSITES = ("epsilon_gamma_box", "epsilon_plus", "epsilon_plus_flat",
                  "epsilon_alpha2_beta1", "epsilon_alpha2_beta1_flat")
GRADIENT_X_INPUT = "gradient_x_input"
RANDOM = "random"
METHODS = LRP_COMPOSITES + (GRADIENT_X_INPUT,)


class InputError(ValueError):
    """Bad user input (file, model, image, shape). The command line prints its message on one
    line and exits with code 2."""


def _one_line(exc):
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- model loading
def load_model(spec, device="cpu"):
    """Return ``(model, description)`` for a SPEC string; the model is in eval mode on ``device``.
    Raises ``InputError`` naming the problem."""
    if not isinstance(spec, str) or not spec:
        raise InputError("empty model spec")
    if os.path.exists(spec):
        model, desc = _load_model_file(spec)
    elif ":" in spec:
        model, desc = _load_factory(spec)
    else:
        model, desc = _load_torchvision(spec)
    if not isinstance(model, nn.Module):
        raise InputError(f"model spec {spec!r} gave a {type(model).__name__}, not a "
                         "torch.nn.Module")
    try:
        model = model.to(device)
    except Exception as exc:  # noqa: BLE001 - report, don't crash
        raise InputError(f"cannot move model {spec!r} to {device}: {_one_line(exc)}") from None
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, desc


def _load_model_file(path):
    if os.path.isdir(path):
        raise InputError(f"model path {path!r} is a directory, not a model file")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise InputError(f"cannot read model file {path!r}: {exc.strerror}") from None
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # jit.load's deprecation notice
                return torch.jit.load(path, map_location="cpu"), f"TorchScript file {path}"
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"cannot load TorchScript file {path!r}: {_one_line(exc)}") from None
    try:
        # a whole pickled module needs full unpickling: only load files you trust
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot load model file {path!r}: not TorchScript, and torch.load "
                         f"failed: {_one_line(exc)}") from None
    if isinstance(obj, nn.Module):
        return obj, f"torch.save file {path}"
    if isinstance(obj, dict):
        raise InputError(f"model file {path!r} holds a {type(obj).__name__} (a state_dict?), not a "
                         "model: save the whole model (torch.save(model) or torch.jit.save) or "
                         "use a module:factory spec")
    raise InputError(f"model file {path!r} holds a {type(obj).__name__}, not a torch.nn.Module")


def _is_torchscript(path):
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _load_factory(spec):
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise InputError(f"model spec {spec!r}: expected module:factory")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(mod_name)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"model spec {spec!r}: cannot import module {mod_name!r}: "
                         f"{_one_line(exc)}") from None
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError(f"model spec {spec!r}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        return obj, f"{spec}"
    if not callable(obj):
        raise InputError(f"model spec {spec!r}: {attr!r} is neither a module nor callable")
    try:
        return obj(), f"{spec}()"
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"model spec {spec!r}: calling {attr}() failed: "
                         f"{_one_line(exc)}") from None


def _load_torchvision(name):
    try:
        import torchvision
    except ImportError:
        raise InputError(f"unknown model {name!r}: not a file, not module:factory, and torchvision "
                         "is not installed") from None
    names = set(torchvision.models.list_models())
    if name not in names:
        raise InputError(f"unknown model {name!r}: not a file, not module:factory, nor a "
                         "torchvision model name")
    try:
        return (torchvision.models.get_model(name, weights=None),
                f"torchvision {name} (weights=None: random initialisation)")
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot build torchvision model {name!r}: {_one_line(exc)}") from None


# --------------------------------------------------------------------------- demo model
class DigitsCNN(nn.Sequential):
    """A small CNN for 1x8x8 digit images with values in [0, 1] (scikit-learn's digits / 16)."""

    def __init__(self, classes=10):
        super().__init__(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
            nn.Linear(64, classes),
        )


def load_digits_split(seed=0, test_fraction=0.2):
    """scikit-learn's bundled 8x8 digits (no download) as float tensors in [0, 1], shape
    (N, 1, 8, 8), split with a fixed seed. Returns ``(x_train, y_train, x_test, y_test)``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise InputError("the digits demo needs scikit-learn (pip install scikit-learn)") from None
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.from_numpy(np.random.RandomState(seed).permutation(len(y)))
    n_test = int(round(len(y) * test_fraction))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def train_digits_cnn(epochs=8, seed=0, batch_size=64, lr=3e-3, data=None, log=None):
    """Train ``DigitsCNN`` on the digits training split with fixed seeds (seconds on a CPU).
    Returns ``(model, test_accuracy, (x_test, y_test))``."""
    x_tr, y_tr, x_te, y_te = data if data is not None else load_digits_split(seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for ep in range(epochs):
        perm = torch.randperm(len(y_tr), generator=gen)
        total = 0.0
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            loss = nn.functional.cross_entropy(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        if log is not None:
            log(f"epoch {ep + 1}/{epochs}: train loss {total / len(perm):.4f}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        acc = (model(x_te).argmax(1) == y_te).float().mean().item()
    return model, acc, (x_te, y_te)


def digits_cnn(epochs=8, seed=0):
    """Factory for ``lrp_ext.cli.models:digits_cnn``: the demo CNN, trained on the spot."""
    return train_digits_cnn(epochs=epochs, seed=seed)[0]


# --------------------------------------------------------------------------- attribution
def _explain_fn():
    """``lrp_ext.explain`` (model-level LRP with named composites)."""
    import lrp_ext
    fn = getattr(lrp_ext, "explain", None)
    if not callable(fn):  # absent, or the submodule lrp_ext.explain itself
        try:
            from lrp_ext.explain import explain as fn
        except ImportError:
            raise InputError("this lrp_ext build has no lrp_ext.explain: LRP composites are "
                             f"unavailable (use --composite {GRADIENT_X_INPUT})") from None
    return fn


def check_methods_for_model(model, methods):
    """LRP composites need a model that torch.fx can trace: a TorchScript module cannot be
    traced, so only gradient x input (and random) work for it."""
    lrp = [m for m in methods if m in LRP_COMPOSITES]
    if lrp and isinstance(model, torch.jit.ScriptModule):
        raise InputError(f"composite {lrp[0]} needs a model torch.fx can trace, and this is a "
                         f"TorchScript model: use --composite {GRADIENT_X_INPUT}, or load the "
                         "model from a torch.save file or a module:factory spec")


def forward(model, x):
    """Model output for a batch; a model that rejects the input raises ``InputError``."""
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - e.g. shape mismatch inside the model
        raise InputError(f"the model rejected an input of shape {tuple(x.shape)}: "
                         f"{_one_line(exc)}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"the model output has shape {shape}; expected (batch, classes)")
    if not torch.isfinite(out).all():
        raise InputError(f"the model's output holds NaN or infinite values for an input of shape "
                         f"{tuple(x.shape)}: nothing to explain")
    return out


def resolve_target(out, target):
    """``target``: None (the predicted class), an int, or a sequence/tensor of per-sample ints."""
    n, classes = out.shape
    if target is None:
        t = out.argmax(1)
    elif isinstance(target, int):
        t = torch.full((n,), target, dtype=torch.long, device=out.device)
    else:
        t = torch.as_tensor(target, dtype=torch.long).to(out.device).reshape(-1)
        if t.numel() != n:
            raise InputError(f"{t.numel()} targets given for {n} inputs")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= classes):
        raise InputError(f"target class {t.tolist()} out of range for a model with {classes} "
                         "outputs")
    return t


def attribute(model, x, method, target=None, low=None, high=None, seed=0, top_k=None,
              explainers=None):
    """Attribution of ``model``'s output for ``target`` (default: predicted class) to ``x``.

    ``method``: an LRP composite name, ``gradient_x_input`` or ``random``. The relevance fed in at
    the output is the target logit (one-hot times output), so for conservative rules the input
    relevance sums to about that logit. ``top_k``: the ``top_k`` highest-scoring classes of each
    sample instead, from one forward (relevance (N, top_k, ...), targets (N, top_k)).
    ``explainers``: a dict kept by a caller that explains many batches with this model; it
    holds one ``lrp_ext.Explainer`` per composite, which keeps what the rules derive from the
    weights between batches. Returns ``(relevance, output, target)``.
    """
    out = forward(model, x)
    if top_k is not None:
        if top_k > out.shape[1]:
            raise InputError(f"--top-k {top_k} exceeds the model's {out.shape[1]} outputs")
        t = out.topk(top_k, dim=1).indices
    else:
        t = resolve_target(out, target)
    cols = t if t.dim() == 2 else t[:, None]
    if method == RANDOM:
        g = torch.Generator().manual_seed(seed)
        shape = (x.shape[0], top_k) + tuple(x.shape[1:]) if top_k else x.shape
        rel = torch.rand(shape, generator=g, dtype=torch.float32).to(x.device, x.dtype)
        return rel, out, t
    if method == GRADIENT_X_INPUT:
        xg = x.detach().clone().requires_grad_(True)
        try:
            with torch.enable_grad():
                y = model(xg)
                grads = []
                for k in range(cols.shape[1]):
                    onehot = torch.zeros_like(y).scatter_(1, cols[:, k:k + 1], 1.0)
                    grads.append(torch.autograd.grad(y, xg, grad_outputs=onehot,
                                                     retain_graph=k + 1 < cols.shape[1])[0])
        except RuntimeError as exc:
            raise InputError(f"gradient of the model failed: {_one_line(exc)}") from None
        rel = xg.detach()[:, None] * torch.stack(grads, 1)
        return (rel if top_k else rel[:, 0]), out, t
    r_out = torch.zeros_like(out)
    r_out.scatter_(1, cols[:, :1], out.gather(1, cols[:, :1]))
    if method not in LRP_COMPOSITES:
        raise InputError(f"unknown composite {method!r}; choose from "
                         f"{', '.join(METHODS)}")
    if method == "epsilon_gamma_box" and (low is None or high is None):
        low = x.detach().amin() if low is None else low
        high = x.detach().amax() if high is None else high
    kwargs = {}
    if method == "epsilon_gamma_box":
        # broadcast views: z^B forms the bounds' part once for a bound the same for every
        # sample
        kwargs = {k: torch.as_tensor(v, dtype=x.dtype).to(x.device).expand(x.shape)
                  for k, v in (("low", low), ("high", high))}
    if explainers is None:
        fn = _explain_fn()

        def run(**kw):
            return fn(model, x, composite=method, **kw)
    else:
        ex = explainers.get(method)
        if ex is None:
            _explain_fn()  # the same error as below for a build without it
            from lrp_ext.explain import Explainer
            ex = explainers[method] = Explainer(model, method)

        def run(**kw):
            return ex(x, **kw)
    try:
        if top_k:  # one forward, the top_k targets in one batched backward
            rel = run(target=t, **kwargs)
        else:
            rel = run(relevance=r_out, **kwargs)
    except (TypeError, ValueError, NotImplementedError, RuntimeError, AttributeError) as exc:
        raise InputError(f"LRP ({method}) failed on this model: {_one_line(exc)}") from None
    if isinstance(rel, tuple):
        rel = rel[0]
    return rel.detach(), out, t

