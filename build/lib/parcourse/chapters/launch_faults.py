"""Workers that fail on purpose, and calls with bad arguments (the errors appendix).

Each fault is a real failure of a real worker process — an exception, a kill by a
signal, a hang in a collective that a peer never joins — so the appendix and the tests
show what :func:`parcourse.launch.run` really reports, not a description of it.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import torch
import torch.distributed as dist

from .. import collectives, launch
from ..data_parallel import horovod as horovod_dp


def raise_on_rank_one(rank: int, world_size: int) -> int:
    """Rank 1 raises; rank 0 waits at a barrier that rank 1 never reaches."""
    if rank == 1:
        raise ValueError("boom from rank 1")
    dist.barrier()
    return rank


def kill_rank_one(rank: int, world_size: int) -> int:
    """Rank 1 dies from SIGKILL (as the out-of-memory killer would kill it)."""
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.barrier()
    return rank


def hang_on_rank_zero(rank: int, world_size: int) -> int:
    """Rank 0 never joins the barrier; rank 1 waits for it."""
    if rank == 0:
        time.sleep(3600)
    dist.barrier()
    return rank


def mismatched_all_reduce(rank: int, world_size: int) -> torch.Tensor:
    """Each rank all-reduces a tensor of a different size."""
    return collectives.all_reduce(torch.ones(10 + rank), "ring")


FAULTS = {
    "a worker raises an exception": raise_on_rank_one,
    "a worker is killed by a signal": kill_rank_one,
    "a worker hangs in a collective": hang_on_rank_zero,
    "tensors of different sizes in an all-reduce": mismatched_all_reduce,
}


def argument_errors() -> list[tuple[str, Exception]]:
    """Run calls with bad arguments; return (the call, the exception it raised)."""
    calls = {
        "launch.run(fn, 0)": lambda: launch.run(raise_on_rank_one, 0),
        "launch.run(fn, 2, timeout=0)": lambda: launch.run(raise_on_rank_one, 2, timeout=0),
        "launch.run(fn, 2, backend='mpi')": lambda: launch.run(raise_on_rank_one, 2,
                                                               backend="mpi"),
        "launch.run(fn, 2, args=(threading.Lock(),))": lambda: launch.run(
            raise_on_rank_one, 2, args=(threading.Lock(),)),
        "launch.choose_backend(4, 'nccl', gpus=1)": lambda: launch.choose_backend(4, "nccl",
                                                                                  gpus=1),
        "collectives.all_reduce(t, 'star')": lambda: collectives.all_reduce(torch.ones(1),
                                                                            "star"),
    }
    errors = []
    for call, thunk in calls.items():
        try:
            thunk()
        except Exception as err:
            errors.append((call, err))
    errors.append(("horovod_dp.require_horovod()  (with Horovod missing)",
                   _missing_horovod_error()))
    return errors


def _missing_horovod_error() -> Exception:
    real = horovod_dp.horovod_available
    horovod_dp.horovod_available = lambda: False  # as on a machine without Horovod
    try:
        horovod_dp.require_horovod()
    except Exception as err:
        return err
    finally:
        horovod_dp.horovod_available = real
    raise AssertionError("require_horovod did not raise")
