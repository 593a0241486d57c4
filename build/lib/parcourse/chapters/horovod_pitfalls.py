"""Horovod's optimizer-state broadcast on a fresh Adam, measured (chapter 5).

``hvd.broadcast_optimizer_state(optimizer, root_rank=0)`` copies rank 0's optimizer
state to every rank. A fresh optimizer has no state yet, so Horovod 0.28.1 first creates
one: it sets every gradient to zero and runs one ``step()``. For Adam that step changes
no parameter (its moments stay zero), but it sets the step counter to 1. Every later
update then uses the bias correction of step t + 1 instead of t; the first real update,
for example, is ``sqrt(1 + β2) / (1 + β1)`` ≈ 0.744 of what it should be (β = 0.9, 0.999).
The training still works — it just no longer computes what one process computes.

:func:`first_update_ratio` shows the mechanism in plain PyTorch (no Horovod needed);
:func:`measure_broadcast_pitfall` shows it in real Horovod processes: the step counter
after the call, and the parameters after training with and without the call, to compare
with the single-process run. :mod:`parcourse.data_parallel.horovod` therefore calls
``broadcast_optimizer_state`` only when there is state to copy (a resumed run).
"""

from __future__ import annotations

import math

import torch

from .. import data as datasets
from .. import loopback
from ..data_parallel import horovod as hvd_dp
from ..training.adapters import Replica, cpu_state
from ..training.loop import make_optimizer, replica_loss
from ..training.worker import batch_of, load_data_and_model, train_worker



def first_update_ratio(betas: tuple[float, float] = (0.9, 0.999), lr: float = 1e-3,
                       size: int = 1000, seed: int = 0) -> dict:
    """Adam's first real update after a zero-gradient step, relative to a fresh Adam's.

    Plain PyTorch: the zero-gradient step is exactly what ``broadcast_optimizer_state``
    runs on a fresh optimizer. Returns the measured ratio of update sizes (the median over
    ``size`` coordinates), the predicted ``sqrt(1 + β2) / (1 + β1)``, the step counter
    after the zero step, and how much the zero step moved the parameters.
    """
    gradient = torch.randn(size, generator=torch.Generator().manual_seed(seed))

    def first_update(zero_step_first: bool) -> tuple[torch.Tensor, float, float]:
        p = torch.zeros(size, requires_grad=True)
        optimizer = torch.optim.Adam([p], lr=lr, betas=betas)
        counter, moved = 0.0, 0.0
        if zero_step_first:
            p.grad = torch.zeros_like(p)
            optimizer.step()
            counter = float(optimizer.state[p]["step"])
            moved = p.detach().abs().max().item()
        start = p.detach().clone()
        p.grad = gradient.clone()
        optimizer.step()
        return p.detach() - start, counter, moved

    fresh, _, _ = first_update(False)
    shifted, counter, moved = first_update(True)
    beta1, beta2 = betas
    return {"measured": (shifted / fresh).median().item(),
            "predicted": math.sqrt(1 + beta2) / (1 + beta1),
            "step_after_zero_step": counter,
            "parameter_change_of_zero_step": moved}


def _train(config, broadcast_state: bool):
    """One Horovod training of ``config`` (as ``--strategy horovod`` trains), optionally
    calling ``hvd.broadcast_optimizer_state`` on the fresh optimizer first; rank 0's
    results."""
    import horovod.torch as hvd

    dataset, model = load_data_and_model(config)
    optimizer = hvd_dp.distributed_optimizer(
        make_optimizer(config.optimizer, model.parameters(), config.lr), model)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    before = cpu_state(model)
    counters: list[float] = []
    if broadcast_state:
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)
        counters = [float(s["step"]) for s in optimizer.state.values() if "step" in s]
    moved = max((model.state_dict()[k] - v).abs().max().item() for k, v in before.items())

    rank, world_size = hvd.rank(), hvd.size()
    share = datasets.shard_sizes(config.batch_size, world_size)[rank] / config.batch_size

    def inner_step(step: int) -> float:
        mine = datasets.shard(batch_of(dataset, config, step), rank, world_size)
        optimizer.zero_grad()
        loss = replica_loss(model, dataset.train_x[mine], dataset.train_y[mine], 1, 1.0)
        optimizer.step()
        return loss * share

    losses, _ = train_worker(config, inner_step, Replica(model, optimizer, rank), rank=rank,
                             world_size=world_size, sum_over_workers=hvd_dp.sum_over_workers)
    return {"state_dict": cpu_state(model), "losses": losses,
            "step_counters_after_broadcast": counters,
            "parameter_change_of_broadcast": moved}


def broadcast_pitfall_worker(config) -> dict | None:
    """A Horovod process: train ``config`` without, then with, the broadcast of the fresh
    optimizer's state (both on CPU); rank 0 returns both results."""
    hvd, _ = hvd_dp.init()
    results = {"without": _train(config, broadcast_state=False),
               "with": _train(config, broadcast_state=True)}
    rank = hvd.rank()
    hvd.shutdown()
    return results if rank == 0 else None


def measure_broadcast_pitfall(config) -> dict:
    """Run :func:`broadcast_pitfall_worker` on ``config.workers`` local Horovod processes
    (``horovod.run`` over Gloo); return rank 0's ``{"without": ..., "with": ...}``."""
    hvd_dp.require_horovod()
    results = loopback.horovod_run(broadcast_pitfall_worker, (config,), config.workers)
    return results[0]
