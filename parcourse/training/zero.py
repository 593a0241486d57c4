"""``--strategy zero1|zero2|zero3``: data parallelism with the training state sharded over
the K workers, built from the package's own reduce-scatter and all-gather (chapter 5,
"When the model does not fit"; :mod:`parcourse.data_parallel.zero`).

Worker k back-propagates its local mean loss × B_k / B, so the reduce-scatter's *sum* is
the full-batch gradient for uneven shards too (as ``dp-manual``); SGD and Adam update each
element from its own gradient and state, so stepping 1/K of the flat parameters on each
worker computes what ``single`` computes.
"""

from __future__ import annotations

import torch.distributed as dist

from .. import collectives, launch, mixed_precision
from ..data_parallel.zero import Zero
from ..data_parallel.zero_state import full_state
from ..errors import ConfigError
from .adapters import ZeroShards
from .config import TrainConfig
from .loop import make_optimizer
from .registry import WEIGHTED, Strategy, register
from .worker import load_data_and_model, result, shard_loss, train_worker

STAGE = {"zero1": 1, "zero2": 2, "zero3": 3}


def zero_engine(model, config: TrainConfig, rank: int, world_size: int, record: bool = False):
    """The :class:`~parcourse.data_parallel.zero.Zero` engine of ``config``'s stage."""
    return Zero(model, STAGE[config.strategy],
                lambda shards: make_optimizer(config.optimizer, shards, config.lr),
                rank, world_size, algorithm=config.allreduce,
                bucket_bytes=int(config.bucket_kb * 1024),
                compute_dtype=mixed_precision.compute_dtype(config.precision), record=record)


def zero_worker(rank: int, world_size: int, config: TrainConfig):
    """One worker of a ZeRO stage; rank 0 returns the result, the others ``None``."""
    device = launch.device()
    dataset, model = load_data_and_model(config, device)   # the same seed: equal replicas
    engine = zero_engine(model, config, rank, world_size)
    scaler = mixed_precision.LossScaler(config.precision)

    def unscale(grads) -> bool:       # shards differ: an overflow anywhere skips everywhere
        finite = scaler.unscale(grads, agree=dist.all_reduce)
        scaler.update(finite)
        return finite

    def inner_step(step: int) -> float:
        engine.zero_grad()
        loss = shard_loss(model, dataset, config, step, rank, world_size, device, scaler.scale)
        engine.step(unscale if scaler.enabled else None)
        return loss

    try:
        losses, times = train_worker(config, inner_step, ZeroShards(engine, rank),
                                     rank=rank, world_size=world_size, device=device)
        final = full_state(engine, rank)
    finally:
        engine.close()
    if rank != 0:
        return None
    return result(config, final[0], losses, times, dataset)


def train_zero(config: TrainConfig):
    """A ZeRO stage over ``config.workers`` workers."""
    return launch.run(zero_worker, config.workers, args=(config,), backend=config.backend,
                      timeout=config.timeout, verbose=not config.quiet)[0]


def _check(config: TrainConfig) -> None:
    if config.allreduce not in collectives.SHARD_ALGORITHMS:
        *others, last = collectives.SHARD_ALGORITHMS
        raise ConfigError(f"--allreduce {config.allreduce} has no reduce-scatter: "
                          f"--strategy {config.strategy} shards with "
                          f"{', '.join(others)} or {last}")


for _name, _what in (("zero1", "optimizer state"), ("zero2", "optimizer state and gradients"),
                     ("zero3", "optimizer state, gradients and parameters")):
    register(Strategy(_name, train_zero, f"ZeRO stage {STAGE[_name]}: {_what} sharded "
                                         f"over the workers",
                      options=("allreduce", "bucket_kb", "recompute", "precision"),
                      batch=WEIGHTED, family="ZeRO", check=_check, experts=True))
