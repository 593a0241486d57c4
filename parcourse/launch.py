"""Run one function on K workers, from a notebook, a script or ``torchrun`` (chapter 2).

``run(fn, K)`` calls ``fn(rank, world_size, *args)`` in K workers that share an
initialised ``torch.distributed`` process group, and returns the K return values in
rank order::

    def worker(rank, world_size):
        x = torch.tensor([float(rank)])
        dist.all_reduce(x)              # 0 + 1 + ... + (K-1)
        return x.item()

    launch.run(worker, 4)               # [6.0, 6.0, 6.0, 6.0]

Where the workers run:

* started here (the usual case): K fresh processes, forked from a server that has
  imported torch once (:mod:`parcourse.launch_start`), so a launch starts in
  milliseconds rather than a second per worker. On CPU they talk through gloo and
  each uses ``max(1, cores // K)`` torch threads, so K workers never oversubscribe the
  machine; with ``backend="nccl"`` worker k drives GPU k. ``backend="auto"`` takes NCCL
  when there is one GPU per worker and gloo on CPU otherwise, and says which it chose;
* under ``torchrun`` (``RANK`` and ``WORLD_SIZE`` set): ``fn`` runs in this process on
  the process group torchrun describes, and the results are gathered from all ranks.

Failures are reported, never left hanging: a worker's exception is re-raised here as
:class:`WorkerError` with the rank and the worker's traceback (or, for an error whose
message is complete, such as a diverged loss, as itself), a worker killed by a signal is
named, and workers still running after ``timeout`` seconds are stopped with
:class:`WorkerTimeout`, which says whether they never joined or hung in a collective
(:mod:`parcourse.launch_reports`). In every case all workers are stopped before ``run``
returns.

Spawned workers are fresh processes. ``fn`` and ``args`` reach them *by value*, with
cloudpickle (the serializer Ray, Dask and joblib use for the same purpose): a function
written in a notebook cell, a lambda or a closure runs on K processes as well as one
imported from a module (which travels by reference, by its import path). What cannot
travel is refused before any process starts: an open file, a lock, a socket — anything
that exists only in this process.

Spawned workers are reachable from this machine only: their rendezvous store and their
gloo or NCCL sockets listen on the loopback interface (:mod:`parcourse.loopback`).
"""

from __future__ import annotations

import multiprocessing.util
import os
import pickle
import signal
import sys
import time
import traceback
from datetime import timedelta
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from . import launch_start, loopback
from .launch_reports import (PEER_GONE, REPORTED, WorkerError, WorkerTimeout,  # noqa: F401
                             available_cores, collect, count, describe_timeout,
                             memory_warning)

BACKENDS = ("auto", "gloo", "nccl")
_HOST = loopback.HOST
_device = torch.device("cpu")
# The store and the process group of spawned workers time out this much after the
# launcher's own deadline, so that the launcher, which knows which workers never
# joined, is the one that reports a timeout.
LATER_SECONDS = 30.0
def device() -> torch.device:
    """The device of the calling worker: ``cuda:k`` under NCCL, else the CPU."""
    return _device


def threads_per_worker(workers: int) -> int:
    """Torch threads each of ``workers`` processes gets: ``max(1, cores // workers)``."""
    return max(1, available_cores() // workers)


def under_torchrun() -> bool:
    """True when this process was started by torchrun (or another launcher setting RANK)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def choose_backend(world_size: int, backend: str = "auto", gpus: int | None = None) -> tuple[str, str]:
    """Resolve ``backend`` for ``world_size`` workers; return it and the reason.

    NCCL needs one GPU per worker. ``auto`` therefore picks NCCL when
    ``world_size <= gpus`` and gloo (CPU processes) otherwise.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if gpus is None:
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if backend == "gloo":
        return "gloo", "gloo was asked for"
    if backend == "nccl":
        if gpus == 0:
            raise ValueError("backend='nccl' needs one GPU per worker, but no CUDA GPU is "
                             "available; use backend='gloo' to run the workers as CPU "
                             "processes")
        if world_size > gpus:
            raise ValueError(
                f"backend='nccl' needs one GPU per worker, but {count(world_size, 'worker')} "
                f"{'was' if world_size == 1 else 'were'} asked for and {count(gpus, 'GPU')} "
                f"{'is' if gpus == 1 else 'are'} available; use backend='gloo' to run the "
                f"workers as CPU processes, or ask for at most {count(gpus, 'worker')}")
        return "nccl", "nccl was asked for"
    if gpus == 0:
        return "gloo", "no CUDA GPU found"
    if world_size <= gpus:
        return "nccl", f"{count(gpus, 'GPU')} for {count(world_size, 'worker')}"
    return "gloo", f"{count(world_size, 'worker')} but only {count(gpus, 'GPU')}"


def run(fn: Callable[..., Any], world_size: int, args: Sequence[Any] = (),
        backend: str = "auto", timeout: float = 300.0, verbose: bool = True) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` workers; return results by rank."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an integer ≥ 1, got {world_size!r}")
    if not timeout or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    args = tuple(args)
    if under_torchrun():
        return _run_here_under_torchrun(fn, world_size, args, backend, timeout)
    chosen, reason = choose_backend(world_size, backend)
    payload = pack(fn, args)
    warning = memory_warning(world_size)
    if warning:
        print(f"parcourse.launch: warning: {warning}", file=sys.stderr, flush=True)
    if verbose and backend == "auto":
        where = "GPU processes with nccl" if chosen == "nccl" else "CPU processes with gloo"
        print(f"parcourse.launch: {count(world_size, 'worker')} as {where} ({reason})",
              flush=True)
    return _spawn(payload, world_size, chosen, timeout)


def pack(fn: Callable, args: tuple) -> bytes:
    """``(fn, args)`` as bytes for the workers: cloudpickle keeps importable functions and
    classes by reference and pickles those of ``__main__`` (a notebook, a script) and
    lambdas and closures by value. TypeError, before any process starts, for what cannot
    be shipped."""
    import cloudpickle

    try:
        return cloudpickle.dumps((fn, args))
    except Exception as err:
        raise TypeError(f"workers cannot receive {getattr(fn, '__qualname__', fn)!r} and its "
                        f"arguments: a worker is a fresh process, so they are shipped by value, "
                        f"and this failed ({err}); pass what the worker needs to build it "
                        f"(a path, not an open file; no locks, sockets or processes)") from None


def _spawn(payload: bytes, world_size: int, backend: str, timeout: float) -> list:
    store = loopback.store(timeout + LATER_SECONDS)
    context = launch_start.context()
    threads = threads_per_worker(world_size)
    state = launch_start.snapshot()
    alive, alive_writer = context.Pipe(duplex=False)  # only this process writes: see watch()
    processes, receivers, finished = [], [], False
    begun = time.monotonic()  # the timeout counts the start (a first launch starts the server)
    try:
        for rank in range(world_size):
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(
                target=_worker_main, name=f"parcourse-worker-{rank}",
                args=(payload, rank, world_size, backend, store.port, timeout, threads,
                      sender, alive, state))
            process.start()
            sender.close()
            processes.append(process)
            receivers.append(receiver)
        alive.close()
        results = collect(processes, receivers, timeout, begun)
        finished = True
        return results
    finally:
        _stop(processes, finished)
        for receiver in receivers:
            receiver.close()
        alive.close()
        alive_writer.close()  # after _stop: finished workers may still be cleaning up
        del store


def _stop(processes: list, finished: bool, grace: float = 5.0) -> None:
    """End every worker: wait up to ``grace`` seconds for those that ``finished`` to exit
    by themselves (so their clean-up runs), then terminate, then kill what remains."""
    deadline = time.monotonic() + grace
    if finished:
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
            try:  # a stopped (SIGSTOP, frozen) worker acts on SIGTERM only once it runs
                os.kill(process.pid, signal.SIGCONT)
            except (ProcessLookupError, AttributeError):
                pass
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def _worker_main(payload, rank, world_size, backend, port, timeout, threads, sender, alive,
                 state) -> None:
    global _device
    launch_start.watch(alive)
    launch_start.adopt(state)
    torch.set_num_threads(threads)
    try:
        sender.send_bytes(pickle.dumps(("started", None)))
        fn, args = pickle.loads(payload)  # what pack() wrote (cloudpickle's output loads so)
        if backend == "nccl":
            torch.cuda.set_device(rank)
            _device = torch.device("cuda", rank)
        os.environ.update(loopback.settings(os.environ))
        later = timedelta(seconds=timeout + LATER_SECONDS)
        store = dist.TCPStore(_HOST, port, is_master=False, timeout=later)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                timeout=later)
        sender.send_bytes(pickle.dumps(("joined", None)))
        message = pickle.dumps(("ok", fn(rank, world_size, *args)))
    except BaseException as err:  # report everything, KeyboardInterrupt included
        if isinstance(err, REPORTED):
            report = ("reported", err)
        else:
            summary = f"{type(err).__name__}: {err}".strip()
            peer_failure = (isinstance(err, getattr(dist, "DistError", ()))
                            or any(s in str(err) for s in PEER_GONE))
            report = ("error", (summary, traceback.format_exc(), peer_failure))
        sender.send_bytes(pickle.dumps(report))
        sender.close()
        multiprocessing.util._run_finalizers(0)  # release semaphores (tqdm's lock) …
        os._exit(1)  # … but skip the orderly shutdown: peers may be stuck in a collective
    sender.send_bytes(message)
    sender.close()
    dist.destroy_process_group()


def _run_here_under_torchrun(fn: Callable, world_size: int, args: tuple, backend: str,
                             timeout: float) -> list:
    global _device
    env_world = int(os.environ["WORLD_SIZE"])
    if world_size != env_world:
        raise ValueError(f"{world_size} workers were asked for, but torchrun started "
                         f"{env_world} processes (WORLD_SIZE={env_world}): make the two agree")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", env_world))
    chosen, _ = choose_backend(local_world, backend)
    if chosen == "nccl":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        _device = torch.device("cuda", local_rank)
    torch.set_num_threads(threads_per_worker(local_world))
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(chosen, store=_torchrun_store(timeout), rank=int(os.environ["RANK"]),
                                world_size=env_world, timeout=timedelta(seconds=timeout))
    try:
        result = fn(dist.get_rank(), world_size, *args)
        gathered: list = [None] * world_size
        dist.all_gather_object(gathered, result)
        return gathered
    finally:
        if created:
            dist.destroy_process_group()


def _torchrun_store(timeout: float) -> dist.Store:
    """The rendezvous store of this torchrun attempt, under a prefix of its own.

    After ``torchrun --max-restarts`` restarts the workers, the store still holds the
    addresses the killed attempt's workers published; without a per-attempt prefix the
    new workers can read those and wait for a dead peer (connection refused).
    """
    use_agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          is_master=not use_agent_store and os.environ["RANK"] == "0",
                          timeout=timedelta(seconds=timeout))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"parcourse/attempt-{attempt}", store)
