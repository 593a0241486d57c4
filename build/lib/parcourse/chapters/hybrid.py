"""Hybrid parallelism: data parallelism × model parallelism on a grid of workers (chapter 2).

The model is a two-layer perceptron ``Linear(d_in, h) → ReLU → Linear(h, d_out)`` and
the ``R × 2`` workers form a grid. Worker ``rank`` sits at

    replica = rank // 2,   stage = rank % 2.

* **Model parallelism inside a replica** (a pair of workers): stage 0 owns the first
  layer, stage 1 the second. Stage 0 sends its activation ``a = relu(W1 x + b1)`` to
  stage 1 (``dist.send``); stage 1 computes the output and the loss — the only loss
  there is — and backward sends ``∂L/∂a`` back, so that stage 0 can finish backward
  through its own layer. No stage ever sees the other's parameters.
* **Data parallelism across replicas**: replica ``r`` trains on its contiguous shard
  of the batch. Each stage all-reduces its gradients with the same stage of the other
  replicas (a process group per stage: ``{0, 2, …}`` and ``{1, 3, …}``).

With the mean-squared error over a global batch of ``N`` samples, replica ``r``'s
stage 1 uses ``L_r = Σ_{i ∈ shard r} ‖f(x_i) − y_i‖² / (N·d_out)``, so that
``Σ_r L_r`` is the loss of the whole batch and the summed gradients are its gradient
(uneven shards are weighted by ``B_r / N`` automatically, as in chapter 4). The result
equals one process training the unsplit model on the whole batch
(:func:`reference_train`), up to float rounding.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import launch
from ..data import shard_bounds
from ..grid import Grid

STAGES = 2  # the two layers of the perceptron, one per stage


def build_mlp(d_in: int, hidden: int, d_out: int, seed: int = 0,
              dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """The two-layer perceptron; the same ``seed`` gives the same weights in every process
    (drawn in float32, then converted to ``dtype``)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out)).to(dtype)


def stage_of(model: nn.Sequential, stage: int) -> nn.Sequential:
    """Stage 0 is ``Linear → ReLU``, stage 1 the last ``Linear`` (names are kept)."""
    if stage not in (0, 1):
        raise ValueError(f"the perceptron has two stages, 0 and 1; got {stage!r}")
    return model[:2] if stage == 0 else model[2:]


def grid_position(rank: int, world_size: int) -> tuple[int, int]:
    """``(replica, stage)`` of worker ``rank`` in the ``world_size // 2 × 2`` grid."""
    if world_size < STAGES or world_size % STAGES:
        raise ValueError(f"the hybrid grid needs an even number of workers (replicas × 2 "
                         f"stages), got {world_size}")
    where = Grid.of(world_size, stages=STAGES).position(rank)
    return where.replica, where.stage


def reference_train(x: torch.Tensor, y: torch.Tensor, hidden: int, steps: int, lr: float,
                    seed: int = 0) -> tuple[dict[str, torch.Tensor], list[float]]:
    """One process, the unsplit model, the whole batch, plain SGD: the reference."""
    model = build_mlp(x.shape[1], hidden, y.shape[1], seed, x.dtype)
    losses = []
    for _ in range(steps):
        model.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        losses.append(loss.item())
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses


def hybrid_worker(rank: int, world_size: int, x: torch.Tensor, y: torch.Tensor, hidden: int,
                  steps: int, lr: float, seed: int = 0) -> dict:
    """One worker of the grid: its stage of the model, its replica's shard of the batch.

    Returns its position, the parameters of its stage after ``steps`` SGD steps, the
    losses its replica computed (stage 1 only) and the bytes it sent: activations or
    their gradients to the other stage, and gradients into the all-reduce.
    """
    replica, stage = grid_position(rank, world_size)
    grid = Grid.of(world_size, stages=STAGES)
    replicas = grid.replicas
    groups = grid.data_parallel_groups()  # every rank creates every group, in one order
    mine = stage_of(build_mlp(x.shape[1], hidden, y.shape[1], seed, x.dtype), stage)
    start, end = shard_bounds(len(x), replica, replicas)
    xs, ys, n = x[start:end], y[start:end], len(x)
    sent = {"between stages": 0, "all-reduce": 0}
    losses = []
    for _ in range(steps):
        mine.zero_grad()
        if stage == 0:
            a = mine(xs)
            dist.send(a.detach(), rank + 1)                  # forward: activation →
            grad_a = torch.empty_like(a)
            dist.recv(grad_a, rank + 1)                      # backward: ← ∂L/∂a
            a.backward(grad_a)
            sent["between stages"] += a.numel() * a.element_size()
        else:
            a = torch.empty(len(xs), hidden, dtype=x.dtype)
            dist.recv(a, rank - 1)
            a.requires_grad_()
            out = mine(a)
            loss = F.mse_loss(out, ys, reduction="sum") / (n * ys.shape[1])
            loss.backward()
            dist.send(a.grad, rank - 1)
            sent["between stages"] += a.grad.numel() * a.grad.element_size()
            losses.append(loss.item())
        for p in mine.parameters():                          # data parallelism per stage
            dist.all_reduce(p.grad, group=groups[stage, 0])
            sent["all-reduce"] += p.grad.numel() * p.grad.element_size()
        with torch.no_grad():
            for p in mine.parameters():
                p -= lr * p.grad
    return {"rank": rank, "replica": replica, "stage": stage, "shard": (start, end),
            "state": {k: v.detach().clone() for k, v in mine.state_dict().items()},
            "losses": losses, "bytes sent": sent}


def hybrid_train(x: torch.Tensor, y: torch.Tensor, replicas: int = 2, hidden: int = 16,
                 steps: int = 3, lr: float = 0.1, seed: int = 0,
                 verbose: bool = True) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Train on ``replicas × 2`` workers; return the assembled parameters and all reports.

    The parameters are taken from replica 0 (stage 0's first layer, stage 1's second);
    the reports let the caller check that every replica holds the same values. The loss
    per step is the sum of the replicas' partial losses (see the module docstring).
    """
    if replicas < 1:
        raise ValueError(f"need at least one replica, got {replicas}")
    if len(x) < replicas:
        raise ValueError(f"a batch of {len(x)} cannot give each of {replicas} replicas a "
                         f"sample: use a batch of at least {replicas}")
    reports = launch.run(hybrid_worker, replicas * STAGES,
                         args=(x.detach().cpu(), y.detach().cpu(), hidden, steps, lr, seed),
                         backend="gloo", verbose=verbose)
    state = {**reports[0]["state"], **reports[1]["state"]}
    return state, reports


def replica_losses(reports: list[dict]) -> list[float]:
    """The global loss per step: the sum over replicas of their stage 1's partial losses."""
    per_replica = [r["losses"] for r in reports if r["stage"] == 1]
    return [sum(step) for step in zip(*per_replica)]
