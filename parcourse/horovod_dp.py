"""Data parallelism with Horovod (chapter 5, the source document's §5.2.1 done right).

Horovod (Sergeev & Del Balso, 2018, arXiv:1802.05799; from Uber, 2017) does data
parallelism: every worker holds the whole model, and ``hvd.DistributedOptimizer``
all-reduces (averages) the gradients during ``backward()`` before each ``step()``. The
four things the source document's code leaves out, and this module does:

1. ``hvd.DistributedOptimizer`` wraps the optimizer — without it nothing is averaged and
   the K replicas drift apart;
2. ``hvd.broadcast_parameters(model.state_dict(), root_rank=0)`` starts every replica
   equal, and ``hvd.broadcast_optimizer_state(optimizer, root_rank=0)`` copies rank 0's
   optimizer state — needed after resuming from a checkpoint, and harmful before the
   first step: given an empty state, Horovod 0.28.1 first runs a step with zero
   gradients to create one, which for Adam counts as step 1 and changes the bias
   correction of every later step (the book measures the difference). Here every rank
   starts from the same empty state, or (with ``--resume``) loads the same checkpoint
   inside :func:`parcourse.train.fit`, so nothing needs copying and the call is made only
   for an optimizer that already holds state — as in a program that restores its
   checkpoint on rank 0 alone;
3. each worker trains on its own shard of every global batch (``hvd.rank()``);
4. the learning rate: with a fixed *global* batch B split over K workers (what this book
   does, so that results match one worker) the averaged gradient is the full-batch
   gradient and the learning rate stays as it is. If instead each worker keeps its own
   batch b, the global batch grows to K·b, and the usual rule is to scale the learning
   rate by K, with a warm-up (Goyal et al., 2017).

On a GPU, each process pins its device by local rank: ``torch.cuda.set_device(hvd.local_rank())``.
``fp16=True`` compresses gradients to float16 on the wire (``hvd.Compression.fp16``):
half the traffic, and a rounding error in every averaged gradient.

Run it from a notebook with :func:`train_horovod` (``horovod.run`` starts K processes
over Gloo) or from the shell: ``horovodrun -np 2 -H localhost:2 --gloo python -m
parcourse train --strategy horovod``.
"""

from __future__ import annotations

import os

import torch

from . import loopback
from .errors import MissingDependencyError, TrainingDiverged


def horovod_available() -> bool:
    """True when ``horovod.torch`` imports."""
    try:
        import horovod.torch  # noqa: F401
    except ImportError:
        return False
    return True


def require_horovod() -> None:
    """Raise MissingDependencyError, saying how to install Horovod, when it is missing."""
    if not horovod_available():
        raise MissingDependencyError(
            "Horovod is not installed: run scripts/install-horovod.sh (it builds Horovod "
            "0.28.1 for PyTorch with Gloo; `make test` does this), or use --strategy ddp, "
            "dp-manual or dp-bucketed, which need only PyTorch")


def under_horovodrun() -> bool:
    """True when this process was started by horovodrun or horovod.run."""
    return "HOROVOD_RANK" in os.environ


def horovod_worker(config, fp16: bool = False):
    """Train ``config`` in this Horovod process; rank 0 returns a TrainResult."""
    import horovod.torch as hvd

    from .launch import threads_per_worker
    from .train import TrainResult, _cpu_state, accuracy, fit, load_data_and_model, make_optimizer

    hvd.init()
    rank, world_size = hvd.rank(), hvd.size()
    if torch.cuda.is_available():
        torch.cuda.set_device(hvd.local_rank())
        device = torch.device("cuda", hvd.local_rank())
    else:
        device = torch.device("cpu")
        torch.set_num_threads(threads_per_worker(hvd.local_size()))
    dataset, model = load_data_and_model(config, device)
    optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr)
    optimizer = hvd.DistributedOptimizer(
        optimizer, named_parameters=model.named_parameters(), op=hvd.Average,
        compression=hvd.Compression.fp16 if fp16 else hvd.Compression.none)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    if optimizer.state_dict()["state"]:  # only state that exists is copied (see above)
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    def sum_over_workers(tensor: torch.Tensor) -> None:
        tensor.copy_(hvd.allreduce(tensor, op=hvd.Sum, name="losses"))

    try:
        losses, seconds = fit(model, config, dataset, device, rank, world_size,
                              optimizer=optimizer, sum_over_workers=sum_over_workers)
    except TrainingDiverged as err:  # returned, so that horovod.run does not bury it
        hvd.shutdown()
        return err
    result = None
    if rank == 0:
        result = TrainResult(config, _cpu_state(model), losses, seconds,
                             accuracy(model, dataset.test_x, dataset.test_y, device))
    hvd.shutdown()
    return result


def train_horovod(config, fp16: bool = False):
    """Data parallelism with Horovod over ``config.workers`` processes; rank 0's result."""
    require_horovod()
    if under_horovodrun():
        return horovod_worker(config, fp16)
    results = loopback.horovod_run(horovod_worker, (config, fp16), config.workers)
    diverged = [r for r in results if isinstance(r, TrainingDiverged)]
    if diverged:
        raise diverged[0]
    return results[0]
