"""What the engine knows about each tensor of the forward, and the recording mode.

Every floating tensor that depends on the explained inputs carries a :class:`Meta` while the
forward runs (kept in a table by ``id``, validated by a weak reference, never attached to the
tensor).  ``Meta.root`` is the tensor this one was computed from by elementwise ops alone
(itself for anything else): a product of two factors with the same root is an activation's own
arithmetic (``x·σ(x)``, ``0.5·x·(1+tanh(…))``), whose rule is the identity rule.
"""
from __future__ import annotations

import threading
import weakref

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["Meta", "Recorder", "RecordMode", "current"]

# the kind of a root: "reduce" (a mean/sum/norm over some dims), "gate" (σ, hard σ, tanh,
# softmax outputs), "other"
REDUCE, GATE, OTHER = "reduce", "gate", "other"


class Meta:
    __slots__ = ("root", "kind", "nonlin", "linear", "nonneg", "__weakref__")

    def __init__(self, root=None, kind=OTHER, nonlin=False, linear=True, nonneg=False):
        self.root = self if root is None else root
        self.kind = kind          # kind of the last non-affine step (gate / reduce / other)
        self.nonlin = nonlin      # passed a nonlinearity (or a reduction) since its root
        self.linear = linear      # a constant multiple of its root (plus a constant)
        self.nonneg = nonneg      # known >= 0 (a ReLU output)


_tls = threading.local()


def current():
    """The :class:`Recorder` of this thread's running explain, or None."""
    return getattr(_tls, "rec", None)


class Recorder:
    """State of one explain call: tensor metadata, layer records, module stack, findings."""

    def __init__(self):
        self._meta = {}
        self.layer_out = {}      # id(layer output) -> (weakref, LayerNode): uses, BN merging
        self.kept = {}           # id(tensor) -> [(weakref, node weakref, attr)]: copied before
        #                          an in-place change (weak: a node of a discarded graph, e.g.
        #                          the ops inside an activation module, frees its tensors)
        self.uses = {}           # id(kept tensor) -> dependent ops that used it so far
        self.module_stack = []   # names of the modules being run (for messages)
        self.uncovered = []      # (description) of ops that took the plain gradient
        self.first_done = False
        self.inputs = {}         # id(model input as the model sees it) -> its key
        self.direct = {}         # key -> tensor whose gradient is the input's direct relevance
        self.protected = None    # (tensor, copy of its values) from the last in-place change
        self.owner = {}          # id(parameter or buffer) -> (module name, module)
        self.prepared = None     # a Prepared store kept between calls (Explainer), or None

    def prepared_key(self, tensors, *extra):
        """A key of :attr:`prepared` for what is derived from ``tensors`` (None entries
        allowed), or None: no store, or a tensor that is not a parameter or buffer of the
        model (one computed in the forward may differ at the next call under the same id)."""
        if self.prepared is None:
            return None
        ids = []
        for t in tensors:
            if t is not None and id(t) not in self.owner:
                return None
            ids.append(None if t is None else id(t))
        return tuple(ids) + extra

    def direct_input(self, key, x):
        """A zero tensor of ``x``'s shape that a rule whose relevance is not a multiple of the
        input (flat, w², z^B) connects to: its gradient is that relevance at model input
        ``key`` (so no ``R / x`` is formed, which would lose it where ``x == 0``)."""
        t = self.direct.get(key)
        if t is None:
            base = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)
            t = self.direct[key] = base.expand(x.shape)
        return t

    # -- metadata ------------------------------------------------------------------------
    def meta(self, t):
        e = self._meta.get(id(t))
        if e is not None and e[0]() is t:
            return e[1]
        return None

    def mark(self, t, meta):
        key = id(t)
        table = self._meta

        def drop(_ref, key=key, table=table):
            ent = table.get(key)
            if ent is not None and ent[0] is _ref:
                del table[key]
        table[key] = (weakref.ref(t, drop), meta)

    def keep(self, t, node, attr):
        """``node.attr`` holds ``t``'s values: an in-place change of ``t`` copies them first."""
        ents = self.kept.setdefault(id(t), [])
        if ents and all(ref() is not t for ref, _, _ in ents):  # an earlier tensor's id
            ents.clear()
            self.uses.pop(id(t), None)
        ents.append((weakref.ref(t), weakref.ref(node), attr))

    def where(self):
        if not self.module_stack:
            return "the model's forward"
        name, mod = self.module_stack[-1]
        return f"module '{name}' ({type(mod).__name__})"


class RecordMode(TorchFunctionMode):
    """Routes every torch function of the forward through ``dispatch(rec, func, ...)``."""

    def __init__(self, rec, dispatch):
        super().__init__()
        self.rec, self.dispatch = rec, dispatch

    def __enter__(self):
        _tls.rec = self.rec
        return super().__enter__()

    def __exit__(self, *exc):
        _tls.rec = None
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return self.dispatch(self.rec, func, args, kwargs or {})
