"""How far apart two results are, and the bounds that prove a parallel run equal to its
reference (chapter 3, "parallelism changes where work runs, not what is computed").

One comparison for the package, the notebooks and the tests: :func:`difference` walks two
results of the same structure (tensors, numbers, and dicts, lists or tuples of them) and
returns the largest absolute and relative difference with the key where it occurs;
:func:`assert_close` raises with a message that names that key and both values.

**Why float64 proves equality.** A parallel strategy computes the same function as the
single run but adds partial results in another order (gradients summed over workers,
over micro-batches, over threads). Each order is exact up to rounding, so two orders of
the same sum differ by a few units of the last place of the terms: about 1e-16 relative
in float64 (unit roundoff 2⁻⁵³), about 6e-8 in float32 (2⁻²⁴). Training amplifies the
difference step after step, but by a factor that does not depend on the dtype much (the
same dynamics act on it). Measured here after 20 steps of SGD or Adam on the book's
models: float32 runs differ by up to ~2e-6, float64 runs by ~1e-14 or less.
:data:`FLOAT64_TOLERANCE` = 1e-10 is 10⁶ times float64's unit roundoff, so no summation
order reaches it, and 10⁴ times smaller than the float32 differences, so any change of the
algorithm (a gradient not averaged, a shard left out, a step counter off by one, all of
which move parameters by 1e-3 and more) exceeds it by orders of magnitude. It holds on any
CPU or GPU: it relies on rounding, not on a machine's kernels.

**float32: a bound measured in the same run.** In float32 the differences depend on the
machine (thread counts, vector widths, convolution algorithms), so no fixed tolerance is a
proof. :func:`within_noise` compares the parallel run's difference from the reference
with the *noise floor*: the difference between two single-process runs that add in
different orders (e.g. the batch split into two micro-batches, ``--accumulation 2``),
measured on the same machine in the same session. The parallel run must stay within
:data:`NOISE_FACTOR` times that floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FLOAT64_TOLERANCE = 1e-10
NOISE_FACTOR = 10.0


@dataclass(frozen=True)
class Difference:
    """The largest difference between two results: where, how much, and both values."""

    key: str          # "" for a bare value, "3.weight" for a dict entry, "a[2]" nested
    absolute: float   # max |actual − expected| over the elements of that entry
    relative: float   # absolute / max |expected| of that entry (inf when it is all zero)
    actual: float     # the element of actual where the absolute difference is largest …
    expected: float   # … and the same element of expected

    def __str__(self) -> str:
        where = f" at {self.key}" if self.key else ""
        return (f"largest difference{where}: {self.absolute:.3e} (relative {self.relative:.3e}; "
                f"{self.actual!r} against {self.expected!r})")


ZERO = Difference("", 0.0, 0.0, 0.0, 0.0)


def difference(actual, expected, key: str = "") -> Difference:
    """The largest absolute difference between ``actual`` and ``expected``, anywhere in them.

    Dicts must have the same keys, lists and tuples the same lengths, tensors the same
    shapes (a ``ValueError`` says which differs); 0 everywhere gives :data:`ZERO`.
    """
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or list(actual) != list(expected):
            raise ValueError(f"the results have different keys{_at(key)}: "
                             f"{_keys(actual)} and {_keys(expected)}")
        return _largest(difference(actual[k], expected[k], _join(key, k)) for k in expected)
    if isinstance(expected, (list, tuple)) and not isinstance(expected, torch.Size):
        if not isinstance(actual, (list, tuple)) or len(actual) != len(expected):
            raise ValueError(f"the results have different lengths{_at(key)}: "
                             f"{_length(actual)} and {len(expected)}")
        return _largest(difference(a, e, f"{key}[{i}]")
                        for i, (a, e) in enumerate(zip(actual, expected)))
    a, e = _as_tensor(actual), _as_tensor(expected)
    if a.shape != e.shape:
        raise ValueError(f"the results have different shapes{_at(key)}: "
                         f"{tuple(a.shape)} and {tuple(e.shape)}")
    if e.numel() == 0:
        return Difference(key, 0.0, 0.0, 0.0, 0.0)
    gap = (a - e).abs().flatten()
    where = int(gap.argmax())
    absolute = float(gap[where])
    scale = float(e.abs().max())
    relative = absolute / scale if scale else (0.0 if absolute == 0 else math.inf)
    return Difference(key, absolute, relative, float(a.flatten()[where]),
                      float(e.flatten()[where]))


def assert_close(actual, expected, atol: float = FLOAT64_TOLERANCE, what: str = "") -> Difference:
    """Raise ``AssertionError`` unless every element differs by at most ``atol``; return the
    largest difference. The message names the key and both values."""
    gap = difference(actual, expected)
    if not gap.absolute <= atol:  # also refuses NaN
        raise AssertionError(f"{what + ': ' if what else ''}{gap} exceeds {atol:.1e}")
    return gap


def within_noise(actual, expected, floor, factor: float = NOISE_FACTOR,
                 what: str = "") -> tuple[Difference, Difference]:
    """Check a float32 run against its reference with the rounding noise of this machine.

    ``floor`` is a second reference run that differs from ``expected`` only in the order
    of its sums (see the module's docstring). Raises ``AssertionError`` unless
    ``|actual − expected| ≤ factor · |floor − expected|`` (largest absolute differences);
    returns both differences. A floor of exactly 0 (the two orders happened to round
    alike) is replaced by float32's unit roundoff times the largest reference value.
    """
    gap, noise = difference(actual, expected), difference(floor, expected)
    bound = factor * max(noise.absolute, _float32_ulp(expected))
    if not gap.absolute <= bound:
        raise AssertionError(f"{what + ': ' if what else ''}{gap} exceeds {factor:g} × the "
                             f"noise floor {noise.absolute:.3e} measured in this run "
                             f"({noise.key or 'value'})")
    return gap, noise


def _float32_ulp(expected) -> float:
    values = [_as_tensor(v).abs().max().item() for v in _leaves(expected)
              if _as_tensor(v).numel()]
    return max(values, default=0.0) * 2.0 ** -24


def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def _largest(differences) -> Difference:
    return max(differences, key=lambda d: (math.isnan(d.absolute), d.absolute), default=ZERO)


def _as_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float64)
    return torch.as_tensor(value, dtype=torch.float64)


def _join(key: str, k) -> str:
    return f"{key}.{k}" if key else str(k)


def _at(key: str) -> str:
    return f" at {key}" if key else ""


def _keys(value) -> str:
    return str(list(value)) if isinstance(value, dict) else type(value).__name__


def _length(value) -> str:
    return str(len(value)) if isinstance(value, (list, tuple)) else type(value).__name__
