"""All-reduce built from point-to-point messages, and its α–β cost (chapter 3).

After an all-reduce every rank holds the element-wise sum of every rank's tensor. Three
algorithms, each written with ``torch.distributed`` ``send``/``recv``/``isend``/
``irecv`` only, each updating the tensor in place like ``dist.all_reduce``:

* ``naive_all_reduce`` — a parameter server: every rank sends its tensor to rank 0,
  which adds them up and sends the sum back. Rank 0's link carries everything.
* ``ring_all_reduce`` — the tensor is cut into K chunks. Reduce-scatter: in K−1 steps
  each rank passes one chunk to its right neighbour and adds the chunk arriving from its
  left, so that rank r ends up owning the full sum of chunk r. All-gather: K−1 more
  steps pass the finished chunks round the ring. Each rank sends 2(K−1)/K of the tensor
  in total, whatever K is: the bandwidth-optimal schedule (Patarasuk & Yuan, 2009). The
  two phases are :mod:`parcourse.ring`'s, the same code as the reduce-scatter and
  all-gather of :mod:`parcourse.scatter_gather`, re-exported here.
* ``tree_all_reduce`` — a binomial tree: ⌈log₂K⌉ rounds of pairwise reduction towards
  rank 0, then the same rounds in reverse to broadcast the sum (few messages: latency
  optimal, but each carries the whole tensor).

With a latency α per message and a time β per byte, sending n bytes costs α + nβ and

=========  =================================  ==========================
algorithm  time for n bytes on K ranks        bytes sent by the busiest
=========  =================================  ==========================
naive      2(K−1)·(α + nβ)                     (K−1)·n (rank 0)
ring       2(K−1)·α + 2(K−1)/K · nβ            2(K−1)/K · n (every rank)
tree       2⌈log₂K⌉·(α + nβ)                   ⌈log₂K⌉·n (rank 0)
=========  =================================  ==========================

(Thakur, Rabenseifner & Gropp, 2005). :func:`predicted_seconds` evaluates these, and
the reduce-scatter's and all-gather's costs.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from . import ring
from .ring import SEGMENT_BYTES, Ring, bytes_sent, reset_bytes_sent  # noqa: F401
from .scatter_gather import (SHARD_ALGORITHMS, all_gather_into_tensor,  # noqa: F401
                             gather_shards, padded_numel, reduce_scatter_tensor, shard_sum)

ALGORITHMS = ("naive", "ring", "tree")


def naive_all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks through rank 0 (a parameter server), in place."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if world_size == 1:
        return tensor
    if rank == 0:
        incoming = torch.empty_like(tensor)
        for source in range(1, world_size):  # rank order: the same sum on every run
            dist.recv(incoming, src=source)
            tensor += incoming
        for destination in range(1, world_size):
            ring.send(tensor, destination)
    else:
        ring.send(tensor, 0)
        dist.recv(tensor, src=0)
    return tensor


def ring_all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place: a ring reduce-scatter, then a ring all-gather.

    The tensor is cut into K chunks whose sizes differ by at most one element; after the
    reduce-scatter rank r holds the sum of chunk r, and the all-gather hands every rank
    every finished chunk: one run of both phases' steps, so that the all-gather's
    receives are posted from the start too (see :mod:`parcourse.ring`).
    """
    ring = Ring()
    if ring.size == 1:
        return tensor
    flat = tensor.view(-1) if tensor.is_contiguous() else tensor.contiguous().view(-1)
    chunks = torch.tensor_split(flat, ring.size)
    ring.run(ring.reduce_scatter(chunks, chunks[ring.rank]).then(ring.all_gather(chunks)))
    if flat.data_ptr() != tensor.data_ptr():
        tensor.copy_(flat.view_as(tensor))
    return tensor


def tree_all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks up a binomial tree to rank 0 and back down, in place."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    rounds = math.ceil(math.log2(world_size)) if world_size > 1 else 0
    incoming = torch.empty_like(tensor) if rounds else tensor
    for level in range(rounds):  # reduce: at level l, ranks r ≡ 2^l (mod 2^(l+1)) send
        distance = 1 << level
        if rank % (2 * distance) == distance:
            ring.send(tensor, rank - distance)
            break
        if rank % (2 * distance) == 0 and rank + distance < world_size:
            dist.recv(incoming, src=rank + distance)
            tensor += incoming
    for level in reversed(range(rounds)):  # broadcast: the same edges, reversed
        distance = 1 << level
        if rank % (2 * distance) == 0 and rank + distance < world_size:
            ring.send(tensor, rank + distance)
        elif rank % (2 * distance) == distance:
            dist.recv(tensor, src=rank - distance)
    return tensor


ALL_REDUCE = {"naive": naive_all_reduce, "ring": ring_all_reduce, "tree": tree_all_reduce}


def all_reduce(tensor: torch.Tensor, algorithm: str = "ring", check: bool = True) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place with the named algorithm.

    With ``check`` (the default), the ranks first compare their tensors' sizes and dtypes
    in one small all-gather, and all raise the same ValueError on a mismatch — which
    would otherwise deadlock or corrupt memory. Benchmarks pass ``check=False``.
    """
    if algorithm not in ALL_REDUCE:
        raise ValueError(f"unknown all-reduce algorithm {algorithm!r}: "
                         f"choose one of {', '.join(ALGORITHMS)}")
    if check:
        check_same_tensor_everywhere(tensor)
    return ALL_REDUCE[algorithm](tensor)


_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8,
           torch.uint8, torch.int16, torch.int32, torch.int64]


def check_same_tensor_everywhere(tensor: torch.Tensor) -> None:
    """Raise ValueError on every rank unless all ranks hold tensors of one size and dtype."""
    code = _DTYPES.index(tensor.dtype) if tensor.dtype in _DTYPES else -1
    mine = torch.tensor([tensor.numel(), code], dtype=torch.int64, device=tensor.device)
    everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    seen = [(int(numel), int(dtype)) for numel, dtype in (t.tolist() for t in everyone)]
    if len(set(seen)) > 1:
        described = "; ".join(
            f"rank {r}: {numel} elements of {_DTYPES[dtype] if dtype >= 0 else 'another dtype'}"
            for r, (numel, dtype) in enumerate(seen))
        raise ValueError(f"all-reduce needs a tensor of the same size and dtype on every "
                         f"rank, but got {described}")


COLLECTIVES = ("all_reduce", "reduce_scatter", "all_gather")


def predicted_seconds(algorithm: str, nbytes: float, world_size: int, alpha: float,
                      beta: float, collective: str = "all_reduce") -> float:
    """The α–β model's time for one collective on an ``nbytes`` tensor over K ranks.

    ``nbytes`` is the whole tensor: the all-reduce's, the reduce-scatter's input, the
    all-gather's output (chapter 3). The ring's two phases each send K−1 messages of n/K
    bytes, one after the other, from every rank at once::

        reduce-scatter, all-gather   ring   (K−1)·α + (K−1)/K · nβ
                                     naive  2(K−1)·α + (K−1)(K+1)/K · nβ

    naive goes through rank 0: K−1 messages into it, one after the other, and K−1 out; of
    n bytes each in (reduce-scatter) or out (all-gather), of n/K bytes the other way. The
    ring's all-reduce is its reduce-scatter plus its all-gather, term by term.
    """
    k = world_size
    if collective not in COLLECTIVES:
        raise ValueError(f"unknown collective {collective!r}: choose one of "
                         f"{', '.join(COLLECTIVES)}")
    names = ALGORITHMS if collective == "all_reduce" else ("ring", "naive")
    if algorithm not in names:
        raise ValueError(f"unknown {collective.replace('_', '-')} algorithm {algorithm!r}: "
                         f"choose one of {', '.join(names)}")
    if k == 1:
        return 0.0
    if collective != "all_reduce":
        if algorithm == "ring":
            return (k - 1) * alpha + (k - 1) / k * nbytes * beta
        return 2 * (k - 1) * alpha + (k - 1) * (k + 1) / k * nbytes * beta
    if algorithm == "naive":
        return 2 * (k - 1) * (alpha + nbytes * beta)
    if algorithm == "ring":
        return 2 * (k - 1) * alpha + 2 * (k - 1) / k * nbytes * beta
    return 2 * math.ceil(math.log2(k)) * (alpha + nbytes * beta)


def bus_bandwidth(nbytes: float, seconds: float, world_size: int,
                  collective: str = "all_reduce") -> float:
    """Bus bandwidth in bytes/s: algorithm bandwidth n/t times 2(K−1)/K for an all-reduce,
    (K−1)/K for a reduce-scatter or all-gather (n: the whole tensor's bytes).

    It is the rate at which the busiest link of an ideal ring moves data, so it can be
    compared across K, across collectives and with the hardware's link or memory bandwidth.
    """
    factor = 2 if collective == "all_reduce" else 1
    return nbytes / seconds * factor * (world_size - 1) / world_size
