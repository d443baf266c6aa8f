"""What the engine derives from a model's weights, kept between explain calls by an
:class:`~lrp_ext.explain.Explainer`."""
from __future__ import annotations

import torch

__all__ = ["Prepared"]


class Prepared:
    """Layer specs (weights and hyper-parameters, merged BatchNorms; through ``ConvSpec.keep``
    the signed weights and ``|W|`` the rules build) and BatchNorm scales, by key.

    They stay valid while every parameter and buffer of the model is the same tensor, at the
    same address, with the same version counter: in-place changes through PyTorch ops bump it
    (optimiser steps, ``load_state_dict``, ``p.add_(…)``), and :meth:`check` then empties the
    store.  A change that bypasses the counter (``p.data.copy_(…)``) needs :meth:`clear`.
    """

    def __init__(self):
        self._stamp = None
        self._items = {}

    def clear(self):
        self._items.clear()
        self._stamp = None

    def check(self, tensors):
        """Empty the store unless ``tensors`` (the model's parameters and buffers, in a fixed
        order) are those it was filled from, unchanged."""
        stamp = [_stamp(t) for t in tensors]
        if stamp != self._stamp:
            self._items.clear()
            self._stamp = stamp

    def get(self, key, make):
        v = self._items.get(key)
        if v is None:
            v = self._items[key] = make()
        return v

    def spec(self, key, make):
        """The layer spec under ``key`` (``make()`` the first time), given a ``keep`` dict in
        which its rules keep what they derive from its weights."""
        def kept():
            out = make()
            out.keep = {}
            return out
        return self.get(key, kept)

    def __len__(self):
        return len(self._items)

    def nbytes(self, exclude=()):
        """Bytes of the tensors held, counting each storage once and none of ``exclude`` (the
        model's own parameters and buffers, which the kept specs share)."""
        seen = {t.untyped_storage().data_ptr() for t in exclude}
        total = 0
        stack = list(self._items.values())
        while stack:
            v = stack.pop()
            if isinstance(v, torch.Tensor):
                st = v.untyped_storage()
                if st.data_ptr() not in seen:
                    seen.add(st.data_ptr())
                    total += st.nbytes()
            elif isinstance(v, (tuple, list)):
                stack.extend(v)
            elif isinstance(v, dict):
                stack.extend(v.values())
            elif v is not None and not isinstance(v, (str, int, float, bool)):
                # a spec (slots) or its signed weights (a dict; its ``spec`` is walked anyway)
                names = {n for c in type(v).__mro__ for n in getattr(c, "__slots__", ())}
                names |= set(getattr(v, "__dict__", {}))
                stack.extend(getattr(v, n, None) for n in names - {"spec", "__weakref__"})
        return total


def _stamp(t):
    """Identity, version and address of a parameter or buffer (an uninitialised lazy
    parameter, or one without plain storage, by what it has)."""
    try:
        return id(t), type(t), t._version, t.data_ptr()
    except Exception:  # noqa: BLE001 - e.g. sparse, or a LazyModule's placeholder (ValueError)
        return id(t), type(t), None, None
