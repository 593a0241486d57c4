"""The one training loop of every strategy (chapter 5, "from the notebook to the cluster").

A strategy supplies the *inner step*: for step s, its worker's forward and backward on
its part of the global batch :func:`parcourse.data.global_batch` (s), the gradient
synchronisation, and the optimizer step; it returns this worker's share of the step's
mean loss (0 for a worker that computes no loss, such as a pipeline's first stage). The
loop does the rest, the same for all: the batch stream by step, the global loss (the
shares summed over the workers, one scalar per step), the stop at the first non-finite
loss, the hook after each step (checkpoints, Horovod elastic's commits) and the progress
bar. Because every worker sums the same scalar, every worker sees a diverged loss at the
same step and stops there; rank 0 reports it.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import data as datasets
from .. import mixed_precision, moe
from ..errors import TrainingDiverged
from .config import TrainConfig

InnerStep = Callable[[int], float]         # step → this worker's share of the mean loss
Sum = Callable[[torch.Tensor], None]       # sums a tensor over the workers, in place


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: mixed_precision.LossScaler,
                   agree: Sum | None = None) -> None:
    """``optimizer.step()``, or with fp16 loss scaling: unscale the gradients, and step only
    if they are finite on every worker (``agree`` sums the overflow flag over them)."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
    finite = scaler.unscale(grads, agree)
    if finite:
        optimizer.step()
    scaler.update(finite)
OPTIMIZER_CLASSES = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """Plain SGD or Adam with the given learning rate."""
    return OPTIMIZER_CLASSES[name](params, lr=lr)


def progress_bar(config: TrainConfig, enabled: bool, initial: int = 0):
    """tqdm's bar over the steps (off when ``quiet`` or not ``enabled``)."""
    from tqdm.auto import tqdm

    if "_lock" not in vars(tqdm):  # a thread lock, not tqdm's default semaphore: a worker
        tqdm.set_lock(threading.RLock())  # that is stopped then leaks nothing
    return tqdm(total=config.steps, initial=initial, desc=config.strategy, unit="step",
                disable=config.quiet or not enabled, leave=True)


def check_finite(loss: float, step: int, config: TrainConfig, rank: int) -> None:
    """Stop at the first NaN or infinite loss (``step`` counts from 0), naming the rank."""
    if not math.isfinite(loss):
        raise TrainingDiverged(loss, step + 1, config.steps, rank, config.lr)


def run_loop(config: TrainConfig, inner_step: InnerStep, *, start: int = 0, rank: int = 0,
             world_size: int = 1, device: torch.device = torch.device("cpu"),
             sum_over_workers: Sum = dist.all_reduce,
             after_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Run steps ``start … config.steps − 1``; return each step's wall time in seconds
    (from the end of the one before; they sum to the loop's wall time).

    ``after_step(step, loss)`` gets the global batch's mean loss of every step, on every
    worker. The progress bar shows on rank 0.
    """
    bar = progress_bar(config, enabled=rank == 0, initial=start)
    begin = last = time.perf_counter()
    times = []
    for step in range(start, config.steps):
        loss = inner_step(step)
        if world_size > 1:
            total = torch.tensor([loss], dtype=torch.float64, device=device)
            sum_over_workers(total)
            loss = total.item()
        check_finite(loss, step, config, rank)
        if after_step is not None:
            after_step(step, loss)
        bar.update(1)
        now = time.perf_counter()
        times.append(now - last)
        last = now
        if step % 10 == 0 or step == config.steps - 1:
            elapsed = time.perf_counter() - begin
            bar.set_postfix(loss=f"{loss:.4f}",
                            samples_per_s=f"{(step + 1 - start) * config.batch_size / elapsed:,.0f}")
    bar.close()
    return times


def replica_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, micro: int,
                 weight: float, precision: str = "full") -> float:
    """Forward and backward of a whole replica on its samples ``x``, in ``micro``
    micro-batches: each back-propagates its mean loss × its share of the samples ×
    ``weight``, so the accumulated gradient is ``weight`` × the gradient of the mean.
    With ``precision`` bf16 or fp16 the forward runs under autocast and the loss is taken
    of float32 logits. A mixture-of-experts GPT adds its load-balancing loss
    (:func:`parcourse.moe.balance_loss`, a mean over the windows like the cross-entropy).
    Returns the mean loss of the samples (unweighted)."""
    total, n = 0.0, len(y)
    for m in range(micro):
        part = datasets.shard(torch.arange(n), m, micro)
        with mixed_precision.autocast(precision, x.device):
            logits = model(x[part])
        loss = (mean_loss(logits.float() if precision != "full" else logits, y[part])
                + moe.balance_loss(model))   # 0 unless the GPT has experts
        share = len(part) / n
        scaled = share * weight
        (loss * scaled if scaled != 1.0 else loss).backward()
        total += loss.item() * share
    return total


def mean_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the samples: for a GPT's logits (N, T, V) and targets
    (N, T), over all N·T positions. Every window has T positions, so the mean over B_k
    windows is still (1/B_k) Σ (per-window mean) and the shards' weights B_k / B hold."""
    return F.cross_entropy(logits.flatten(0, -2), y.flatten())


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y``; for the GPT, of the positions
    whose next token has the highest logit (next-token accuracy)."""
    model.eval()
    predictions = model(x.to(device)).argmax(dim=-1).cpu()
    model.train()
    return (predictions == y).float().mean().item()
