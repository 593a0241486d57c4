"""``--strategy tensor``: Megatron tensor parallelism (chapters 3–5; Shoeybi et al., 2019).

Every worker sees the whole global batch and holds 1/K of each split layer: the first
Linear of each Linear → activation → Linear pair split by columns, the second by rows
(:mod:`parcourse.model_parallel.tensor`). One all-reduce per pair forward, one backward;
every worker ends each forward with the full output, so every worker computes the same
loss (rank 0's counts once).
"""

from __future__ import annotations

from .. import launch
from ..model_parallel import tensor as tensor_parallel
from ..models import MODELS
from .adapters import TensorShards
from .config import TrainConfig
from .loop import make_optimizer, replica_loss
from .registry import WHOLE, Strategy, register
from .worker import batch_of, load_data_and_model, result, train_worker


def tensor_worker(rank: int, world_size: int, config: TrainConfig):
    """One tensor rank; rank 0 returns the gathered result."""
    device = launch.device()
    dataset, whole = load_data_and_model(config)
    model = tensor_parallel.parallelize(whole, rank, world_size).to(device)
    optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr)

    def inner_step(step: int) -> float:
        batch = batch_of(dataset, config, step)
        optimizer.zero_grad()
        loss = replica_loss(model, dataset.train_x[batch].to(device),
                            dataset.train_y[batch].to(device), 1, 1.0)
        optimizer.step()
        return loss if rank == 0 else 0.0  # every rank has the same loss: count it once

    adapter = TensorShards(model, optimizer, rank, world_size)
    losses, seconds = train_worker(config, inner_step, adapter, rank=rank,
                                   world_size=world_size, device=device)
    full = adapter.full()
    return result(config, full[0], losses, seconds, dataset) if rank == 0 else None


def train_tensor(config: TrainConfig):
    """Tensor parallelism over ``config.workers`` workers; rank 0's result."""
    return launch.run(tensor_worker, config.workers, args=(config,), backend=config.backend,
                      timeout=config.timeout, verbose=not config.quiet)[0]


def _check(config: TrainConfig) -> None:
    tensor_parallel.check_splittable(MODELS[config.model](), config.workers)


register(Strategy("tensor", train_tensor, "Megatron column/row split of each MLP block",
                  batch=WHOLE, check=_check, models=("simple", "complex")))
