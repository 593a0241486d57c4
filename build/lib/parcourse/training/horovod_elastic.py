"""Fault-tolerant data parallelism with Horovod's elastic API (chapter 9, "What happens
when a worker fails, and how do I resume?").

Under ``horovodrun --min-np 1 --host-discovery-script …``, Horovod restarts nothing: when
a worker dies, the survivors' next collective raises ``HorovodInternalError``; each rolls
its training state back to the last ``state.commit()`` (parameters, optimizer state, step,
losses — kept in memory, no file), the workers agree on the new world size, rank 0
broadcasts its state, and training goes on with fewer workers. New hosts that the
discovery script reports are added the same way.

For the result not to depend on how many workers there are at each step, the loss is
weighted as in chapter 4: worker k back-propagates (B_k/B) · (its mean loss) over its
shard of the global batch, and the optimizer *sums* the gradients (``op=hvd.Sum``), so
every step is the full-batch step whatever K is at that moment. A run that loses a worker
therefore ends with the parameters of an uninterrupted run (to float rounding).

Horovod blacklists a *host* when a worker on it fails. On one machine, list it under two
names in the discovery script (``localhost:1`` and ``127.0.0.1:1``), or the only host is
blacklisted and the job stops ("blacklisted slots count == 2 -> stop running").

    printf '#!/bin/sh\\necho localhost:1\\necho 127.0.0.1:1\\n' > hosts.sh; chmod +x hosts.sh
    horovodrun -np 2 --min-np 1 --max-np 2 --host-discovery-script ./hosts.sh \\
        --network-interface lo --gloo python -m parcourse train --strategy horovod-elastic
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import replace

import torch

from .. import data as datasets
from ..data_parallel import horovod as hvd_dp
from ..errors import ConfigError
from ..launch import threads_per_worker
from .adapters import cpu_state
from .config import TrainConfig
from .loop import make_optimizer, replica_loss, run_loop
from .registry import WEIGHTED, Strategy, register
from .worker import batch_of, load_data_and_model, result

COMMIT_EVERY = 10  # steps between two commits (in memory: a copy of the state)
FAULT_DRILL = "PARCOURSE_KILL_AT"  # "RANK:STEP": that worker kills itself (a fault drill)


def drill_step() -> int | None:
    """The step at which this worker kills itself, if a fault drill names it.

    ``PARCOURSE_KILL_AT=1:25`` makes the worker started as rank 1 send itself SIGKILL
    when it reaches step 25: the tests and chapter 9 use it to fail a worker at a known
    point, which a kill from outside cannot do.
    """
    value = os.environ.get(FAULT_DRILL)
    if not value:
        return None
    rank, step = value.split(":")
    return int(step) if os.environ.get("HOROVOD_RANK") == rank else None


def share_cores(hvd) -> None:
    """Give this process its share of the machine's cores: cores // (workers on this host).

    Horovod's ``local_size`` counts the slots of a host *name*; one machine listed under
    two names (see above) has two workers but a local size of 1. Counting the workers
    by host name avoids oversubscribing the cores, and gives each worker the thread
    count (hence the float rounding) of the same worker count elsewhere in the book.
    """
    import socket

    hosts = hvd.allgather_object(socket.gethostname())
    torch.set_num_threads(threads_per_worker(hosts.count(socket.gethostname())))


def elastic_worker(config: TrainConfig):
    """Train ``config`` in this elastic Horovod process; the final rank 0 returns a
    TrainResult, the others None."""
    import horovod.torch as hvd

    hvd.init()
    device = torch.device("cpu")
    if torch.cuda.is_available():
        torch.cuda.set_device(hvd.local_rank())
        device = torch.device("cuda", hvd.local_rank())
    else:
        share_cores(hvd)
    dataset, model = load_data_and_model(config, device)
    optimizer = hvd_dp.distributed_optimizer(
        make_optimizer(config.optimizer, model.parameters(), config.lr), model, average=False)
    kill_at = drill_step()

    def announce():
        if device.type == "cpu":
            share_cores(hvd)
        if hvd.rank() == 0 and not config.quiet:
            print(f"horovod-elastic: the workers changed, now {hvd.size()}; continuing "
                  f"from the last commit, step {state.step}", file=sys.stderr, flush=True)

    def inner_step(step: int) -> float:
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        mine = datasets.shard(batch_of(dataset, config, step), hvd.rank(), hvd.size())
        optimizer.zero_grad()
        share = len(mine) / config.batch_size
        loss = replica_loss(model, dataset.train_x[mine].to(device),
                            dataset.train_y[mine].to(device), 1, share)
        optimizer.step()
        return loss * share

    def after_step(step: int, loss: float) -> None:
        state.losses = state.losses + [loss]  # a new list: a commit keeps the old one
        state.step = step + 1
        if state.step % COMMIT_EVERY == 0:
            state.commit()

    @hvd.elastic.run
    def train(state):
        run_loop(config, inner_step, start=state.step, rank=hvd.rank(),
                        world_size=hvd.size(), device=device,
                        sum_over_workers=hvd_dp.sum_over_workers, after_step=after_step)

    hvd_dp.fresh_state(optimizer)  # else sync()'s broadcast would count an Adam step
    state = hvd.elastic.TorchState(model, optimizer, step=0, losses=[])
    state.register_reset_callbacks([announce])
    begin = time.perf_counter()
    train(state)
    seconds = time.perf_counter() - begin
    outcome = None
    if hvd.rank() == 0:
        outcome = result(replace(config, workers=hvd.size()), cpu_state(model), state.losses,
                         seconds, dataset)
    hvd.shutdown()
    return outcome


def train_elastic(config: TrainConfig):
    """Run :func:`elastic_worker` here; only under an elastic ``horovodrun``."""
    hvd_dp.require_horovod()
    if not hvd_dp.under_horovodrun():
        raise ConfigError("--strategy horovod-elastic runs under an elastic horovodrun: "
                          "horovodrun -np 2 --min-np 1 --host-discovery-script HOSTS.sh --gloo "
                          "python -m parcourse train --strategy horovod-elastic (see "
                          "parcourse/training/horovod_elastic.py for a one-machine HOSTS.sh)")
    return elastic_worker(config)


def _check(config: TrainConfig) -> None:
    if config.checkpoint or config.resume:
        raise ConfigError("--checkpoint and --resume do not apply to --strategy "
                          "horovod-elastic, which commits its state in memory every 10 steps")


register(Strategy("horovod-elastic", train_elastic,
                  "Horovod elastic: survivors of a dead worker roll back and go on",
                  batch=WEIGHTED, check=_check))
