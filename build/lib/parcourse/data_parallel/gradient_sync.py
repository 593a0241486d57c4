"""Data parallelism by hand: shard the batch, sum the gradients, step (chapters 3–5).

Each of K workers holds a full replica of the model and a shard of B_k samples of the
global batch of B = Σ_k B_k samples. The full-batch loss is

    L = (1/B) Σ_i ℓ_i = Σ_k (B_k/B) · [(1/B_k) Σ_{i∈shard k} ℓ_i]

so if worker k back-propagates its *share* of that loss, (1/B) Σ_{i∈shard k} ℓ_i, a sum
of the K gradients (one all-reduce) is exactly the full-batch gradient — for even shards
(B_k = B/K, where this is "average the K local-mean gradients") and uneven ones alike.
That is the corrected form of the source document's §4.1 formula.

Two ways to sum the gradients, both with :mod:`parcourse.collectives`:

* :class:`GradientAllReduce` — after ``backward()``: flatten every gradient into one
  buffer, all-reduce it, copy back. Simple; communication waits for the whole backward.
* :class:`BucketedGradientAllReduce` — during ``backward()``: parameters are grouped in
  buckets of about ``bucket_bytes``, in the order their gradients are produced (last
  layer first); a hook fires when a gradient is final, and when a bucket is complete a
  communication thread all-reduces it while autograd computes the earlier layers' gradients.
  This is the design of PyTorch DDP (Li et al., 2020). ``finish()`` waits for the last
  bucket and reports how much communication was hidden behind the backward pass.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .. import collectives
from .flat_shards import fill_buckets

NATIVE = "native"  # dist.all_reduce: the process group's own (gloo or NCCL)


def broadcast_parameters(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank, so replicas start equal."""
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=src)


def _all_reduce_fn(algorithm: str):
    if algorithm == NATIVE:
        return dist.all_reduce
    if algorithm not in collectives.ALGORITHMS:
        raise ValueError(f"unknown all-reduce algorithm {algorithm!r}: choose one of "
                         f"{', '.join((*collectives.ALGORITHMS, NATIVE))}")
    return collectives.ALL_REDUCE[algorithm]


class GradientAllReduce:
    """Sum all gradients over the workers in one all-reduce after the backward pass."""

    def __init__(self, model: nn.Module, algorithm: str = "ring"):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.all_reduce = _all_reduce_fn(algorithm)
        self.communication_seconds = 0.0

    def finish(self) -> None:
        start = time.perf_counter()
        grads = [p.grad for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        self.communication_seconds += time.perf_counter() - start


@dataclass
class _Bucket:
    params: list
    buffer: torch.Tensor
    ready: int = 0
    interval: tuple = (0.0, 0.0)  # start and end of its last all-reduce


class BucketedGradientAllReduce:
    """Sum gradients bucket by bucket while the backward pass is still running."""

    def __init__(self, model: nn.Module, bucket_bytes: int = 1 << 20, algorithm: str = "ring"):
        if bucket_bytes < 1:
            raise ValueError(f"bucket_bytes must be at least 1, got {bucket_bytes}")
        self.all_reduce = _all_reduce_fn(algorithm)
        self.buckets = self._make_buckets([p for p in model.parameters() if p.requires_grad],
                                          bucket_bytes)
        self.bucket_of = {id(p): b for b in self.buckets for p in b.params}
        self.pending: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.backward_end = 0.0
        self.overlapped_seconds = 0.0
        self.communication_seconds = 0.0
        for bucket in self.buckets:
            for p in bucket.params:
                p.register_post_accumulate_grad_hook(self._grad_ready)
        threading.Thread(target=self._communicate, name="gradient-all-reduce",
                         daemon=True).start()

    @staticmethod
    def _make_buckets(params: list, bucket_bytes: int) -> list[_Bucket]:
        """Fill buckets in reverse parameter order: the order backward produces gradients."""
        groups = fill_buckets(list(reversed(params)), bucket_bytes)
        return [_Bucket(g, torch.empty(sum(p.numel() for p in g), dtype=g[0].dtype,
                                       device=g[0].device)) for g in groups]

    def _grad_ready(self, param: torch.Tensor) -> None:
        bucket = self.bucket_of[id(param)]
        bucket.ready += 1
        if bucket.ready == len(bucket.params):
            bucket.ready = 0
            self.pending.put(bucket)

    def _communicate(self) -> None:
        while True:
            bucket = self.pending.get()
            try:
                if self.error is None:
                    start = time.perf_counter()
                    torch.cat([p.grad.reshape(-1) for p in bucket.params], out=bucket.buffer)
                    self.all_reduce(bucket.buffer)
                    offset = 0
                    for p in bucket.params:
                        p.grad.copy_(bucket.buffer[offset:offset + p.numel()].view_as(p.grad))
                        offset += p.numel()
                    bucket.interval = (start, time.perf_counter())
            except BaseException as err:  # re-raised in finish()
                self.error = err
            finally:
                self.pending.task_done()

    def finish(self) -> None:
        """Wait until every bucket is summed; account how much of that hid behind backward."""
        self.backward_end = time.perf_counter()
        self.pending.join()
        if self.error is not None:
            raise RuntimeError(f"gradient all-reduce failed: {self.error}") from self.error
        for bucket in self.buckets:
            start, end = bucket.interval
            self.communication_seconds += end - start
            self.overlapped_seconds += max(0.0, min(end, self.backward_end) - start)

    @property
    def overlap(self) -> float:
        """Fraction of all-reduce time that ran while backward was still computing."""
        return self.overlapped_seconds / self.communication_seconds if self.communication_seconds else 0.0
