"""Reduce-scatter and all-gather, the two halves of an all-reduce (chapter 3).

Over K ranks, with a flat tensor cut into K equal chunks (chunk r = elements r·S to
(r+1)·S − 1):

* **reduce-scatter**: every rank contributes a tensor of K·S elements; rank r receives
  the sum over all ranks of chunk r (``dist.reduce_scatter_tensor``);
* **all-gather**: every rank contributes S elements; every rank receives all K of them,
  rank r's as chunk r (``dist.all_gather_into_tensor``).

Reduce-scatter followed by all-gather is an all-reduce, and that is how
:func:`parcourse.collectives.ring_all_reduce` is written. Apart, they are what sharded
data parallelism (ZeRO, FSDP) uses: each rank keeps 1/K of the gradients' sum and of the
optimizer state, and gathers the full parameters when it needs them.

Three algorithms (``SHARD_ALGORITHMS``):

=======  ==========================================  ====================================
name     how                                         time for an n-byte tensor on K ranks
=======  ==========================================  ====================================
ring     :mod:`parcourse.ring`, K−1 steps            (K−1)·α + (K−1)/K · n·β
naive    through rank 0: it receives everything,     2(K−1)·α + (K−1)(K+1)/K · n·β
         then sends each rank its share
native   ``torch.distributed``'s own (gloo, NCCL)    —
=======  ==========================================  ====================================

n is the size of the whole tensor: reduce-scatter's input, all-gather's output.
:func:`parcourse.collectives.predicted_seconds` evaluates the column.

Tensors of any size: :func:`shard_sum` pads with zeros at the end to
:func:`padded_numel` elements, so that every rank's chunk has the same S elements (on the
wire and in memory), and returns this rank's part of the sum without the padding;
:func:`gather_shards` is its inverse. This is not ``torch.tensor_split``'s chunking,
which spreads the remainder over the first chunks: with padding, rank r's chunk always
starts at r·S, and only the last ranks' chunks are shorter (or empty).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from . import ring
from .ring import Ring

SHARD_ALGORITHMS = ("ring", "naive", "native")
# torch 2.13 renamed them (the old names warn); older releases, as on Colab, have only those
_NATIVE_REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)
_NATIVE_ALL_GATHER = getattr(dist, "all_gather_single", dist.all_gather_into_tensor)


def _check_algorithm(algorithm: str, collective: str) -> None:
    if algorithm not in SHARD_ALGORITHMS:
        raise ValueError(f"unknown {collective} algorithm {algorithm!r}: choose one of "
                         f"{', '.join(SHARD_ALGORITHMS)}")


def _check_sizes(name: str, output: torch.Tensor, input: torch.Tensor, whole: str) -> None:
    """The ``whole`` side ("input" or "output") must have K times the other's elements."""
    k = dist.get_world_size()
    sizes = {"input": input.numel(), "output": output.numel()}
    part = "output" if whole == "input" else "input"
    if sizes[whole] != k * sizes[part]:
        raise ValueError(f"{name} needs {whole} = K × {part} elements: got {whole} "
                         f"{sizes[whole]}, {part} {sizes[part]}, K = {k}")
    if input.dtype != output.dtype:
        raise ValueError(f"{name} needs input and output of one dtype: got input "
                         f"{input.dtype}, output {output.dtype}")


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(-1) if tensor.is_contiguous() else tensor.reshape(-1)


def _target(output: torch.Tensor) -> torch.Tensor:
    """Where the result is written: ``output`` itself, flat, or a contiguous stand-in
    (elements in the output's row-major order) that is copied into it afterwards."""
    if output.is_contiguous():
        return output.view(-1)
    return torch.empty(output.numel(), dtype=output.dtype, device=output.device)


def reduce_scatter_tensor(output: torch.Tensor, input: torch.Tensor,
                          algorithm: str = "ring") -> torch.Tensor:
    """Sum ``input`` (K·S elements) over all ranks; write chunk ``rank`` of it to ``output``
    (S elements). Like ``dist.reduce_scatter_tensor``; ``input`` is left unchanged."""
    _check_algorithm(algorithm, "reduce-scatter")
    _check_sizes("reduce_scatter_tensor", output, input, "input")
    if algorithm == "native":
        _NATIVE_REDUCE_SCATTER(output, input)
        return output
    target = _target(output)
    chunks = _flat(input).view(dist.get_world_size(), output.numel())
    if algorithm == "ring" and len(chunks) == 1:
        target.copy_(chunks[0])
    elif algorithm == "ring":
        ring = Ring()
        ring.run(ring.reduce_scatter(chunks, target))
    else:
        _naive_reduce_scatter(chunks, target)
    if target.data_ptr() != output.data_ptr():
        output.copy_(target.view_as(output))
    return output


def all_gather_into_tensor(output: torch.Tensor, input: torch.Tensor,
                           algorithm: str = "ring") -> torch.Tensor:
    """Write every rank's ``input`` (S elements) into ``output`` (K·S elements), rank r's
    as chunk r. Like ``dist.all_gather_into_tensor``."""
    _check_algorithm(algorithm, "all-gather")
    _check_sizes("all_gather_into_tensor", output, input, "output")
    if algorithm == "native":
        _NATIVE_ALL_GATHER(output, input)
        return output
    target = _target(output)
    chunks = target.view(dist.get_world_size(), input.numel())
    mine = chunks[dist.get_rank()]
    if mine.data_ptr() != input.data_ptr() or not input.is_contiguous():
        mine.copy_(_flat(input))
    if algorithm == "ring":
        ring = Ring()
        ring.run(ring.all_gather(chunks))
    else:
        _naive_all_gather(chunks)
    if target.data_ptr() != output.data_ptr():
        output.copy_(target.view_as(output))
    return output


def _naive_reduce_scatter(chunks: torch.Tensor, output: torch.Tensor) -> None:
    """Rank 0 adds up every rank's input in rank order and sends rank r its chunk r."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if rank != 0:
        ring.send(chunks, 0)
        dist.recv(output, src=0)
        return
    total = chunks.clone()
    incoming = torch.empty_like(chunks)
    for source in range(1, world_size):
        dist.recv(incoming, src=source)
        total += incoming
    for destination in range(1, world_size):
        ring.send(total[destination], destination)
    output.copy_(total[0])


def _naive_all_gather(chunks: torch.Tensor) -> None:
    """Rank 0 collects every rank's chunk, then sends the whole tensor to each rank."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if rank != 0:
        ring.send(chunks[rank], 0)
        dist.recv(chunks, src=0)
        return
    for source in range(1, world_size):
        dist.recv(chunks[source], src=source)
    for destination in range(1, world_size):
        ring.send(chunks, destination)


def padded_numel(numel: int, world_size: int) -> int:
    """The smallest multiple of ``world_size`` that is at least ``numel``."""
    if numel < 0 or world_size < 1:
        raise ValueError(f"padded_numel needs numel ≥ 0 and world_size ≥ 1: got {numel} "
                         f"and {world_size}")
    return -(-numel // world_size) * world_size


def _shard_bounds(numel: int) -> tuple[int, int, int]:
    """(S, start, length): the padded chunk size and where this rank's real part lies."""
    shard = padded_numel(numel, dist.get_world_size()) // dist.get_world_size()
    start = dist.get_rank() * shard
    return shard, start, max(0, min(shard, numel - start))


def shard_sum(tensor: torch.Tensor, algorithm: str = "ring") -> torch.Tensor:
    """This rank's part of the sum of ``tensor`` (any shape, same size on every rank).

    The flattened tensor is padded with zeros to ``padded_numel(numel, K)`` elements;
    rank r gets elements r·S … (r+1)·S − 1 of the sum, without the padding: S elements,
    or fewer (possibly none) on the last ranks.
    """
    shard, start, length = _shard_bounds(tensor.numel())
    flat = _flat(tensor)
    if flat.numel() != shard * dist.get_world_size():
        flat = torch.cat([flat, flat.new_zeros(shard * dist.get_world_size() - flat.numel())])
    output = flat.new_empty(shard)
    reduce_scatter_tensor(output, flat, algorithm)
    return output[:length]


def gather_shards(shard: torch.Tensor, numel: int, algorithm: str = "ring") -> torch.Tensor:
    """The inverse of :func:`shard_sum`: all ranks' shards joined, ``numel`` elements.

    ``shard`` is this rank's part, with or without the padding (S elements or fewer).
    """
    size, _, length = _shard_bounds(numel)
    if shard.numel() not in (length, size):
        raise ValueError(f"gather_shards: rank {dist.get_rank()}'s shard of a {numel}-element "
                         f"tensor on K = {dist.get_world_size()} has {length} elements "
                         f"(padded: {size}), got {shard.numel()}")
    padded = _flat(shard)
    if padded.numel() != size:
        padded = torch.cat([padded, padded.new_zeros(size - padded.numel())])
    output = padded.new_empty(size * dist.get_world_size())
    all_gather_into_tensor(output, padded, algorithm)
    return output[:numel]
