"""``--strategy horovod``: data parallelism with Horovod's ``DistributedOptimizer``
(chapter 5; the mechanism and the source document's omissions are in
:mod:`parcourse.data_parallel.horovod`). Started with ``horovod.run`` from a notebook or
the command line (on the loopback interface, :func:`parcourse.loopback.horovod_run`), or
under ``horovodrun``; ``--fp16-allreduce`` compresses the gradients to float16."""

from __future__ import annotations

from .. import data as datasets
from .. import loopback
from ..data_parallel import horovod as hvd_dp
from ..errors import TrainingDiverged
from .adapters import Replica, cpu_state
from .config import TrainConfig
from .loop import make_optimizer, replica_loss
from .registry import EQUAL, Strategy, register
from .worker import batch_of, load_data_and_model, result, train_worker


def horovod_worker(config: TrainConfig):
    """Train ``config`` in this Horovod process; rank 0 returns a TrainResult. A diverged
    run is returned (not raised), so that ``horovod.run`` does not bury it."""
    hvd, device = hvd_dp.init()
    rank, world_size = hvd.rank(), hvd.size()
    dataset, model = load_data_and_model(config, device)
    optimizer = hvd_dp.distributed_optimizer(
        make_optimizer(config.optimizer, model.parameters(), config.lr), model,
        fp16=config.fp16_allreduce)
    hvd_dp.start_equal(model, optimizer)
    share = datasets.shard_sizes(config.batch_size, world_size)[rank] / config.batch_size

    def inner_step(step: int) -> float:
        mine = datasets.shard(batch_of(dataset, config, step), rank, world_size)
        optimizer.zero_grad()
        loss = replica_loss(model, dataset.train_x[mine].to(device),
                            dataset.train_y[mine].to(device), 1, 1.0)
        optimizer.step()
        return loss * share

    try:
        losses, times = train_worker(config, inner_step, Replica(model, optimizer, rank),
                                     rank=rank, world_size=world_size,
                                     sum_over_workers=hvd_dp.sum_over_workers)
    except TrainingDiverged as err:
        hvd.shutdown()
        return err
    outcome = result(config, cpu_state(model), losses, times, dataset) if rank == 0 else None
    hvd.shutdown()
    return outcome


def train_horovod(config: TrainConfig):
    """Horovod over ``config.workers`` processes; rank 0's result."""
    hvd_dp.require_horovod()
    if hvd_dp.under_horovodrun():
        outcomes = [horovod_worker(config)]
    else:
        outcomes = loopback.horovod_run(horovod_worker, (config,), config.workers)
    diverged = [o for o in outcomes if isinstance(o, TrainingDiverged)]
    if diverged:
        raise diverged[0]
    return outcomes[0]


register(Strategy("horovod", train_horovod, "Horovod's DistributedOptimizer (horovod.run or "
                  "horovodrun)", options=("fp16_allreduce",), batch=EQUAL, experts=True))
