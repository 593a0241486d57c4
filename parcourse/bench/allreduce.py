"""Collective benchmark and the α–β fit: ``python -m parcourse bench allreduce`` (chapter 3).

Every timing is the median over repeats of one collective, each started after a barrier
so that all ranks begin together; the time of a repeat is the slowest rank's, and the
implementations take turns within each repeat. The all-reduces (gloo's ``dist.all_reduce``
and :data:`parcourse.collectives.ALGORITHMS`) can be timed alone, as chapter 3 does, or
next to the reduce-scatter and all-gather (gloo's and :mod:`parcourse.scatter_gather`'s
ring and naive ones), as the command line does: one table per collective, each with its
ratios to gloo's own.
Bus bandwidth (see :func:`parcourse.collectives.bus_bandwidth`) makes sizes, K and
collectives comparable; this machine's memory-copy bandwidth is printed as the physical
ceiling (on one machine, gloo's "network" is shared memory and loopback TCP).

The α–β fit: a ping-pong between two ranks measures the one-way time t(n) of an n-byte
message for n from 4 bytes to several MB; least squares on t(n) = α + nβ gives the
latency α and the inverse bandwidth β that :func:`parcourse.collectives.predicted_seconds`
uses.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .. import collectives, launch, loopback, tables

DEFAULT_SIZES = [2 ** p for p in range(10, 27, 2)]  # 1 KiB … 64 MiB
IMPLEMENTATIONS = ("gloo", *collectives.ALGORITHMS)
# what each collective is timed with: gloo's own (dist.*) and the package's algorithms
SHARD_IMPLEMENTATIONS = ("gloo", "ring", "naive")
COLLECTIVES = {"all_reduce": IMPLEMENTATIONS, "reduce_scatter": SHARD_IMPLEMENTATIONS,
               "all_gather": SHARD_IMPLEMENTATIONS}
COLLECTIVE_NAMES = tuple(COLLECTIVES)
_GLOO = {"all_reduce": dist.all_reduce,  # called directly: no checks of ours in its time
         "reduce_scatter": getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor),
         "all_gather": getattr(dist, "all_gather_single", dist.all_gather_into_tensor)}


def _whole_numel(collective: str, nbytes: int, world_size: int) -> int:
    """Elements of the whole tensor (the all-reduce's, the reduce-scatter's input, the
    all-gather's output) for about ``nbytes`` of float32: a multiple of K for the two."""
    if collective == "all_reduce":
        return nbytes // 4
    return max(1, nbytes // 4 // world_size) * world_size


def _tensors(collective: str, nbytes: int, world_size: int) -> tuple:
    """(output, input) of one collective on a whole tensor of about ``nbytes``."""
    whole = torch.ones(_whole_numel(collective, nbytes, world_size))
    if collective == "all_reduce":
        return whole, whole
    part = torch.ones(whole.numel() // world_size)
    return (part, whole) if collective == "reduce_scatter" else (whole, part)


def _run_once(implementation: str, tensor: torch.Tensor, collective: str = "all_reduce",
              other: torch.Tensor | None = None) -> None:
    """One collective: ``tensor`` is its output, ``other`` the input of a reduce-scatter
    or all-gather."""
    if implementation == "gloo":
        _GLOO[collective](tensor, *(() if other is None or other is tensor else (other,)))
    elif collective == "reduce_scatter":
        collectives.reduce_scatter_tensor(tensor, other, implementation)
    elif collective == "all_gather":
        collectives.all_gather_into_tensor(tensor, other, implementation)
    else:
        collectives.all_reduce(tensor, implementation, check=False)


def _repeats_for(nbytes: int) -> int:
    """Up to 100 repeats: on a loaded 2-core machine a third or more of the calls of a
    small collective can stall for a few ms, and the median of 50 then jumps between the
    two regimes from one run to the next."""
    return max(3, min(100, (64 << 20) // max(nbytes, 1) // 4))


def allreduce_worker(rank: int, world_size: int, sizes: list[int],
                     implementations: tuple[str, ...], collective_names=("all_reduce",)) -> dict:
    """Median seconds per call for every (collective, implementation, size in bytes).

    Every (collective, implementation) takes a turn within every repeat, in an order
    that rotates from one repeat to the next, so that a busy machine slows them alike and
    their ratios stay meaningful.
    """
    cases = [(c, i) for c in collective_names
             for i in (implementations if c == "all_reduce" else COLLECTIVES[c])]
    timings = {}
    for nbytes in sizes:
        tensors = {c: _tensors(c, nbytes, world_size) for c in collective_names}
        samples: dict = {case: [] for case in cases}
        for repeat in range(_repeats_for(nbytes) + 1):  # the first round warms up
            # each repeat starts one case later: a case timed right after gloo's own
            # all-reduce would always pay for what gloo's threads still do then
            for collective, implementation in cases[repeat % len(cases):] + cases[
                    :repeat % len(cases)]:
                output, source = tensors[collective]
                dist.barrier()
                start = time.perf_counter()
                _run_once(implementation, output, collective, source)
                elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
                dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
                if repeat:
                    samples[collective, implementation].append(elapsed.item())
        for (collective, implementation), times in samples.items():
            timings[collective, implementation, nbytes] = statistics.median(times)
    return timings


def pingpong_worker(rank: int, world_size: int, sizes: list[int], repeats: int = 20) -> dict:
    """Rank 0 and rank 1 bounce n-byte messages; returns the median one-way seconds per n."""
    one_way = {}
    for nbytes in sizes:
        tensor = torch.zeros(max(1, nbytes // 4), dtype=torch.float32)
        samples = []
        for repeat in range(repeats + 1):
            dist.barrier()
            start = time.perf_counter()
            if rank == 0:
                dist.send(tensor, dst=1)
                dist.recv(tensor, src=1)
            elif rank == 1:
                dist.recv(tensor, src=0)
                dist.send(tensor, dst=0)
            if repeat:
                samples.append((time.perf_counter() - start) / 2)
        one_way[tensor.numel() * 4] = statistics.median(samples)
    return one_way


@dataclass
class AlphaBeta:
    """A fitted point-to-point cost: ``seconds(n) = alpha + n * beta``."""

    alpha: float  # seconds per message
    beta: float   # seconds per byte

    def seconds(self, nbytes: float) -> float:
        return self.alpha + nbytes * self.beta

    def __str__(self) -> str:
        return f"α = {self.alpha * 1e6:.1f} µs, 1/β = {1 / self.beta / 1e9:.2f} GB/s"


def fit_alpha_beta(one_way: dict) -> AlphaBeta:
    """Least-squares fit of t(n) = α + nβ, weighting each point by 1/t (relative error)."""
    n = np.array(sorted(one_way), dtype=float)
    t = np.array([one_way[k] for k in sorted(one_way)])
    weights = 1.0 / t
    design = np.stack([np.ones_like(n), n], axis=1) * weights[:, None]
    (alpha, beta), *_ = np.linalg.lstsq(design, t * weights, rcond=None)
    return AlphaBeta(max(float(alpha), 0.0), float(beta))


def measure_alpha_beta(sizes: list[int] | None = None, timeout: float = 300) -> AlphaBeta:
    """Run the ping-pong on two CPU workers and fit α and β."""
    sizes = sizes or [4 * 4 ** p for p in range(11)]  # 4 B … 4 MiB
    one_way = launch.run(pingpong_worker, 2, args=(sizes,), backend="gloo", timeout=timeout,
                         verbose=False)[0]
    return fit_alpha_beta(one_way)


def memcpy_bandwidth(nbytes: int = 64 << 20, repeats: int = 10) -> float:
    """Bytes per second of one large tensor copy (reading n and writing n bytes)."""
    source = torch.ones(nbytes // 4)
    target = torch.empty_like(source)
    target.copy_(source)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        target.copy_(source)
        samples.append(time.perf_counter() - start)
    return 2 * nbytes / statistics.median(samples)


def run_allreduce_benchmark(world_sizes=(2, 4), sizes=None, implementations=IMPLEMENTATIONS,
                            horovod: bool = False, timeout: float = 1200,
                            collective_names=("all_reduce",)) -> list[dict]:
    """One row per (K, collective, size, implementation): seconds, bus bandwidth, ratio
    to gloo's own measured in the same run.

    ``collective_names`` adds ``"reduce_scatter"`` and ``"all_gather"`` (each timed with
    gloo's, the ring and the naive one, its bytes being the whole tensor's);
    ``horovod=True`` adds Horovod's all-reduce (over Gloo, in its own processes).
    """
    sizes = sizes or DEFAULT_SIZES
    names = tuple(collective_names)
    rows = []
    for k in world_sizes:
        timings = launch.run(allreduce_worker, k, args=(sizes, tuple(implementations), names),
                             backend="gloo", timeout=timeout, verbose=False)[0]
        if horovod:
            timings.update({("all_reduce", *key): value
                            for key, value in run_horovod_allreduce(k, sizes).items()})
        for collective in names:
            shown = implementations if collective == "all_reduce" else COLLECTIVES[collective]
            if collective == "all_reduce" and horovod:
                shown = (*shown, "horovod")
            for nbytes in sizes:
                whole = _whole_numel(collective, nbytes, k) * 4
                gloo = timings.get((collective, "gloo", nbytes))
                for implementation in shown:
                    seconds = timings[(collective, implementation, nbytes)]
                    rows.append({
                        "world_size": k, "collective": collective, "bytes": nbytes,
                        "implementation": implementation, "seconds": seconds,
                        "bus_GBps": collectives.bus_bandwidth(whole, seconds, k,
                                                              collective) / 1e9,
                        "vs_gloo": gloo / seconds if gloo else float("nan")})
    return rows


def table_cells(rows: list[dict], collective: str = "all_reduce") -> tuple[tuple, list[list[str]]]:
    """One collective's table, as a header and rows of cells: per K and size, the bus GB/s
    of each implementation and its ratio to gloo (above 1: faster than gloo). Rows without
    a ``"collective"`` (as written before it existed) are all-reduces."""
    rows = [r for r in rows if r.get("collective", "all_reduce") == collective]
    implementations = list(dict.fromkeys(r["implementation"] for r in rows))
    others = [i for i in implementations if i != "gloo"]
    header = ("K", "size", *(f"{i} GB/s" for i in implementations), *(f"{i}/gloo" for i in others))
    by_key = {(r["world_size"], r["bytes"], r["implementation"]): r for r in rows}
    cells = []
    for k, nbytes in dict.fromkeys((r["world_size"], r["bytes"]) for r in rows):
        cells.append([str(k), _human(nbytes),
                      *(tables.significant(by_key[k, nbytes, i]["bus_GBps"]) for i in implementations),
                      *(f"{by_key[k, nbytes, i]['vs_gloo']:.2f}" for i in others)])
    return header, cells


def format_table(rows: list[dict]) -> str:
    """The benchmark as text tables (:func:`table_cells`), one per collective, each under
    its name when there are several."""
    names = list(dict.fromkeys(r.get("collective", "all_reduce") for r in rows))
    shown = []
    for name in names:
        table = tables.text(*table_cells(rows, name))
        shown.append(table if len(names) == 1 else f"# {name.replace('_', '-')}\n{table}")
    return "\n\n".join(shown)


def _human(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:g} {unit}"
        nbytes /= 1024
    return str(nbytes)


def horovod_allreduce_worker(sizes: list[int]) -> dict:
    """Median seconds of ``hvd.allreduce`` (sum) per size, in a horovod.run process."""
    import horovod.torch as hvd

    hvd.init()
    timings = {}
    for nbytes in sizes:
        tensor = torch.ones(nbytes // 4, dtype=torch.float32)
        samples = []
        for repeat in range(_repeats_for(nbytes) + 1):
            hvd.allreduce(torch.zeros(1), name="barrier")
            start = time.perf_counter()
            hvd.allreduce(tensor, op=hvd.Sum, name=f"t{nbytes}")
            elapsed = hvd.allreduce(torch.tensor([time.perf_counter() - start]), op=hvd.Max,
                                    name="elapsed")
            if repeat:
                samples.append(elapsed.item())
        timings[("horovod", nbytes)] = statistics.median(samples)
    hvd.shutdown()
    return timings


def run_horovod_allreduce(world_size: int, sizes: list[int]) -> dict:
    """Horovod's all-reduce timings on ``world_size`` local processes over Gloo."""
    return loopback.horovod_run(horovod_allreduce_worker, (sizes,), world_size)[0]
