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

* spawned here (the usual case): K fresh processes. On CPU they talk through gloo and
  each uses ``max(1, cores // K)`` torch threads, so K workers never oversubscribe the
  machine; with ``backend="nccl"`` worker k drives GPU k. ``backend="auto"`` takes NCCL
  when there is one GPU per worker and gloo on CPU otherwise, and says which it chose;
* under ``torchrun`` (``RANK`` and ``WORLD_SIZE`` set): ``fn`` runs in this process on
  the process group torchrun describes, and the results are gathered from all ranks.

Failures are reported, never left hanging: a worker's exception is re-raised here as
:class:`WorkerError` with the rank and the worker's traceback, a worker killed by a
signal is named, and workers still running after ``timeout`` seconds are stopped with
:class:`WorkerTimeout`. In every case all workers are stopped before ``run`` returns.

Spawned workers import ``fn`` afresh, so it must live in an importable module (the
``parcourse`` package or a ``.py`` file), not in a notebook cell.

Spawned workers are reachable from this machine only: their rendezvous store and their
gloo or NCCL sockets listen on the loopback interface (:mod:`parcourse.loopback`).
"""

from __future__ import annotations

import ctypes
import multiprocessing.util
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from datetime import timedelta
from multiprocessing import connection, get_context
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from . import loopback
from .errors import ConfigError, MissingDependencyError, TrainingDiverged

BACKENDS = ("auto", "gloo", "nccl")
_HOST = loopback.HOST
_device = torch.device("cpu")
# Errors whose message is complete for the user: re-raised in the caller as they are,
# without the worker's traceback.
REPORTED = (ConfigError, MissingDependencyError, TrainingDiverged)
# What one worker costs in memory: a fresh Python with torch imported and a gloo group,
# measured as resident memory on Linux (torch 2.13, CPU): about 330 MiB; rounded up.
WORKER_BYTES = 400 << 20
SETTLE_SECONDS = 1.0  # after a failure, how long to wait for the other workers' reports
# The store and the process group of spawned workers time out this much after the
# launcher's own deadline, so that the launcher, which knows which workers never
# joined, is the one that reports a timeout.
LATER_SECONDS = 30.0
# How gloo says that the other end of a connection has gone (a peer failed or was stopped).
PEER_GONE = ("Connection reset by peer", "Connection closed by peer")


class WorkerError(RuntimeError):
    """A worker raised an exception or died; ``rank`` says which one."""

    def __init__(self, message: str, rank: int, remote_traceback: str = "",
                 peer_failure: bool = False):
        super().__init__(message)
        self.rank = rank
        self.remote_traceback = remote_traceback
        self.peer_failure = peer_failure  # a communication error, likely caused by another rank


class WorkerTimeout(TimeoutError):
    """Workers were still running when the timeout expired, and were stopped."""


def device() -> torch.device:
    """The device of the calling worker: ``cuda:k`` under NCCL, else the CPU."""
    return _device


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    """Torch threads each of ``workers`` processes gets: ``max(1, cores // workers)``."""
    return max(1, available_cores() // workers)


def under_torchrun() -> bool:
    """True when this process was started by torchrun (or another launcher setting RANK)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _count(n: int, noun: str) -> str:
    """``_count(1, "GPU")`` is "1 GPU", ``_count(2, "GPU")`` is "2 GPUs"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


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
                f"backend='nccl' needs one GPU per worker, but {_count(world_size, 'worker')} "
                f"{'was' if world_size == 1 else 'were'} asked for and {_count(gpus, 'GPU')} "
                f"{'is' if gpus == 1 else 'are'} available; use backend='gloo' to run the "
                f"workers as CPU processes, or ask for at most {_count(gpus, 'worker')}")
        return "nccl", "nccl was asked for"
    if gpus == 0:
        return "gloo", "no CUDA GPU found"
    if world_size <= gpus:
        return "nccl", f"{_count(gpus, 'GPU')} for {_count(world_size, 'worker')}"
    return "gloo", f"{_count(world_size, 'worker')} but only {_count(gpus, 'GPU')}"


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
    _check_importable(fn, args)
    warning = memory_warning(world_size)
    if warning:
        print(f"parcourse.launch: warning: {warning}", file=sys.stderr, flush=True)
    if verbose and backend == "auto":
        where = "GPU processes with nccl" if chosen == "nccl" else "CPU processes with gloo"
        print(f"parcourse.launch: {_count(world_size, 'worker')} as {where} ({reason})",
              flush=True)
    return _spawn(fn, world_size, args, chosen, timeout)


def _check_importable(fn: Callable, args: tuple) -> None:
    main = sys.modules.get("__main__")
    if getattr(fn, "__module__", None) == "__main__" and not hasattr(main, "__file__"):
        raise TypeError(
            f"{getattr(fn, '__qualname__', fn)!r} is defined in an interactive session, "
            f"but workers are fresh processes that must import it: move it into a .py "
            f"module (for example next to the notebook) and import it from there")
    try:
        pickle.dumps((fn, args))
    except Exception as err:
        raise TypeError(f"workers cannot receive {getattr(fn, '__qualname__', fn)!r} and its "
                        f"arguments: they must be "
                        f"picklable (a module-level function, not a lambda or closure): "
                        f"{err}") from None


def available_memory() -> int | None:
    """Bytes of memory available to new processes (Linux's MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_warning(world_size: int, available: int | None = None) -> str | None:
    """Why ``world_size`` workers may not fit this machine's memory (None if they fit)."""
    available = available_memory() if available is None else available
    need = world_size * WORKER_BYTES
    if available is None or need <= available:
        return None
    return (f"{world_size} workers need about {need / 2**30:.1f} GiB (each is a Python "
            f"process with torch, about {WORKER_BYTES >> 20} MiB) but this machine has "
            f"{available / 2**30:.1f} GiB available: expect workers to be killed for lack "
            f"of memory; use at most {max(1, available // WORKER_BYTES)} workers")


def _spawn(fn: Callable, world_size: int, args: tuple, backend: str, timeout: float) -> list:
    store = loopback.store(timeout + LATER_SECONDS)
    context = get_context("spawn")
    threads = threads_per_worker(world_size)
    processes, receivers, finished = [], [], False
    try:
        for rank in range(world_size):
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(
                target=_worker_main, name=f"parcourse-worker-{rank}",
                args=(fn, args, rank, world_size, backend, store.port, timeout, threads,
                      sender, os.getpid()))
            process.start()
            sender.close()
            processes.append(process)
            receivers.append(receiver)
        results = _collect(processes, receivers, timeout)
        finished = True
        return results
    finally:
        _stop(processes, finished)
        for receiver in receivers:
            receiver.close()
        del store


def _collect(processes: list, receivers: list, timeout: float) -> list:
    """Every worker's result in rank order, or the first failure as an exception.

    Each worker reports ``started`` (its Python is up and has imported torch), ``joined``
    (its process group is initialised), then its result or its error. A timeout names
    the ranks that never got that far; a failure waits :data:`SETTLE_SECONDS` for the
    other workers' reports, so a worker's own error beats its peers' "connection closed"
    and the lowest rank reports when several fail at once.
    """
    world_size = len(processes)
    results: dict[int, Any] = {}
    progress: dict[int, str] = {}   # rank → "started" or "joined"
    deadline = time.monotonic() + timeout
    while len(results) < world_size:
        remaining = deadline - time.monotonic()
        failures = _poll(processes, receivers, results, progress, max(0.0, remaining))
        if failures is None:
            raise WorkerTimeout(describe_timeout(world_size, results, progress, timeout))
        if failures:
            settle = time.monotonic() + SETTLE_SECONDS
            while len(results) + len(failures) < world_size and time.monotonic() < settle:
                more = _poll(processes, receivers, results, progress,
                             settle - time.monotonic(), skip={e.rank for e in failures})
                failures += more or []
            raise min(failures, key=_precedence)
    return [results[r] for r in range(world_size)]


def _precedence(err: Exception) -> tuple[int, int]:
    """Which failure to report: a complete message (say, a diverged loss) before a
    worker's own error, before a peer's "connection closed"; then the lowest rank."""
    if isinstance(err, REPORTED):
        return 0, err.rank if hasattr(err, "rank") else 0
    return (2 if err.peer_failure else 1), err.rank


def _poll(processes, receivers, results, progress, wait: float, skip=()) -> list | None:
    """Read what the pending workers sent within ``wait`` seconds: the failures seen (a
    list, perhaps empty), or None when nothing at all arrived."""
    pending = [r for r in range(len(processes)) if r not in results and r not in skip]
    ready = connection.wait([receivers[r] for r in pending] +
                            [processes[r].sentinel for r in pending], timeout=wait)
    if not ready:
        return None
    failures = []
    for rank in pending:
        if receivers[rank] in ready or receivers[rank].poll():
            try:
                status, payload = _receive(receivers[rank], rank, processes[rank],
                                           len(processes))
            except (WorkerError, *REPORTED) as err:
                failures.append(err)
                continue
            if status == "ok":
                results[rank] = payload
            else:
                progress[rank] = status
        elif processes[rank].sentinel in ready:
            processes[rank].join()
            failures.append(WorkerError(
                _death_message(rank, len(processes), processes[rank].exitcode), rank))
    return failures


def describe_timeout(world_size: int, results: dict, progress: dict, timeout: float) -> str:
    """Why a run timed out: which ranks never started (still importing torch), which
    waited for them in the rendezvous, or, when all had joined, a hang in a collective.
    ``results`` holds the finished ranks, ``progress`` maps a rank to "started" or
    "joined"."""
    pending = [r for r in range(world_size) if r not in results]
    unstarted = [r for r in pending if r not in progress]
    waiting = [r for r in pending if progress.get(r) == "started"]
    if unstarted or waiting:
        parts = []
        if unstarted:
            parts.append(f"{_ranks(unstarted)} had not started (a worker is a fresh Python "
                         f"that imports torch)")
        if waiting:
            parts.append(f"{_ranks(waiting)} {'were' if len(waiting) > 1 else 'was'} "
                         f"waiting for {'them' if unstarted else 'the others'} to join")
        return (f"the {world_size} workers did not all join within {timeout:g} s and were "
                f"stopped: {'; '.join(parts)}. This machine has "
                f"{_count(available_cores(), 'core')}: start fewer workers, or pass a larger "
                f"timeout (--timeout on the command line)")
    return (f"worker {_ranks(pending)} of {world_size} did not finish within {timeout:g} s "
            f"and {'were' if len(pending) > 1 else 'was'} stopped; a worker is probably "
            f"waiting in a collective that another worker never joined. If the work is "
            f"only slow, pass a larger timeout (--timeout on the command line)")


def _ranks(ranks: list[int]) -> str:
    """``[0, 1, 2, 5]`` is "ranks 0–2, 5"; ``[0, 1]`` is "ranks 0, 1"; ``[3]`` "rank 3"."""
    runs, start = [], ranks[0]
    for previous, current in zip(ranks, ranks[1:] + [None]):
        if current is None or current != previous + 1:
            runs.append(str(start) if start == previous else
                        f"{start}, {previous}" if previous == start + 1 else
                        f"{start}–{previous}")
            start = current
    return f"rank{'s' if len(ranks) > 1 else ''} {', '.join(runs)}"


def _receive(receiver, rank: int, process, world_size: int) -> tuple[str, Any]:
    try:
        status, payload = pickle.loads(receiver.recv_bytes())
    except EOFError:
        process.join(5)
        raise WorkerError(_death_message(rank, world_size, process.exitcode), rank) from None
    if status in ("ok", "started", "joined"):
        return status, payload
    if status == "reported":
        raise payload
    summary, remote_traceback, peer_failure = payload
    raise WorkerError(f"worker rank {rank} of {world_size} failed with {summary}\n\n"
                      f"Traceback from rank {rank}:\n{remote_traceback}", rank,
                      remote_traceback, peer_failure)


def _death_message(rank: int, world_size: int, exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        how = f"was killed by signal {signal.Signals(-exitcode).name}"
    else:
        how = f"exited with code {exitcode}"
    return (f"worker rank {rank} of {world_size} {how} before returning a result; its "
            f"own output (stderr) says why. Common causes: out of memory, a crash in native "
            f"code, or a script that calls launch.run outside `if __name__ == '__main__':`")


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
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def _die_with_parent(parent_pid: int) -> None:
    """Make sure a worker never outlives the notebook or script that launched it."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the kernel kills us with the parent
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(1.0)

    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def _worker_main(fn, args, rank, world_size, backend, port, timeout, threads, sender,
                 parent_pid) -> None:
    global _device
    _die_with_parent(parent_pid)
    torch.set_num_threads(threads)
    try:
        sender.send_bytes(pickle.dumps(("started", None)))
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
