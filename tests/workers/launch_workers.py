"""Worker functions for tests/distributed/test_launch.py (spawned workers must import them)."""

import os
import signal
import time

import torch
import torch.distributed as dist

from parcourse.chapters.launch_faults import hang_on_rank_zero, kill_rank_one, raise_on_rank_one  # noqa: F401


def rank_sum(rank, world_size, offset=0):
    x = torch.tensor([float(rank)])
    dist.all_reduce(x)
    return rank + offset, world_size, x.item(), dist.get_world_size()


def thread_count(rank, world_size):
    return torch.get_num_threads()


def report_pid_then_hang(rank, world_size, folder):
    with open(os.path.join(folder, f"worker{rank}.pid"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(3600)


def big_tensor(rank, world_size):
    return torch.full((1 << 20,), float(rank))


def make_a_semaphore(rank, world_size):
    import multiprocessing

    lock = multiprocessing.get_context("spawn").Lock()  # registered with the resource tracker
    globals()["kept_alive_until_exit"] = lock
    return rank


def diverge_at_step_three(rank, world_size):
    """Every rank sees a NaN loss at step 3 (rank 0 a little later than the others)."""
    from parcourse.errors import TrainingDiverged

    if rank == 0:
        time.sleep(0.3)
    raise TrainingDiverged(float("nan"), 3, 10, rank, 0.1)


def refuse_on_rank_one(rank, world_size):
    """Rank 1 refuses its configuration at once; rank 0 finishes a moment later."""
    from parcourse.errors import ConfigError

    if rank == 1:
        raise ConfigError("--layers 0: a GPT needs at least one block")
    time.sleep(0.5)
    return rank


def where_am_i(rank, world_size, module):
    """What this worker sees of its launcher: folder, a variable, an importable module,
    and the command line of its parent process."""
    import importlib

    import psutil

    return (os.getcwd(), os.environ.get("PARCOURSE_PROBE"),
            importlib.import_module(module).VALUE, " ".join(psutil.Process().parent().cmdline()))
