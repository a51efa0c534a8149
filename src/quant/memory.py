"""What autograd keeps for backward, measured: the activation memory a train step holds until its backward."""

from __future__ import annotations

import torch


def saved_bytes(fn, *args, **kwargs) -> tuple[object, int]:
    """Run ``fn(*args, **kwargs)``; return its output and the bytes of the distinct storages autograd saved for
    backward meanwhile (a tensor saved by two ops counts once: it is one allocation)."""
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args, **kwargs)
    return out, sum(storages.values())
