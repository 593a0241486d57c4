"""When does data parallelism pay off? A measured speedup map and its cost model (chapter 3).

One training step of a model with P parameters on a global batch of B samples costs,
on one worker, about

    T_1(B, P) = c_1 · B · P                      (forward + backward ∝ samples × parameters)

and on K data-parallel workers, each computing B/K samples and then all-reducing P
float32 gradients (4P bytes),

    T_K(B, P) = c_K · B · P / K + T_allreduce(4P bytes, K)

with the ring all-reduce of the α–β model (:func:`parcourse.collectives.predicted_seconds`),
T_allreduce(n, K) = 2(K−1)·α + 2(K−1)/K · n·β. The speedup is S = T_1 / T_K, and data
parallelism pays off where S > 1, that is where the compute saved exceeds the traffic:

    B · P · (c_1 − c_K / K)  >  T_allreduce(4P, K).

``c_1`` is the cost per sample and parameter of the single-process reference and ``c_K``
that of one of the K workers. With one device per worker (K GPUs, K machines) the two are
equal, S → K for large B, and the boundary S = 1 is

    B* = T_allreduce(4P) / (c_1·P·(1 − 1/K)) = 2Kα / (c_1·P) + 8β / c_1 :

traffic and compute both grow with P, the latency α does not, so larger models break
even at smaller batches, down to 8β/c_1 whatever K is. When the K workers share one
machine's cores, each worker computes more slowly than the single process that had all
the cores (c_K > c_1), and if c_K ≥ K·c_1 no batch is large enough.

:func:`measure_speedup_map` measures S on a grid of hidden widths (the MLP of the source
document's §5.2.1, 784 → h → h → 10) and global batch sizes; :func:`fit_compute_constant`
fits c from measured step times; :func:`predicted_speedup` evaluates the model above.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import collectives, launch
from ..data import shard_sizes
from ..models import IMAGE_SHAPE, NUM_CLASSES, SimpleModel


def mlp(hidden: int) -> nn.Module:
    """The source document's perceptron with hidden width ``hidden``: 784 → h → h → 10."""
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
    return SimpleModel(hidden=hidden)


def parameter_count(hidden: int) -> int:
    """Parameters of :func:`mlp`: 784h + h (layer 1), h² + h (layer 2), 10h + 10 (layer 3)."""
    inputs = IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
    return inputs * hidden + hidden + hidden * hidden + hidden + hidden * NUM_CLASSES + NUM_CLASSES


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _slowest(seconds: float, world_size: int, device: torch.device) -> float:
    """The largest of the workers' ``seconds``: a step ends when its slowest worker does."""
    if world_size == 1:
        return seconds
    elapsed = torch.tensor([seconds], dtype=torch.float64, device=device)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return elapsed.item()


def step_time_worker(rank: int, world_size: int, hidden: int, batch_size: int,
                     steps: int = 3, warmup: int = 1, budget: float = 0.2,
                     device: torch.device | None = None) -> dict:
    """Median seconds of one SGD training step of ``mlp(hidden)`` on a global batch.

    With ``world_size`` 1 the plain model trains on the whole batch in this process (the
    single-process reference). With ``world_size`` K > 1 (inside :func:`launch.run`) the
    model is wrapped in PyTorch ``DistributedDataParallel`` and this worker trains on its
    shard of the batch. Returns ``{"step": s, "compute": s}``: ``step`` is a full training
    step, all-reduce included, and ``compute`` (K > 1 only, else equal to ``step``) the same
    step under DDP's ``no_sync()``, which skips the all-reduce: the workers' compute alone,
    running side by side as in a real step.

    Each step starts after a barrier and its time is the slowest worker's. After ``warmup``
    untimed steps, at least ``steps`` steps are timed, more when they are quick (as many
    as fit in about ``budget`` seconds, at most 25), so that the median of short steps
    rests on more samples; steps with and without the all-reduce alternate, so that both
    medians see the same conditions. The inputs are synthetic: the time does not depend
    on their values.
    """
    device = device or launch.device()
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left alone
        torch.manual_seed(0)
        model = mlp(hidden).to(device)
    local = shard_sizes(batch_size, world_size)[rank]
    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(local, IMAGE_SHAPE[1] * IMAGE_SHAPE[2], generator=generator).to(device)
    y = torch.randint(0, NUM_CLASSES, (local,), generator=generator).to(device)
    if world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def timed_step(synchronized: bool) -> float:
        if world_size > 1:
            dist.barrier()
        _synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad()
        if synchronized or world_size == 1:
            F.cross_entropy(model(x), y).backward()
        else:
            with model.no_sync():
                F.cross_entropy(model(x), y).backward()
        optimizer.step()
        _synchronize(device)
        return _slowest(time.perf_counter() - start, world_size, device)  # same on all ranks

    kinds = (True, False) if world_size > 1 else (True,)  # with and without the all-reduce
    first = min(timed_step(True) for _ in range(max(1, warmup)))
    for _ in range(warmup if world_size > 1 else 0):
        timed_step(False)
    count = max(steps, min(25, int(budget / max(first, 1e-9))))
    samples = {kind: [] for kind in kinds}
    for _ in range(count):  # alternate, so that both kinds see the same machine
        for kind in kinds:
            samples[kind].append(timed_step(kind))
    full = statistics.median(samples[True])
    compute = statistics.median(samples[False]) if world_size > 1 else full
    return {"step": full, "compute": compute}


def reference_times(hidden: int, batch_size: int, threads: tuple, steps: int = 3,
                    warmup: int = 1, budget: float = 0.2,
                    device: torch.device | None = None) -> list[float]:
    """Single-process step times of the plain ``mlp(hidden)`` on the whole global batch,
    once for each torch thread count in ``threads``; the caller's count is restored."""
    before = torch.get_num_threads()
    try:
        times = []
        for count in threads:
            torch.set_num_threads(count)
            times.append(step_time_worker(0, 1, hidden, batch_size, steps, warmup, budget,
                                          device)["step"])
        return times
    finally:
        torch.set_num_threads(before)


def grid_worker(rank: int, world_size: int, hiddens: list[int], batches: list[int],
                steps: int, warmup: int, budget: float) -> dict:
    """:func:`step_time_worker` for every (hidden, batch) cell, in one set of K workers."""
    return {(h, b): step_time_worker(rank, world_size, h, b, steps, warmup, budget)
            for h in hiddens for b in batches}


def reference_device(workers: int) -> torch.device:
    """Where the single-process references run: on a GPU when the K workers get one GPU
    each (NCCL), else on the CPU, like the K gloo workers."""
    backend, _ = launch.choose_backend(workers)
    return torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")


@dataclass
class SpeedupMap:
    """Median step times on a (hidden width × global batch) grid; keys are (hidden, batch).

    Two single-process references, both training the plain model on the whole global
    batch: ``machine`` with all the cores as torch threads (or the GPU), the best one
    process can do here; ``worker`` with one worker's share of the cores
    (:func:`launch.threads_per_worker`), one of the K devices alone. With one GPU per
    worker the two are the same device.
    """

    hiddens: list
    batches: list
    workers: int
    machine: dict   # one process, all cores
    worker: dict    # one process, one worker's share of the cores
    parallel: dict  # K workers with DDP, all-reduce included
    compute: dict   # K workers with DDP under no_sync(): the all-reduce skipped
    seconds: float  # wall time of the whole measurement, process start-up included

    def speedup(self, baseline: str = "machine") -> np.ndarray:
        """T_1 / T_K over ``baseline`` ("machine" or "worker"), as an array [batch, hidden]."""
        reference = {"machine": self.machine, "worker": self.worker}[baseline]
        return np.array([[reference[h, b] / self.parallel[h, b] for h in self.hiddens]
                         for b in self.batches])


def measure_speedup_map(hiddens=(64, 256, 1024), batches=(64, 512, 4096), workers: int = 2,
                        steps: int = 3, warmup: int = 1, budget: float = 0.2,
                        timeout: float = 600) -> SpeedupMap:
    """Time one training step of ``mlp(h)`` at global batch ``b`` on 1 and on ``workers``.

    The single-process references run first, in this process, with all available cores
    and then with one worker's share of them as torch threads (the caller's setting is
    restored), on the device the workers use. Then one :func:`launch.run` starts the K
    workers (each with its share of the cores, or one GPU each), and :func:`grid_worker`
    goes through the grid.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 2:
        raise ValueError(f"workers must be an integer ≥ 2, got {workers!r}")
    hiddens, batches = list(hiddens), list(batches)
    start = time.perf_counter()
    device = reference_device(workers)
    threads = (launch.available_cores(), launch.threads_per_worker(workers))
    references = {(h, b): reference_times(h, b, threads, steps, warmup, budget, device)
                  for h in hiddens for b in batches}
    cells = launch.run(grid_worker, workers, args=(hiddens, batches, steps, warmup, budget),
                       timeout=timeout, verbose=False)[0]
    return SpeedupMap(hiddens, batches, workers,
                      {key: t[0] for key, t in references.items()},
                      {key: t[1] for key, t in references.items()},
                      {key: t["step"] for key, t in cells.items()},
                      {key: t["compute"] for key, t in cells.items()},
                      time.perf_counter() - start)


def fit_compute_constant(times: dict, per_worker: int = 1) -> float:
    """Fit c in t = c · (B / per_worker) · P to ``{(hidden, B): seconds}``.

    Least squares on the relative error (each point weighted by 1/t, as in
    :func:`parcourse.bench.allreduce.fit_alpha_beta`): c = Σ(x/t) / Σ(x/t)² with
    x = B·P/per_worker. Exact times c·x give back c.
    """
    ratios = np.array([b * parameter_count(h) / per_worker / t for (h, b), t in times.items()])
    return float(ratios.sum() / (ratios ** 2).sum())


def allreduce_seconds(parameters, workers: int, alpha: float, beta: float):
    """The α–β model's ring all-reduce time for the float32 gradients of ``parameters``."""
    return collectives.predicted_seconds("ring", 4 * np.asarray(parameters, dtype=float),
                                         workers, alpha, beta)


def _number_or_array(value):
    value = np.asarray(value, dtype=float)
    return float(value) if value.ndim == 0 else value


def predicted_step_seconds(batch, parameters, c: float, workers: int = 1,
                           alpha: float = 0.0, beta: float = 0.0):
    """T_K = c·B·P/K + T_allreduce(4P bytes, K); with K = 1 just c·B·P. Broadcasts arrays."""
    batch, parameters = np.asarray(batch, dtype=float), np.asarray(parameters, dtype=float)
    return _number_or_array(c * batch * parameters / workers
                            + allreduce_seconds(parameters, workers, alpha, beta))


def predicted_speedup(batch, parameters, c_single: float, workers: int, alpha: float,
                      beta: float, c_worker: float | None = None):
    """S = T_1 / T_K for global batch ``batch`` and ``parameters``; ``c_worker`` (one
    worker's c) defaults to ``c_single`` (one device per worker). Numbers or arrays."""
    c_worker = c_single if c_worker is None else c_worker
    single = predicted_step_seconds(batch, parameters, c_single)
    parallel = predicted_step_seconds(batch, parameters, c_worker, workers, alpha, beta)
    return _number_or_array(np.asarray(single) / np.asarray(parallel))


def break_even_batch(parameters, c_single: float, workers: int, alpha: float, beta: float,
                     c_worker: float | None = None):
    """The global batch B* where S = 1: T_allreduce(4P) / (P·(c_1 − c_K/K)); inf if none.

    With c_K = c_1 and large P this tends to 8β/c_1 for every K: the batch at which
    computing one sample's share per parameter takes as long as moving 8 bytes.
    """
    c_worker = c_single if c_worker is None else c_worker
    parameters = np.asarray(parameters, dtype=float)
    saved_per_sample = parameters * (c_single - c_worker / workers)
    if np.all(saved_per_sample <= 0):
        return _number_or_array(np.full_like(parameters, np.inf))
    return _number_or_array(allreduce_seconds(parameters, workers, alpha, beta)
                            / saved_per_sample)
