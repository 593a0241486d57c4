"""The roofline of this machine, measured: bandwidth, peak FLOP/s, thread scaling (chapter 5,
"From CPU to GPU: kernels, rooflines and measured performance").

* **Memory bandwidth**, STREAM-style (McCalpin, 1995): on tensors much larger than the
  caches, *copy* ``b = a`` moves ``2 n s`` bytes and *triad* ``a = b + q c`` moves
  ``3 n s`` bytes (``s`` bytes per element); GB/s = bytes moved / time.
* **Peak FLOP/s**: a square float32 matrix product of size ``n`` does ``2 n³`` FLOP;
  FLOP/s = ``2 n³`` / time, the best over two sizes (``n/2`` and ``n``). It is the best
  this machine's torch reaches, not a datasheet.
* **The roofline** (Williams, Waterman & Patterson, 2009): a kernel of arithmetic
  intensity ``I`` (FLOP per byte moved to or from memory) attains at most
  ``min(peak, bandwidth × I)``. The two roofs meet at the *ridge point*
  ``I* = peak / bandwidth``: kernels left of it are memory-bound, right of it compute-bound.
* **Thread scaling and Amdahl's law**: the speedup ``S(K) = t(1) / t(K)`` of a matmul
  (compute-bound) and an elementwise add (memory-bound) over ``K`` threads, and the
  parallel fraction ``p`` of ``S(K) = 1 / ((1 − p) + p / K)`` fitted to them by least
  squares (:func:`parcourse.perf.fit_amdahl`). A memory-bound op's "serial fraction" is mostly the
  shared memory bus, not serial code: the fit measures what stops scaling, whatever it is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from . import perf
from .launch import available_cores


def attainable(intensity, peak_flops: float, bandwidth: float):
    """The roofline: ``min(peak, bandwidth × intensity)`` FLOP/s (numbers or arrays)."""
    if not peak_flops > 0 or not bandwidth > 0:
        raise ValueError(f"peak and bandwidth must be positive, got {peak_flops}, {bandwidth}")
    intensity = np.asarray(intensity, dtype=float)
    if np.any(intensity < 0):
        raise ValueError(f"arithmetic intensity must be ≥ 0 FLOP/byte, got {intensity}")
    value = np.minimum(peak_flops, bandwidth * intensity)
    return float(value) if value.ndim == 0 else value


def ridge_point(peak_flops: float, bandwidth: float) -> float:
    """The intensity (FLOP/byte) where the two roofs meet: ``peak / bandwidth``."""
    if not peak_flops > 0 or not bandwidth > 0:
        raise ValueError(f"peak and bandwidth must be positive, got {peak_flops}, {bandwidth}")
    return peak_flops / bandwidth


def intensity(flops: float, nbytes: float) -> float:
    """Arithmetic intensity: FLOP per byte moved."""
    if not nbytes > 0:
        raise ValueError(f"bytes moved must be positive, got {nbytes}")
    return flops / nbytes


def best_seconds(fn, repeats: int = 5, warmup: int = 1) -> float:
    """The shortest of ``repeats`` timed calls of ``fn()``, as STREAM reports its rates: on a
    shared machine the least disturbed run is the closest to what the hardware can do."""
    for _ in range(warmup):
        fn()
    return min(perf.measure(fn, repeats=1, warmup=0) for _ in range(repeats))


def stream_bandwidth(elements: int = 1 << 25, repeats: int = 5) -> dict[str, float]:
    """Bytes per second of STREAM copy (``2 n s`` bytes) and triad (``3 n s``), float32.

    The default, 2²⁵ floats = 128 MiB per array, dwarfs the caches of a laptop or server.
    """
    a = torch.rand(elements)
    b = torch.rand(elements)
    c = torch.rand(elements)
    s = a.element_size()
    copy = best_seconds(lambda: b.copy_(a), repeats=repeats)
    triad = best_seconds(lambda: torch.add(b, c, alpha=3.0, out=a), repeats=repeats)
    return {"copy": 2 * elements * s / copy, "triad": 3 * elements * s / triad}


def peak_matmul_flops(n: int = 1024, dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    """FLOP/s of an ``n × n`` by ``n × n`` product, ``2 n³`` / best time."""
    a = torch.rand(n, n, dtype=dtype)
    b = torch.rand(n, n, dtype=dtype)
    return 2 * n ** 3 / best_seconds(lambda: a @ b, repeats=repeats)


def thread_speedups(fn, threads_list, repeats: int = 5) -> dict[int, float]:
    """``{K: t(1) / t(K)}`` for ``fn`` run with each torch thread count (1 is measured too),
    each time the best of ``repeats``; the caller's thread count is restored afterwards."""
    counts = sorted(set([1, *threads_list]))
    before = torch.get_num_threads()
    try:
        times = {}
        for k in counts:
            torch.set_num_threads(k)
            times[k] = best_seconds(fn, repeats=repeats)
    finally:
        torch.set_num_threads(before)
    return {k: times[1] / times[k] for k in counts}


@dataclass
class CpuRoofline:
    """This CPU's measured roofs and scaling, in SI units (bytes/s, FLOP/s)."""
    cores: int
    copy_bandwidth: float
    triad_bandwidth: float
    peak_flops: float
    matmul_size: int
    matmul_speedups: dict
    add_speedups: dict
    matmul_parallel_fraction: float
    add_parallel_fraction: float

    @property
    def bandwidth(self) -> float:
        """The roof used for the roofline: the better of copy and triad."""
        return max(self.copy_bandwidth, self.triad_bandwidth)

    def attainable(self, intensity):
        return attainable(intensity, self.peak_flops, self.bandwidth)

    def as_dict(self) -> dict:
        return asdict(self)


def measure_cpu(quick: bool = False) -> CpuRoofline:
    """Measure this CPU's roofline and thread scaling; ``quick`` uses small sizes (seconds)."""
    elements = 1 << (22 if quick else 25)
    n = 256 if quick else 1024
    repeats = 3 if quick else 5
    streams = stream_bandwidth(elements, repeats=repeats)
    peak = max(peak_matmul_flops(size, repeats=repeats) for size in (n // 2, n))
    counts = perf.thread_counts(available_cores())
    a, b = torch.rand(n, n), torch.rand(n, n)
    x, y, z = torch.rand(elements), torch.rand(elements), torch.empty(elements)
    mm = thread_speedups(lambda: a @ b, counts, repeats=repeats)
    add = thread_speedups(lambda: torch.add(x, y, out=z), counts, repeats=repeats)
    fit = {name: (perf.fit_amdahl(s) if len(s) > 1 else float("nan"))
           for name, s in (("mm", mm), ("add", add))}
    return CpuRoofline(cores=available_cores(), copy_bandwidth=streams["copy"],
                       triad_bandwidth=streams["triad"], peak_flops=peak, matmul_size=n,
                       matmul_speedups=mm, add_speedups=add,
                       matmul_parallel_fraction=fit["mm"], add_parallel_fraction=fit["add"])
