"""What the workers of :func:`parcourse.launch.run` report, and how the launcher tells
their failures apart (chapter 2; the errors appendix).

Each worker reports ``started`` (its Python is up and has imported torch), ``joined`` (its
process group is initialised), then its result or its error. From these the launcher
knows, within its timeout, which of three things happened: a worker that never started
(too many workers for the machine, or a timeout too short for a fresh Python), a
rendezvous that did not complete, or a hang in a collective; a worker's own error is
told from its peers' "connection closed", and an error whose message is complete for the
user (:data:`REPORTED`) is re-raised as it is. Before anything starts,
:func:`memory_warning` says when K workers cannot fit this machine's memory.
"""

from __future__ import annotations

import os
import pickle
import signal
import time
from multiprocessing import connection
from typing import Any


from .errors import ConfigError, MissingDependencyError, TrainingDiverged

# Errors whose message is complete for the user: re-raised in the caller as they are,
# without the worker's traceback.
REPORTED = (ConfigError, MissingDependencyError, TrainingDiverged)
# What one worker costs in memory: a fresh Python with torch imported and a gloo group,
# measured as resident memory on Linux (torch 2.13, CPU): about 330 MiB; rounded up.
WORKER_BYTES = 400 << 20
SETTLE_SECONDS = 1.0  # after a failure, how long to wait for the other workers' reports
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


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def count(n: int, noun: str) -> str:
    """``count(1, "GPU")`` is "1 GPU", ``count(2, "GPU")`` is "2 GPUs"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


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


def collect(processes: list, receivers: list, timeout: float, begun: float | None = None) -> list:
    """Every worker's result in rank order, or the first failure as an exception, within
    ``timeout`` seconds from ``begun`` (``time.monotonic()`` before the first worker
    was started; by default, now).

    Each worker reports ``started`` (its Python is up and has imported torch), ``joined``
    (its process group is initialised), then its result or its error. A timeout names
    the ranks that never got that far; a failure waits :data:`SETTLE_SECONDS` for the
    other workers' reports, so a worker's own error beats its peers' "connection closed"
    and the lowest rank reports when several fail at once.
    """
    world_size = len(processes)
    results: dict[int, Any] = {}
    progress: dict[int, str] = {}   # rank → "started" or "joined"
    deadline = (time.monotonic() if begun is None else begun) + timeout
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
        return 0, err.rank
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
                failures.append(_from_rank(err, rank))
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


def _from_rank(err: Exception, rank: int) -> Exception:
    """``err`` with the rank that raised it (a worker's ConfigError has none of its own:
    without it, the wait for the other workers' reports could not skip this one)."""
    if getattr(err, "rank", None) is None:
        err.rank = rank
    return err


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
                f"{count(available_cores(), 'core')}: start fewer workers, or pass a larger "
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
