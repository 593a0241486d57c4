"""``--strategy context``: context parallelism, the GPT's windows split along the sequence
over K workers, attention by a ring (chapter 5, "Long sequences"; Liu et al., 2023).

Every worker holds the whole GPT and sees the whole global batch, but only the positions
of its two chunks of each window (chunks r and 2K − 1 − r of 2K,
:mod:`parcourse.model_parallel.context`); the keys and values go round the ring of workers
inside each attention (:mod:`parcourse.model_parallel.context_gpt`). Each worker
back-propagates its positions' mean loss × 1/K (every worker has as many positions, so
the K parts sum to the global mean), and the gradients are summed over the workers after
backward (one all-reduce, ``--allreduce``). Rank 0's copy is the unsplit model, so the
checkpoints are a replica's (:class:`~parcourse.training.adapters.Replica`).
"""

from __future__ import annotations

from .. import launch
from ..errors import ConfigError
from ..data_parallel import gradient_sync
from ..model_parallel import context, context_gpt
from .adapters import Replica, cpu_state
from .config import TrainConfig
from .loop import make_optimizer, replica_loss
from .registry import WHOLE, Strategy, register
from .worker import batch_of, load_data_and_model, result, train_worker


def context_worker(rank: int, world_size: int, config: TrainConfig):
    """One context rank; rank 0 returns the result."""
    device = launch.device()
    dataset, model = load_data_and_model(config, device)
    split = context_gpt.parallelize(model, rank, world_size)
    sync = gradient_sync.GradientAllReduce(model, config.allreduce)
    optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr)

    def inner_step(step: int) -> float:
        batch = batch_of(dataset, config, step)
        optimizer.zero_grad()
        ids = context_gpt.local(dataset.train_x[batch], rank, world_size).to(device)
        targets = context_gpt.local(dataset.train_y[batch], rank, world_size).to(device)
        loss = replica_loss(split, ids, targets, 1, 1 / world_size)
        sync.finish()
        optimizer.step()
        return loss / world_size

    losses, times = train_worker(config, inner_step, Replica(model, optimizer, rank),
                                 rank=rank, world_size=world_size, device=device)
    if rank != 0:
        return None
    return result(config, cpu_state(model), losses, times, dataset,
                  communication_seconds=sync.communication_seconds)


def train_context(config: TrainConfig):
    """Context parallelism over ``config.workers`` workers; rank 0's result."""
    return launch.run(context_worker, config.workers, args=(config,), backend=config.backend,
                      timeout=config.timeout, verbose=not config.quiet)[0]


def _check(config: TrainConfig) -> None:
    context.check_sequence(config.sequence, config.workers)
    if config.attention != "torch":
        raise ConfigError(f"--attention {config.attention} does not combine with --strategy "
                          f"context, whose ring computes each block's attention itself")


register(Strategy("context", train_context, "the GPT's windows split along the sequence, "
                  "attention by a ring of keys and values (ring attention)",
                  batch=WHOLE, check=_check, models=("gpt",)))
