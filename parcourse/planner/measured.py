"""Collectives measured as training issues them (chapter 4, "Checked against measurement").

The α–β model prices a collective from one message's cost, fitted to a ping-pong between
two processes. On a GPU link that holds: NCCL's collectives are the ring's messages. On a
CPU with gloo it does not. Each round of a collective wakes a thread in every process,
and when the calls come back to back, as in a training step, the wake-ups of one call
overlap the work of the next. On this project's 2-core machine a gloo all-reduce of
1 KiB … 1 MiB costs about the same, 1.3–2 ms at K = 2, where the ping-pong fit predicts
0.2–0.9 ms.

So a measured profile can carry, beside α and β, a table per collective and group size
K: the median seconds per call of ``CALLS`` calls in a row, for whole tensors of
``SIZES`` bytes, with the implementations the book's engines call: gloo's all-reduce
(DDP, the tensor-parallel layers, the loop's loss) and the ring reduce-scatter and
all-gather of chapter 3 (the ZeRO engines). :func:`seconds` reads the table: linear in
n between measured sizes (α + nβ holds piecewise), the last segment's slope beyond the
largest size, and the smallest size's time below it. Profiles without a table (the GPUs)
keep the α–β model.
"""

from __future__ import annotations

import bisect
import statistics
import time

import torch.distributed as dist

from .. import launch
from ..bench.allreduce import _run_once, _tensors

SIZES = [8 * 8 ** p for p in range(8)]            # 8 B … 16 MiB
CALLS = 10
IMPLEMENTATION = {"all_reduce": "gloo", "reduce_scatter": "ring", "all_gather": "ring"}


def collectives_worker(rank: int, world_size: int, sizes: list[int], repeats: int = 9) -> dict:
    """Per collective, [bytes, median seconds per call of CALLS calls in a row] for each
    size (every rank waits for the slowest: the time is the group's). Every (size,
    collective) takes a turn in every repeat, so that a change of load falls on all."""
    cases = [(nbytes, name) for nbytes in sizes for name in IMPLEMENTATION]
    tensors = {case: _tensors(case[1], case[0], world_size) for case in cases}
    samples: dict = {case: [] for case in cases}
    for repeat in range(repeats + 1):                    # the first warms up
        for nbytes, name in cases:
            output, source = tensors[nbytes, name]
            dist.barrier()
            start = time.perf_counter()
            for _ in range(CALLS):
                _run_once(IMPLEMENTATION[name], output, name, source)
            dist.barrier()
            if repeat:
                samples[nbytes, name].append((time.perf_counter() - start) / CALLS)
    return {name: [[nbytes, statistics.median(samples[nbytes, name])] for nbytes in sizes]
            for name in IMPLEMENTATION}


def measure(world_sizes=(2, 4), sizes=SIZES, timeout: float = 600) -> dict:
    """``{collective: {K: [[bytes, seconds], ...]}}`` for each K, measured now."""
    tables: dict = {name: {} for name in IMPLEMENTATION}
    for k in world_sizes:
        per = launch.run(collectives_worker, k, args=(list(sizes),), backend="gloo",
                         timeout=timeout, verbose=False)[0]
        for name, points in per.items():
            tables[name][str(k)] = points
    return tables


def seconds(table: dict, collective: str, world_size: int, nbytes: float) -> float | None:
    """The measured time of one call on a whole tensor of ``nbytes`` over ``world_size``
    ranks, or None if the table has no such K (the caller falls back to α–β)."""
    points = table.get(collective, {}).get(str(world_size))
    if not points:
        return None
    sizes = [n for n, _ in points]
    if nbytes <= sizes[0]:
        return points[0][1]
    i = min(bisect.bisect_left(sizes, nbytes), len(points) - 1)
    (n0, t0), (n1, t1) = points[i - 1], points[i]
    return max(t0 + (nbytes - n0) * (t1 - t0) / (n1 - n0), 0.0)
