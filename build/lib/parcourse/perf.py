"""Measuring and predicting speed: timers, thread scaling, Amdahl and Gustafson.

Chapter 1 times the same operation serially (one thread) and in parallel (all cores)
with :func:`measure` and :func:`thread_scaling`; chapter 2 sets the measurement next to
the two classic laws of speedup; chapter 5 reuses the timers for its benchmarks.

* :func:`measure` reports the **median** wall time of ``repeats`` calls after
  ``warmup`` untimed calls: the median ignores the occasional slow run caused by
  another program on the machine. On a GPU, work is asynchronous, so pass
  ``device="cuda"`` and each call is bracketed by ``torch.cuda.synchronize()``.
* **Amdahl's law** (Amdahl, 1967): if a fraction ``p`` of the serial run time can be
  spread over ``K`` workers and the rest cannot, the speedup of a *fixed* problem is
  ``S(K) = 1 / ((1 - p) + p / K)``, which never exceeds ``1 / (1 - p)``.
* **Gustafson's law** (Gustafson, 1988): if the problem *grows* with ``K`` so that each
  worker keeps the same amount of parallel work, the scaled speedup is
  ``S(K) = (1 - p) + p K``, where ``p`` is the parallel fraction of the run on K workers.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Iterable

import numpy as np
import torch


def measure(fn: Callable[[], object], repeats: int = 5, warmup: int = 1,
            device: str | torch.device | None = None) -> float:
    """Median wall time in seconds of ``repeats`` calls of ``fn()``, after ``warmup`` calls.

    With a CUDA ``device`` the GPU is synchronised before the clock starts and before
    it stops, so the time covers the kernels ``fn`` launched, not just their launch.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer ≥ 1, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an integer ≥ 0, got {warmup!r}")
    if not callable(fn):
        raise ValueError(f"fn must be callable with no arguments, got {fn!r}")
    cuda = device is not None and torch.device(device).type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def thread_scaling(fn: Callable[[], object], threads_list: Iterable[int], repeats: int = 5,
                   warmup: int = 1) -> dict[int, float]:
    """Median time of ``fn()`` with each torch intra-op thread count in ``threads_list``.

    Returns ``{threads: seconds}``. The caller's thread count is restored afterwards,
    even if ``fn`` raises.
    """
    threads_list = list(threads_list)
    if not threads_list:
        raise ValueError("threads_list is empty: give at least one thread count, e.g. [1, 2]")
    for threads in threads_list:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"thread counts must be integers ≥ 1, got {threads!r}")
    before = torch.get_num_threads()
    try:
        times = {}
        for threads in threads_list:
            torch.set_num_threads(threads)
            times[threads] = measure(fn, repeats=repeats, warmup=warmup)
        return times
    finally:
        torch.set_num_threads(before)


def thread_counts(cores: int) -> list[int]:
    """1, 2, 4, … up to ``cores``, with ``cores`` itself always last: the counts to sweep."""
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
        raise ValueError(f"cores must be an integer ≥ 1, got {cores!r}")
    counts, k = [], 1
    while k < cores:
        counts.append(k)
        k *= 2
    return counts + [cores]


def _check_fraction(p):
    p = np.asarray(p, dtype=float)
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"the parallel fraction p must lie in [0, 1], got {p}")
    return p


def _check_workers(k):
    k = np.asarray(k, dtype=float)
    if np.any(k < 1):
        raise ValueError(f"the number of workers K must be ≥ 1, got {k}")
    return k


def amdahl_speedup(p, k):
    """Amdahl's law ``S(K) = 1 / ((1 - p) + p / K)``: fixed problem, parallel fraction ``p``.

    ``p`` and ``k`` may be numbers or arrays (they broadcast); returns a float or array.
    """
    p, k = _check_fraction(p), _check_workers(k)
    speedup = 1.0 / ((1.0 - p) + p / k)
    return float(speedup) if speedup.ndim == 0 else speedup


def gustafson_speedup(p, k):
    """Gustafson's law ``S(K) = (1 - p) + p K``: the problem grows with the K workers."""
    p, k = _check_fraction(p), _check_workers(k)
    speedup = (1.0 - p) + p * k
    return float(speedup) if speedup.ndim == 0 else speedup


def amdahl_fraction(speedup: float, k: float) -> float:
    """The parallel fraction ``p`` that makes Amdahl's law give ``speedup`` on ``k`` workers.

    Solving ``S = 1 / ((1 - p) + p / K)`` for ``p``: ``p = (1 - 1/S) / (1 - 1/K)``. A
    measured speedup can come out slightly above ``K`` or below 1 (noise, caches), so
    the result is returned as is, possibly outside [0, 1], for the caller to judge.
    """
    if not k > 1:
        raise ValueError(f"a parallel fraction needs more than one worker, got K = {k}")
    if not speedup > 0:
        raise ValueError(f"a speedup must be positive, got {speedup}")
    return (1.0 - 1.0 / speedup) / (1.0 - 1.0 / k)


def fit_amdahl(speedups) -> float:
    """The parallel fraction ``p`` of Amdahl's law that best fits a measured speedup curve.

    ``speedups`` maps worker counts ``K`` to measured speedups ``S(K)`` (``K = 1`` may
    be included; it carries no information). Amdahl's law is linear in ``p`` when
    written for the normalised run time, ``1/S = 1 − p·(1 − 1/K)``, so the least-squares
    fit of the run times is closed-form:

        p = Σ_K (1 − 1/S_K)(1 − 1/K) / Σ_K (1 − 1/K)².

    With one point ``K > 1`` this is :func:`amdahl_fraction`. As there, the result is
    returned as is, possibly outside [0, 1], for the caller to judge.
    """
    points = [(float(k), float(s)) for k, s in dict(speedups).items() if float(k) != 1.0]
    if not points:
        raise ValueError("fitting Amdahl's law needs a speedup measured on more than one "
                         f"worker, got only {dict(speedups)}")
    for k, s in points:
        if not k > 1 or not s > 0:
            raise ValueError(f"worker counts must be ≥ 1 and speedups positive, got K = {k}, "
                             f"S = {s}")
    num = sum((1 - 1 / s) * (1 - 1 / k) for k, s in points)
    den = sum((1 - 1 / k) ** 2 for k, _ in points)
    return num / den
