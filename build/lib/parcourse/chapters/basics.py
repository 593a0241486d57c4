"""The smallest parallel programs of chapter 2: data parallelism and task parallelism.

Both run as K real worker processes through :func:`parcourse.launch.run`, and both
have a serial reference that computes the same thing in one process.

* **Data parallelism** — every worker runs the *same* code on its *own shard* of the
  data, then the partial results are combined with a collective. Here: worker ``k``
  sums its contiguous shard ``x[start_k:end_k]``, and ``all_reduce`` adds the K
  partial sums, so every worker ends with ``Σ_k Σ_{i∈shard k} x_i = Σ_i x_i``. The
  shards differ in length by at most one when ``len(x)`` is not divisible by K.
  The result equals the serial sum up to floating-point rounding, because the
  additions happen in a different order.
* **Task parallelism** — workers run *different* functions on the *same* data. Here
  the tasks of :data:`TASKS` are dealt round-robin (task ``t`` goes to worker
  ``t mod K``) and the results are gathered into one dictionary.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .. import launch
from ..data import shard_bounds


def shard(x: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Worker ``rank``'s contiguous shard of ``x`` along its first dimension."""
    start, end = shard_bounds(len(x), rank, world_size)
    return x[start:end]


# --- data parallelism ------------------------------------------------------------------

def serial_sum(x: torch.Tensor) -> torch.Tensor:
    """The single-process reference: ``Σ_i x_i``."""
    return x.sum()


def sum_worker(rank: int, world_size: int, x: torch.Tensor) -> dict:
    """Sum this worker's shard, then ``all_reduce`` the partial sums (data parallelism).

    Returns what this worker saw: its rank, process id, shard bounds, its partial sum
    and the total after the all-reduce.
    """
    start, end = shard_bounds(len(x), rank, world_size)
    partial = x[start:end].to(launch.device()).sum()
    total = partial.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return {"rank": rank, "pid": os.getpid(), "shard": (start, end),
            "partial": partial.item(), "total": total.cpu()}


def parallel_sum(x: torch.Tensor, world_size: int, backend: str = "auto",
                 verbose: bool = True) -> list[dict]:
    """Run :func:`sum_worker` on ``world_size`` workers; return their reports by rank."""
    return launch.run(sum_worker, world_size, args=(x.detach().cpu(),), backend=backend,
                      verbose=verbose)


# --- task parallelism ------------------------------------------------------------------

def statistics(x: torch.Tensor) -> dict:
    """Mean, standard deviation, minimum and maximum of ``x``."""
    return {"mean": x.mean().item(), "std": x.std().item(),
            "min": x.min().item(), "max": x.max().item()}


def histogram(x: torch.Tensor, bins: int = 8) -> list[int]:
    """Counts of ``x`` in ``bins`` equal-width bins between its minimum and maximum."""
    return [int(c) for c in torch.histc(x.float(), bins=bins,
                                        min=x.min().item(), max=x.max().item())]


def top_values(x: torch.Tensor, k: int = 3) -> list[float]:
    """The ``k`` largest values of ``x``, largest first."""
    return torch.topk(x, min(k, len(x))).values.tolist()


def quartiles(x: torch.Tensor) -> list[float]:
    """The 25th, 50th and 75th percentiles of ``x``."""
    return torch.quantile(x.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.double)).tolist()


TASKS = {"statistics": statistics, "histogram": histogram, "top_values": top_values,
         "quartiles": quartiles}


def assigned_tasks(rank: int, world_size: int) -> list[str]:
    """Names of the tasks worker ``rank`` runs: task ``t`` goes to worker ``t mod K``."""
    return [name for t, name in enumerate(TASKS) if t % world_size == rank]


def serial_tasks(x: torch.Tensor) -> dict:
    """The single-process reference: every task, one after the other."""
    return {name: task(x) for name, task in TASKS.items()}


def task_worker(rank: int, world_size: int, x: torch.Tensor) -> dict:
    """Run this worker's share of :data:`TASKS` on ``x``; return ``{task: result}``."""
    return {name: TASKS[name](x) for name in assigned_tasks(rank, world_size)}


def parallel_tasks(x: torch.Tensor, world_size: int, backend: str = "auto",
                   verbose: bool = True) -> tuple[dict, dict]:
    """Run :data:`TASKS` spread over ``world_size`` workers.

    Returns the gathered results ``{task: result}`` and who ran what ``{task: rank}``.
    """
    per_rank = launch.run(task_worker, world_size, args=(x.detach().cpu(),),
                          backend=backend, verbose=verbose)
    results, owner = {}, {}
    for rank, partial in enumerate(per_rank):
        results.update(partial)
        owner.update({name: rank for name in partial})
    return {name: results[name] for name in TASKS}, {name: owner[name] for name in TASKS}
