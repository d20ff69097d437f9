"""Peak bytes of the CPU tensor storages that ops allocate (the quantity CUDA's ``max_memory_allocated`` reports), for
memory tests: a TorchDispatchMode adds every storage an op allocates and subtracts it when freed. Views of an input's
storage (``weight.t()``, ``x.view(...)``) are not allocations. torch.profiler's ``profile_memory`` recorded no CPU
memory events with this torch build, and a process's resident-set size is too coarse for tiny models."""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages ops allocate while active (inputs made before it are not counted)."""

    def __init__(self):
        super().__init__()
        self.current = self.peak = 0
        self.live: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.live.discard(key)
        self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # a view (weight.t(), x.view(...)) shares its input's storage: not an allocation
        inputs = {
            t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes and key not in self.live and key not in inputs:
                    self.live.add(key)
                    self.current += nbytes
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key, nbytes)
        return out


def measure(fn) -> int:
    with torch.no_grad(), LiveBytes() as counter:
        fn()
    return counter.peak
