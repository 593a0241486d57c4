"""``--strategy torch-zero1``: ZeRO stage 1 with PyTorch's own engine — DDP plus
``torch.distributed.optim.ZeroRedundancyOptimizer`` (chapter 8; Rajbhandari et al., 2020).

Every worker holds the whole model and, after DDP's all-reduce, the whole gradient; the
optimizer state is split: ``ZeroRedundancyOptimizer`` gives each worker whole parameter
tensors (largest first, each to the least-loaded worker), so it keeps Adam's moments of
those only, steps them, and broadcasts the updated tensors to the others. With 3 workers
the simple model's 64×784 weight goes to one worker, its 64×64 weight to another and the
four small tensors to the third: shards only as even as the tensor sizes allow
(:mod:`parcourse.chapters.memory` measures it).

The batch is split as dp-manual splits it (weighted shards, any B ≥ K): worker k
back-propagates its local mean × B_k / B and DDP's all-reduce *sums*, through a
communication hook in place of DDP's default one, which divides by K (right only for
equal shards). Checkpoints hold the unsplit model and the optimizer state gathered on
rank 0 (:class:`~parcourse.training.adapters.ShardedOptimizer`).
"""

from __future__ import annotations

import torch.distributed as dist
from torch import nn

from .. import launch, mixed_precision
from .adapters import ShardedOptimizer, cpu_state
from .config import TrainConfig
from .loop import OPTIMIZER_CLASSES, optimizer_step
from .registry import WEIGHTED, Strategy, register
from .worker import load_data_and_model, result, shard_loss, train_worker


def sum_hook(_state, bucket):
    """DDP communication hook: all-reduce a bucket (``dist.GradBucket``) of gradients and
    keep the *sum*. (Unannotated: DDP checks annotations as objects, and this module's
    are strings.)"""
    work = dist.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda future: future.value()[0])


def torch_zero_worker(rank: int, world_size: int, config: TrainConfig):
    """One worker; rank 0 returns the result, the others None."""
    from torch.distributed.optim import ZeroRedundancyOptimizer  # on use: it builds TorchScript

    device = launch.device()
    dataset, model = load_data_and_model(config, device)
    replica = nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    replica.register_comm_hook(None, sum_hook)
    optimizer = ZeroRedundancyOptimizer(replica.parameters(),
                                        optimizer_class=OPTIMIZER_CLASSES[config.optimizer],
                                        lr=config.lr)
    scaler = mixed_precision.LossScaler(config.precision)

    def inner_step(step: int) -> float:
        optimizer.zero_grad()
        loss = shard_loss(replica, dataset, config, step, rank, world_size, device,
                          scaler.scale)
        optimizer_step(optimizer, scaler)
        return loss

    losses, times = train_worker(config, inner_step, ShardedOptimizer(model, optimizer, rank),
                                 rank=rank, world_size=world_size, device=device)
    return result(config, cpu_state(model), losses, times, dataset) if rank == 0 else None


def train_torch_zero(config: TrainConfig):
    """DDP + ZeroRedundancyOptimizer over ``config.workers`` workers; rank 0's result."""
    return launch.run(torch_zero_worker, config.workers, args=(config,),
                      backend=config.backend, timeout=config.timeout,
                      verbose=not config.quiet)[0]


register(Strategy("torch-zero1", train_torch_zero, "PyTorch DDP + ZeroRedundancyOptimizer: "
                  "optimizer state sharded (ZeRO-1)", options=("recompute", "precision"),
                  batch=WEIGHTED, experts=True))
