"""Memory measured, not assumed: the live bytes of a process's tensors, and their peak
(chapter 5, "When the model does not fit").

On a GPU the caching allocator counts every byte it hands out
(``torch.cuda.max_memory_allocated``). The CPU allocator keeps no such statistics, and the
profiler's memory records see only the thread that started it (a ZeRO run allocates in its
communication thread too). So on the CPU, :class:`LiveBytes` counts from the tensors
themselves: a ``TorchDispatchMode`` sees every operator call — forward, backward (autograd
runs a CPU graph's backward in the calling thread, under the same mode), optimizer and
collectives — and remembers, by a weak reference, the storage of every tensor that an
operator reads or writes. After each call it adds up the current ``nbytes()`` of the
storages still alive. That sum is exact for what it sees: views share one storage and
are counted once; a storage that is freed drops out (its weak reference dies); a storage
resized in place (ZeRO-3 frees a block's parameters with ``resize_(0)``) is counted at
its current size. The peak is the largest sum after any operator. What it cannot see is
memory that no operator on this thread ever touches (a communication library's private
buffers); :func:`tensor_bytes` of the known state checks it from below, and on CPU the
single-threaded case is checked against the profiler in the tests.
"""

from __future__ import annotations

import threading
import weakref
from typing import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's shard on this rank (FSDP2's parameters, gradients and state); else t."""
    return t.to_local() if hasattr(t, "to_local") else t


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Total bytes of the given tensors' elements on this rank (``numel × element size``;
    of a DTensor, its local shard)."""
    return sum(_local(t).numel() * t.element_size() for t in tensors)


def held_state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None
                     ) -> dict[str, int]:
    """Bytes of parameters, gradients and optimizer state this process holds right now,
    counted from the tensors (ZeroRedundancyOptimizer: its inner optimizer's share)."""
    params = list(model.parameters())
    inner = getattr(optimizer, "optim", None)
    local = inner if isinstance(inner, torch.optim.Optimizer) else optimizer
    state = [value for per in (local.state.values() if local is not None else ())
             for value in per.values() if torch.is_tensor(value)]
    return {"parameters": tensor_bytes(params),
            "gradients": tensor_bytes(p.grad for p in params if p.grad is not None),
            "optimizer state": tensor_bytes(state)}


class LiveBytes(TorchDispatchMode):
    """Live and peak bytes of the tensors seen by operators run under this mode (CPU).

    ``with LiveBytes(track=state) as meter: step()`` — ``track`` adds tensors that exist
    before (parameters, gradients, optimizer state); ``meter.peak`` is the largest total
    after any operator, ``meter.current()`` the total now. With ``created_only`` it counts
    only the storages that operators create (an output that is none of the operator's
    inputs), so what existed before the block is left out.
    """

    def __init__(self, track: Iterable[torch.Tensor] = (), created_only: bool = False):
        super().__init__()
        self.created_only = created_only
        self._storages: dict[int, weakref.ref] = {}
        self._lock = threading.Lock()
        self.peak = 0
        self.track(track)
        self.peak = self.current()

    def track(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count these tensors' storages from now on (until they are freed)."""
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                storage = tensor.untyped_storage()
                key = storage._cdata
                if key not in self._storages:
                    self._storages[key] = weakref.ref(storage, self._forget(key))

    def _forget(self, key: int):
        def callback(_ref):
            with self._lock:
                self._storages.pop(key, None)
        return callback

    def current(self) -> int:
        """Bytes of the storages alive now."""
        with self._lock:
            refs = list(self._storages.values())
        return sum(storage.nbytes() for storage in (ref() for ref in refs) if storage is not None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.created_only:
            inputs, _ = tree_flatten((args, kwargs))
            before = {t.untyped_storage()._cdata for t in inputs if isinstance(t, torch.Tensor)}
            outputs, _ = tree_flatten(out)
            self.track(t for t in outputs if isinstance(t, torch.Tensor)
                       and t.untyped_storage()._cdata not in before)
        else:
            leaves, _ = tree_flatten((args, kwargs, out))
            self.track(leaf for leaf in leaves if isinstance(leaf, torch.Tensor))
        self.peak = max(self.peak, self.current())
        return out


class PeakMemory:
    """The peak bytes of a block of code on ``device``: the CUDA allocator's statistics on
    a GPU, :class:`LiveBytes` on the CPU. ``with PeakMemory(device, state) as m: ...``
    then ``m.peak`` (bytes) and ``m.method`` (which of the two measured it)."""

    def __init__(self, device: torch.device, track: Iterable[torch.Tensor] = ()):
        self.device, self.peak = torch.device(device), 0
        self.method = "torch.cuda.max_memory_allocated" if self.device.type == "cuda" \
            else "LiveBytes (dispatch-mode count of live storages)"
        self._meter = None if self.device.type == "cuda" else LiveBytes(track)

    def __enter__(self) -> "PeakMemory":
        if self._meter is None:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._meter.__enter__()
        return self

    def current(self) -> int:
        """The bytes held now (CUDA: allocated; CPU: the live storages seen so far)."""
        if self._meter is None:
            return torch.cuda.memory_allocated(self.device)
        return self._meter.current()

    def __exit__(self, *exc) -> None:
        if self._meter is None:
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._meter.__exit__(*exc)
            self.peak = self._meter.peak
