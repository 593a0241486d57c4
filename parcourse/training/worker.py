"""What every strategy's worker does the same way (chapter 5): build its data and model,
resume from a checkpoint, run the one loop with checkpoints every N steps, and turn the
unsplit model's final state into rank 0's :class:`~parcourse.training.config.TrainResult`.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.distributed as dist

from .. import checkpoint
from .. import data as datasets
from ..gpt import use_attention
from ..memory_meter import held_state_bytes
from ..models import build_model, sizes_of
from ..recompute import recompute
from .config import TrainConfig, TrainResult
from .loop import InnerStep, Sum, accuracy, replica_loss, run_loop
from .registry import resumable


def dtype_of(config: TrainConfig) -> torch.dtype:
    """The torch dtype of a run's parameters, data, optimizer state and messages."""
    return getattr(torch, config.dtype)


def load_data_and_model(config: TrainConfig, device: torch.device | None = None):
    """A worker's data set and a fresh copy of the whole model, both in ``config.dtype``
    (token ids stay int64; the model on ``device`` when one is given; initial weights from
    ``config.seed``; each block recomputed in backward with ``config.recompute``; the
    GPT's heads computed by FlashAttention with ``--attention triton``)."""
    dtype = dtype_of(config)
    dataset = datasets.load_dataset(config.dataset, seed=config.seed, dtype=dtype,
                                    sequence=config.sequence)
    model = build_model(config.model, seed=config.seed, dtype=dtype,
                        **sizes_of(config.model, config))
    if config.attention == "triton":
        from ..kernels import flash_attention  # imports Triton: only when asked for

        use_attention(model, flash_attention.causal)
    if config.recompute:
        recompute(model)
    return dataset, (model if device is None else model.to(device))


def batch_of(dataset: datasets.Dataset, config: TrainConfig, step: int) -> torch.Tensor:
    """The indices of the global batch of ``step``."""
    return datasets.global_batch(len(dataset.train_y), config.batch_size, step, config.seed)


def shard_loss(model, dataset: datasets.Dataset, config: TrainConfig, step: int, rank: int,
               world_size: int, device: torch.device, scale: float = 1.0,
               weighted: bool = True) -> float:
    """Forward and backward of this worker's shard of step ``step``'s global batch; returns
    its share B_k/B of the global mean loss. It back-propagates its mean loss × B_k/B ×
    ``scale`` (``weighted``: the workers' gradients then *sum* to the full batch's), or
    × ``scale`` alone (an engine that averages equal shards, such as DDP)."""
    mine = datasets.shard(batch_of(dataset, config, step), rank, world_size)
    share = len(mine) / config.batch_size
    loss = replica_loss(model, dataset.train_x[mine].to(device), dataset.train_y[mine].to(device),
                        1, (share if weighted else 1.0) * scale, config.precision)
    return loss * share


def train_worker(config: TrainConfig, inner_step: InnerStep, adapter, *, rank: int = 0,
                 world_size: int = 1, device: torch.device = torch.device("cpu"),
                 sum_over_workers: Sum = dist.all_reduce) -> tuple[list[float], list[float]]:
    """Resume (if asked), run the loop, checkpoint every ``config.checkpoint_every`` steps
    through ``adapter`` (:mod:`parcourse.training.adapters`); return the global losses of
    every step and each step's wall time."""
    losses, start = [0.0] * config.steps, 0
    if resumable(config):
        saved = checkpoint.load(config.checkpoint)
        adapter.load(saved)
        start = saved["next_step"]
        losses[:start] = saved["losses"]

    def after_step(step: int, loss: float) -> None:
        losses[step] = loss
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            full = adapter.full()  # every worker takes part; rank 0 gets the unsplit model
            if full is not None:
                checkpoint.save(config.checkpoint, model_state=full[0], optimizer_state=full[1],
                                next_step=step + 1, losses=losses[:step + 1],
                                config=asdict(config))

    times = run_loop(config, inner_step, start=start, rank=rank, world_size=world_size,
                     device=device, sum_over_workers=sum_over_workers, after_step=after_step)
    return losses, times


def held_on_every_rank(model: torch.nn.Module, optimizer, world_size: int) -> list[dict]:
    """The state bytes each rank holds now (:func:`parcourse.memory_meter.held_state_bytes`),
    in rank order, on every rank (a collective: every worker calls it)."""
    mine = held_state_bytes(model, optimizer)
    if world_size == 1:
        return [mine]
    every = [None] * world_size
    dist.all_gather_object(every, mine)
    return every


def result(config: TrainConfig, state: dict, losses: list, seconds: float | list[float],
           dataset: datasets.Dataset, **measurements) -> TrainResult:
    """Rank 0's result: the unsplit model's ``state`` (plain key names) and its test
    accuracy, measured on the CPU; ``seconds``: the loop's wall time, or each step's."""
    full = build_model(config.model, dtype=dtype_of(config), **sizes_of(config.model, config))
    full.load_state_dict(state)
    steps = list(seconds) if isinstance(seconds, (list, tuple)) else []
    return TrainResult(config, state, losses, sum(steps) if steps else seconds,
                       accuracy(full, dataset.test_x, dataset.test_y, torch.device("cpu")),
                       step_seconds=steps, **measurements)
