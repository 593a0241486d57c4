"""``--strategy tensor``: Megatron tensor parallelism (chapters 3–5; Shoeybi et al., 2019),
and for the GPT optionally sequence parallelism (Korthikanti et al., 2022).

Every worker sees the whole global batch and holds 1/K of each split layer. The MLP and
the CNN: the first Linear of each Linear → activation → Linear pair split by columns, the
second by rows (:mod:`parcourse.model_parallel.tensor`). The GPT: each block's Q, K, V by
heads and W₁ by columns, W_o and W₂ by rows; LayerNorms, embeddings and the tied head
whole (:mod:`parcourse.model_parallel.tensor_gpt`). One all-reduce per pair forward, one
backward; ``--sequence-parallel`` turns each into an all-gather and a reduce-scatter
and splits the activations between them along the sequence, and the LayerNorms' and
row biases' gradients, which then come from 1/K of the positions, are summed over the
workers after backward. Every worker ends each forward with the full output, so every
worker computes the same loss (rank 0's counts once).
"""

from __future__ import annotations

from .. import launch
from ..errors import ConfigError
from ..model_parallel import tensor as tensor_parallel
from ..model_parallel import tensor_gpt
from ..models import MODELS
from .adapters import TensorShards
from .config import TrainConfig
from .loop import make_optimizer, replica_loss
from .registry import WHOLE, Strategy, register
from .worker import batch_of, held_on_every_rank, load_data_and_model, result, train_worker


def tensor_worker(rank: int, world_size: int, config: TrainConfig):
    """One tensor rank; rank 0 returns the gathered result."""
    device = launch.device()
    dataset, whole = load_data_and_model(config)
    if config.model == "gpt":
        model = tensor_gpt.parallelize(whole, rank, world_size,
                                       sequence_parallel=config.sequence_parallel).to(device)
        layout, after_backward = tensor_gpt, model.sum_sequence_gradients
    else:
        model = tensor_parallel.parallelize(whole, rank, world_size).to(device)
        layout, after_backward = tensor_parallel, lambda: None
    optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr)

    def inner_step(step: int) -> float:
        batch = batch_of(dataset, config, step)
        optimizer.zero_grad()
        loss = replica_loss(model, dataset.train_x[batch].to(device),
                            dataset.train_y[batch].to(device), 1, 1.0)
        after_backward()
        optimizer.step()
        return loss if rank == 0 else 0.0  # every rank has the same loss: count it once

    adapter = TensorShards(model, optimizer, rank, world_size, layout)
    losses, times = train_worker(config, inner_step, adapter, rank=rank,
                                 world_size=world_size, device=device)
    held = held_on_every_rank(model, optimizer, world_size)
    full = adapter.full()
    return result(config, full[0], losses, times, dataset, held=held) if rank == 0 else None


def train_tensor(config: TrainConfig):
    """Tensor parallelism over ``config.workers`` workers; rank 0's result."""
    return launch.run(tensor_worker, config.workers, args=(config,), backend=config.backend,
                      timeout=config.timeout, verbose=not config.quiet)[0]


def _check(config: TrainConfig) -> None:
    if config.model == "gpt":
        tensor_gpt.check_splittable(config.width, config.heads, config.sequence,
                                    config.workers, config.sequence_parallel)
        return
    if config.sequence_parallel:
        raise ConfigError(f"--sequence-parallel splits a transformer's windows: it works "
                          f"with --model gpt (got --model {config.model})")
    tensor_parallel.check_splittable(MODELS[config.model](), config.workers)


register(Strategy("tensor", train_tensor, "Megatron column/row split of each MLP block and, "
                  "for the GPT, of the attention by heads",
                  options=("sequence_parallel",), batch=WHOLE, check=_check))
