"""Data parallelism over K workers started by :func:`parcourse.launch.run` or torchrun
(chapters 3–5): ``ddp`` (PyTorch's DistributedDataParallel), and the same algorithm
written out, ``dp-manual`` (one all-reduce after backward) and ``dp-bucketed`` (buckets
all-reduced while backward runs), from :mod:`parcourse.data_parallel.gradient_sync`.

Worker k computes the mean loss of its B_k samples. DDP averages the K gradients, which
is the gradient of the mean over all B samples when the shards are equal (K | B); the
hand-written versions back-propagate the local mean times B_k / B and *sum*, which is
exact for uneven shards too (chapter 4).
"""

from __future__ import annotations

from torch import nn

from .. import launch
from ..data_parallel import gradient_sync
from .adapters import Replica, cpu_state
from .config import TrainConfig
from ..mixed_precision import LossScaler
from .loop import make_optimizer, optimizer_step
from .registry import EQUAL, Strategy, register
from .worker import load_data_and_model, result, shard_loss, train_worker


def _ddp(model: nn.Module, config: TrainConfig, device):
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids), None


def _manual(model: nn.Module, config: TrainConfig, device):
    gradient_sync.broadcast_parameters(model)
    return model, gradient_sync.GradientAllReduce(model, config.allreduce)


def _bucketed(model: nn.Module, config: TrainConfig, device):
    gradient_sync.broadcast_parameters(model)
    return model, gradient_sync.BucketedGradientAllReduce(model, int(config.bucket_kb * 1024),
                                                          config.allreduce)


REPLICATE = {"ddp": _ddp, "dp-manual": _manual, "dp-bucketed": _bucketed}


def data_parallel_worker(rank: int, world_size: int, config: TrainConfig):
    """One data-parallel worker; rank 0 returns the result, the others ``None``."""
    device = launch.device()
    dataset, model = load_data_and_model(config, device)
    replica, sync = REPLICATE[config.strategy](model, config, device)
    optimizer = make_optimizer(config.optimizer, replica.parameters(), config.lr)
    scaler = LossScaler(config.precision)

    def inner_step(step: int) -> float:
        optimizer.zero_grad()
        loss = shard_loss(replica, dataset, config, step, rank, world_size, device,
                          scaler.scale, weighted=sync is not None)
        if sync is not None:
            sync.finish()
        optimizer_step(optimizer, scaler)
        return loss

    losses, times = train_worker(config, inner_step, Replica(model, optimizer, rank),
                                 rank=rank, world_size=world_size, device=device)
    if rank != 0:
        return None
    return result(config, cpu_state(model), losses, times, dataset,
                  communication_seconds=getattr(sync, "communication_seconds", 0.0),
                  overlap=getattr(sync, "overlap", 0.0))


def train_data_parallel(config: TrainConfig):
    """Data parallelism over ``config.workers`` workers (ddp, dp-manual or dp-bucketed)."""
    return launch.run(data_parallel_worker, config.workers, args=(config,),
                      backend=config.backend, timeout=config.timeout,
                      verbose=not config.quiet)[0]


register(Strategy("ddp", train_data_parallel, "PyTorch DistributedDataParallel",
                  options=("recompute", "precision"), batch=EQUAL, experts=True))
register(Strategy("dp-manual", train_data_parallel,
                  "one all-reduce of every gradient after backward (uneven shards weighted)",
                  options=("allreduce", "recompute", "precision"), experts=True))
register(Strategy("dp-bucketed", train_data_parallel,
                  "buckets of gradients all-reduced while backward runs",
                  options=("allreduce", "bucket_kb", "recompute", "precision"),
                  experts=True))
