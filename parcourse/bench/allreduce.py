"""All-reduce benchmark and the α–β fit: ``python -m parcourse bench allreduce`` (chapter 3).

Every timing is the median over repeats of one all-reduce, each started after a barrier
so that all ranks begin together; the time of a repeat is the slowest rank's, and the
implementations take turns within each repeat.
Bus bandwidth (see :func:`parcourse.collectives.bus_bandwidth`) makes sizes and K
comparable; this machine's memory-copy bandwidth is printed as the physical ceiling
(on one machine, gloo's "network" is shared memory and loopback TCP).

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

from .. import collectives, launch, loopback

DEFAULT_SIZES = [2 ** p for p in range(10, 27, 2)]  # 1 KiB … 64 MiB
IMPLEMENTATIONS = ("gloo", *collectives.ALGORITHMS)


def _run_once(implementation: str, tensor: torch.Tensor) -> None:
    if implementation == "gloo":
        dist.all_reduce(tensor)
    else:
        collectives.all_reduce(tensor, implementation, check=False)


def _repeats_for(nbytes: int) -> int:
    return max(3, min(50, (64 << 20) // max(nbytes, 1) // 4))


def allreduce_worker(rank: int, world_size: int, sizes: list[int],
                     implementations: tuple[str, ...]) -> dict:
    """Median seconds per all-reduce for every (implementation, size in bytes).

    The implementations take turns within every repeat, so that a busy machine slows
    them alike and their ratios stay meaningful.
    """
    timings = {}
    for nbytes in sizes:
        tensor = torch.ones(nbytes // 4, dtype=torch.float32)
        samples: dict = {implementation: [] for implementation in implementations}
        for repeat in range(_repeats_for(nbytes) + 1):  # the first round warms up
            for implementation in implementations:
                dist.barrier()
                start = time.perf_counter()
                _run_once(implementation, tensor)
                elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
                dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
                if repeat:
                    samples[implementation].append(elapsed.item())
        for implementation in implementations:
            timings[(implementation, nbytes)] = statistics.median(samples[implementation])
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
                            horovod: bool = False, timeout: float = 1200) -> list[dict]:
    """One row per (K, size, implementation): seconds, bus bandwidth, ratio to gloo.

    ``horovod=True`` adds Horovod's all-reduce (over Gloo, in its own processes).
    """
    sizes = sizes or DEFAULT_SIZES
    rows = []
    for k in world_sizes:
        timings = launch.run(allreduce_worker, k, args=(sizes, tuple(implementations)),
                             backend="gloo", timeout=timeout, verbose=False)[0]
        if horovod:
            timings.update(run_horovod_allreduce(k, sizes))
        for nbytes in sizes:
            gloo = timings.get(("gloo", nbytes))
            for implementation in (*implementations, *(("horovod",) if horovod else ())):
                seconds = timings[(implementation, nbytes)]
                rows.append({"world_size": k, "bytes": nbytes, "implementation": implementation,
                             "seconds": seconds,
                             "bus_GBps": collectives.bus_bandwidth(nbytes, seconds, k) / 1e9,
                             "vs_gloo": gloo / seconds if gloo else float("nan")})
    return rows


def format_table(rows: list[dict]) -> str:
    """The benchmark as a fixed-width table: bus GB/s per implementation and ratio to gloo."""
    implementations = list(dict.fromkeys(r["implementation"] for r in rows))
    header = f"{'K':>2} {'size':>8} " + " ".join(f"{i + ' GB/s':>10}" for i in implementations)
    header += " " + " ".join(f"{i + '/gloo':>10}" for i in implementations if i != "gloo")
    lines = [header]
    keys = list(dict.fromkeys((r["world_size"], r["bytes"]) for r in rows))
    by_key = {(r["world_size"], r["bytes"], r["implementation"]): r for r in rows}
    for k, nbytes in keys:
        cells = [by_key[(k, nbytes, i)] for i in implementations]
        line = f"{k:>2} {_human(nbytes):>8} " + " ".join(f"{c['bus_GBps']:>10.3f}" for c in cells)
        line += " " + " ".join(f"{c['vs_gloo']:>10.2f}" for c in cells
                               if c["implementation"] != "gloo")
        lines.append(line)
    return "\n".join(lines)


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
