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
all-gather of chapter 3 (the ZeRO engines), and gloo's own all-gather (FSDP2's; FSDP2's
reduce-scatter runs on gloo as an all-reduce of the whole gradient, measured as
PyTorch's profiler shows it: ``c10d::_reduce_scatter_base_`` inside ``gloo:all_reduce``).
:func:`seconds` reads the table: linear in
n between measured sizes (α + nβ holds piecewise), the last segment's slope beyond the
largest size, and the smallest size's time below it. Profiles without a table (the GPUs)
keep the α–β model.

FSDP2 also does work of its own around every unit, in Python: hooks before and after
its forward and backward, building the gathered parameters and freeing them.
:func:`fsdp_unit_worker` measures it whole: a step of FSDP2 over 8 tiny layers less one
over 2, divided by 6, is what one unit adds (its 3 collectives of a few bytes included),
stored as the table ``"fsdp unit"`` at those bytes. And a group of 2 inside a grid of 4
processes (a tensor or data group) all-reduces while the other groups compute and call
theirs on the same cores: :func:`pairs_worker` measures that case, ``"2 of 4"``.
"""

from __future__ import annotations

import bisect
import statistics
import time

import torch
import torch.distributed as dist
from torch import nn

from .. import launch
from ..bench.allreduce import _run_once, _tensors

SIZES = [8 * 8 ** p for p in range(8)]            # 8 B … 16 MiB
CALLS = 10
# table name → (collective, implementation)
IMPLEMENTATION = {"all_reduce": ("all_reduce", "gloo"),
                  "reduce_scatter": ("reduce_scatter", "ring"),
                  "all_gather": ("all_gather", "ring"),
                  "all_gather gloo": ("all_gather", "gloo")}


def collectives_worker(rank: int, world_size: int, sizes: list[int], repeats: int = 9,
                       names=tuple(IMPLEMENTATION)) -> dict:
    """Per collective, [bytes, median seconds per call of CALLS calls in a row] for each
    size (every rank waits for the slowest: the time is the group's). Every (size,
    collective) takes a turn in every repeat, so that a change of load falls on all."""
    cases = [(nbytes, name) for nbytes in sizes for name in names]
    tensors = {(nbytes, name): _tensors(IMPLEMENTATION[name][0], nbytes, world_size)
               for nbytes, name in cases}
    samples: dict = {case: [] for case in cases}
    for repeat in range(repeats + 1):                    # the first warms up
        for nbytes, name in cases:
            output, source = tensors[nbytes, name]
            dist.barrier()
            start = time.perf_counter()
            for _ in range(CALLS):
                _run_once(IMPLEMENTATION[name][1], output, IMPLEMENTATION[name][0], source)
            dist.barrier()
            if repeat:
                samples[nbytes, name].append((time.perf_counter() - start) / CALLS)
    return {name: [[nbytes, statistics.median(samples[nbytes, name])] for nbytes in sizes]
            for name in names}


def pairs_worker(rank: int, world_size: int, sizes: list[int], repeats: int = 9) -> list:
    """[bytes, median seconds per call] of gloo's all-reduce in pairs of ranks (0, 1),
    (2, 3), … all at once: a tensor or data group of 2 inside a grid of ``world_size``
    processes, where the other groups' calls and compute share the cores."""
    groups = [dist.new_group([r, r + 1]) for r in range(0, world_size - 1, 2)]
    mine = groups[rank // 2]
    tensors = {n: _tensors("all_reduce", n, 2)[0] for n in sizes}
    samples: dict = {n: [] for n in sizes}
    for repeat in range(repeats + 1):
        for nbytes in sizes:
            dist.barrier()
            start = time.perf_counter()
            for _ in range(CALLS):
                dist.all_reduce(tensors[nbytes], group=mine)
            dist.barrier()
            if repeat:
                samples[nbytes].append((time.perf_counter() - start) / CALLS)
    return [[n, statistics.median(samples[n])] for n in sizes]


UNIT_WIDTH = 4   # the tiny layers: Linear(4, 4), 20 parameters
TABLES = (*IMPLEMENTATION, "fsdp unit")   # what a measured profile holds
VERSION = 3   # of what measure() returns: a cached profile of another version is measured again


def fsdp_unit_worker(rank: int, world_size: int, layers=(2, 8), repeats: int = 15) -> list:
    """[bytes of one unit, seconds one more FSDP2 unit adds to a step]: the median step
    (zero_grad, forward, backward, Adam) of FSDP2 over ``layers[1]`` tiny layers less that
    over ``layers[0]``, per layer; the two models take turns."""
    from ..training.fsdp import shard_model

    runs = []
    for count in layers:
        torch.manual_seed(0)
        model = shard_model(nn.Sequential(*[nn.Linear(UNIT_WIDTH, UNIT_WIDTH)
                                            for _ in range(count)]), torch.device("cpu"))
        runs.append((model, torch.optim.Adam(model.parameters(), 1e-3), []))
    x = torch.ones(2, UNIT_WIDTH)
    for repeat in range(repeats + 2):                   # the first two warm up
        for model, optimizer, times in runs:
            dist.barrier()
            start = time.perf_counter()
            optimizer.zero_grad()
            model(x).sum().backward()
            optimizer.step()
            dist.barrier()
            if repeat > 1:
                times.append(time.perf_counter() - start)
    (_, _, few), (_, _, many) = runs
    per_unit = (statistics.median(many) - statistics.median(few)) / (layers[1] - layers[0])
    return [4 * UNIT_WIDTH * (UNIT_WIDTH + 1), max(per_unit, 0.0)]


def measure(world_sizes=(2, 4), sizes=SIZES, timeout: float = 600) -> dict:
    """``{collective: {K: [[bytes, seconds], ...]}}`` for each K, measured now, and
    ``"fsdp unit"``: ``{K: [[bytes, seconds]]}``; all-reduce in pairs inside a grid of each
    even K > 2, ``"2 of K"``; and ``"version"``."""
    tables: dict = {name: {} for name in TABLES}
    tables["version"] = VERSION
    for k in world_sizes:
        per = launch.run(collectives_worker, k, args=(list(sizes),), backend="gloo",
                         timeout=timeout, verbose=False)[0]
        for name, points in per.items():
            tables[name][str(k)] = points
        tables["fsdp unit"][str(k)] = [launch.run(fsdp_unit_worker, k, backend="gloo",
                                                  timeout=timeout, verbose=False)[0]]
        if k > 2 and k % 2 == 0:
            tables["all_reduce"][f"2 of {k}"] = launch.run(
                pairs_worker, k, args=(list(sizes),), backend="gloo", timeout=timeout,
                verbose=False)[0]
    return tables


def seconds(table: dict, collective: str, world_size, nbytes: float) -> float | None:
    """The measured time of one call on a whole tensor of ``nbytes`` over ``world_size``
    ranks (a K, or "K of N"), or None if the table has no such entry (the caller falls
    back to α–β)."""
    points = table.get(collective, {}).get(str(world_size))
    if not points:
        return None
    sizes = [n for n, _ in points]
    if nbytes <= sizes[0]:
        return points[0][1]
    i = min(bisect.bisect_left(sizes, nbytes), len(points) - 1)
    (n0, t0), (n1, t1) = points[i - 1], points[i]
    return max(t0 + (nbytes - n0) * (t1 - t0) / (n1 - n0), 0.0)
