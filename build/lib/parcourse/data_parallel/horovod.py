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
   inside the training loop (:mod:`parcourse.training.worker`), so nothing needs copying and the call is made only
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

This module holds the mechanism (what a Horovod worker calls); the strategy ``horovod``
that trains with it is :mod:`parcourse.training.horovod`. Run it from a notebook
(``horovod.run`` starts K processes over Gloo, :func:`parcourse.loopback.horovod_run`)
or from the shell: ``horovodrun -np 2 -H localhost:2 --gloo python -m parcourse train
--strategy horovod``.
"""

from __future__ import annotations

import os

import torch

from ..errors import MissingDependencyError
from ..launch import threads_per_worker


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
            "Horovod is not installed: run `python -m parcourse install-horovod` (it builds "
            "Horovod 0.28.1 for PyTorch with Gloo in a few minutes; `make test` does this), "
            "or use --strategy ddp, "
            "dp-manual or dp-bucketed, which need only PyTorch")


def under_horovodrun() -> bool:
    """True when this process was started by horovodrun or horovod.run."""
    return "HOROVOD_RANK" in os.environ


def init():
    """``hvd.init()``, then pin this process's device by local rank (or give it its share
    of the CPU cores); returns ``(hvd, device)``."""
    import horovod.torch as hvd

    hvd.init()
    if torch.cuda.is_available():
        torch.cuda.set_device(hvd.local_rank())
        return hvd, torch.device("cuda", hvd.local_rank())
    torch.set_num_threads(threads_per_worker(hvd.local_size()))
    return hvd, torch.device("cpu")


def distributed_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module,
                          average: bool = True, fp16: bool = False):
    """``hvd.DistributedOptimizer`` over ``model``'s parameters: gradients averaged (or
    summed) during ``backward()``, sent as float16 with ``fp16``."""
    import horovod.torch as hvd

    return hvd.DistributedOptimizer(
        optimizer, named_parameters=model.named_parameters(),
        op=hvd.Average if average else hvd.Sum,
        compression=hvd.Compression.fp16 if fp16 else hvd.Compression.none)


def start_equal(model: torch.nn.Module, optimizer) -> None:
    """Rank 0's parameters to every worker, and its optimizer state where there is one
    (see point 2 above: never for a fresh optimizer)."""
    import horovod.torch as hvd

    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    if optimizer.state_dict()["state"]:
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)


def fresh_state(optimizer: torch.optim.Optimizer) -> None:
    """Give a fresh Adam the state its first step would create (step 0, zero moments).

    Horovod's elastic ``state.sync()`` calls ``broadcast_optimizer_state`` at every start;
    given an empty state, that runs a step with zero gradients (point 2 above), which Adam
    counts as step 1. With this state there is nothing to create: the first real step is
    step 1, as in one process. SGD needs nothing (its zero step moves nothing, and its
    momentum buffer starts from the first real gradient either way)."""
    if optimizer.state or not isinstance(optimizer, torch.optim.Adam):
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            optimizer.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                  "exp_avg_sq": torch.zeros_like(p)}


def sum_over_workers(tensor: torch.Tensor) -> None:
    """Sum ``tensor`` over the Horovod workers, in place."""
    import horovod.torch as hvd

    tensor.copy_(hvd.allreduce(tensor, op=hvd.Sum, name="sum_over_workers"))
