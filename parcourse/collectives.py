"""All-reduce built from point-to-point messages, and its α–β cost (chapter 3).

After an all-reduce every rank holds the element-wise sum of every rank's tensor. Three
algorithms, each written with ``torch.distributed`` ``send``/``recv``/``isend``/
``irecv`` only, each updating the tensor in place like ``dist.all_reduce``:

* ``naive_all_reduce`` — a parameter server: every rank sends its tensor to rank 0,
  which adds them up and sends the sum back. Rank 0's link carries everything.
* ``ring_all_reduce`` — the tensor is cut into K chunks. Reduce-scatter: in K−1 steps
  each rank passes one chunk to its right neighbour and adds the chunk arriving from its
  left, so that rank r ends up owning the full sum of chunk r+1. All-gather: K−1 more
  steps pass the finished chunks round the ring. Each rank sends 2(K−1)/K of the tensor
  in total, whatever K is: the bandwidth-optimal schedule (Patarasuk & Yuan, 2009).
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

(Thakur, Rabenseifner & Gropp, 2005). :func:`predicted_seconds` evaluates these.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

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
            dist.send(tensor, dst=destination)
    else:
        dist.send(tensor, dst=0)
        dist.recv(tensor, src=0)
    return tensor


SEGMENT_BYTES = 4 << 20  # the ring pipelines each chunk in segments of this size


_scratch_buffers: dict = {}


def _scratch(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A receive buffer reused across calls: allocating (and first touching) tens of MB
    on every all-reduce cost a third of the ring's time at 64 MiB. One all-reduce at a
    time per process, as on any process group."""
    key = (dtype, device)
    buffer = _scratch_buffers.get(key)
    if buffer is None or buffer.numel() < numel:
        buffer = _scratch_buffers[key] = torch.empty(numel, dtype=dtype, device=device)
    return buffer[:numel]


def _segments(chunk: torch.Tensor) -> list[torch.Tensor]:
    per_segment = max(1, SEGMENT_BYTES // chunk.element_size())
    return list(torch.split(chunk, per_segment)) if chunk.numel() else [chunk]


def ring_step(outgoing: torch.Tensor, incoming: torch.Tensor, buffer: torch.Tensor,
               right: int, left: int, accumulate: bool) -> None:
    """Send ``outgoing`` right while receiving ``incoming`` from the left, segment by segment.

    The receives are posted first, so that arriving data finds its buffer waiting (this
    cut the time of a 220 KB ring all-reduce inside a training step by about a third,
    K = 2 on a 2-core CPU).

    Every segment's transfer is posted at once; the sum of segment j is computed while
    the later segments are still in flight, so adding overlaps with communicating.
    """
    targets = _segments(buffer[:incoming.numel()] if accumulate else incoming)
    receives = [dist.irecv(target, src=left) for target in targets]
    sends = [dist.isend(segment, dst=right) for segment in _segments(outgoing)]
    if accumulate:
        for request, received, destination in zip(receives, targets, _segments(incoming)):
            request.wait()
            destination += received
    for request in (receives if not accumulate else []) + sends:
        request.wait()


def ring_all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks with a ring reduce-scatter and all-gather, in place."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if world_size == 1:
        return tensor
    flat = tensor.view(-1) if tensor.is_contiguous() else tensor.contiguous().view(-1)
    chunks = list(torch.tensor_split(flat, world_size))  # sizes differ by at most one
    right, left = (rank + 1) % world_size, (rank - 1) % world_size
    buffer = _scratch(chunks[0].numel(), flat.dtype, flat.device)
    # reduce-scatter: after step s, rank r has summed s + 2 contributions into chunk r − s − 1
    for step in range(world_size - 1):
        ring_step(chunks[(rank - step) % world_size], chunks[(rank - step - 1) % world_size],
                   buffer, right, left, accumulate=True)
    # all-gather: rank r now owns the finished chunk r + 1 and passes finished chunks on
    for step in range(world_size - 1):
        ring_step(chunks[(rank + 1 - step) % world_size], chunks[(rank - step) % world_size],
                   buffer, right, left, accumulate=False)
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
            dist.send(tensor, dst=rank - distance)
            break
        if rank % (2 * distance) == 0 and rank + distance < world_size:
            dist.recv(incoming, src=rank + distance)
            tensor += incoming
    for level in reversed(range(rounds)):  # broadcast: the same edges, reversed
        distance = 1 << level
        if rank % (2 * distance) == 0 and rank + distance < world_size:
            dist.send(tensor, dst=rank + distance)
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


def predicted_seconds(algorithm: str, nbytes: float, world_size: int, alpha: float,
                      beta: float) -> float:
    """The α–β model's time for one all-reduce of ``nbytes`` on ``world_size`` ranks."""
    k = world_size
    if k == 1:
        return 0.0
    if algorithm == "naive":
        return 2 * (k - 1) * (alpha + nbytes * beta)
    if algorithm == "ring":
        return 2 * (k - 1) * alpha + 2 * (k - 1) / k * nbytes * beta
    if algorithm == "tree":
        return 2 * math.ceil(math.log2(k)) * (alpha + nbytes * beta)
    raise ValueError(f"unknown all-reduce algorithm {algorithm!r}: "
                     f"choose one of {', '.join(ALGORITHMS)}")


def bus_bandwidth(nbytes: float, seconds: float, world_size: int) -> float:
    """Bus bandwidth in bytes/s: algorithm bandwidth n/t times 2(K−1)/K.

    It is the rate at which the busiest link of an ideal ring moves data, so it can be
    compared across K and with the hardware's link or memory bandwidth.
    """
    return nbytes / seconds * 2 * (world_size - 1) / world_size
