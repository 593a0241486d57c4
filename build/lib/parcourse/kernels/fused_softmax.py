"""Fused row softmax: one read and one write per element (chapter 5, "From CPU to GPU").

``softmax(x)_ij = exp(x_ij − m_i) / Σ_k exp(x_ik − m_i)`` with ``m_i = max_k x_ik``;
subtracting the row maximum changes nothing mathematically and keeps ``exp`` from
overflowing. One program instance handles one row: it loads the whole row into registers
(a block of ``BLOCK = next power of two ≥ n_cols`` lanes, the lanes past ``n_cols`` masked
and filled with ``−inf``, whose ``exp`` is 0), and computes max, exponentials, sum and
quotient there, without going back to memory.

Cost, for an ``M × N`` matrix of ``s`` bytes (:func:`flops`, :func:`bytes_moved`):

* memory traffic of the fused kernel: read ``x`` once, write the result once: ``2 M N s``;
* an unfused computation, one pass over memory per step (max: read; subtract and exp:
  read and write; sum: read; divide: read and write), moves ``6 M N s`` bytes
  (:func:`unfused_bytes_moved`): fusion saves a factor 3 of pure memory traffic;
* arithmetic: per element one max, one subtraction, one ``exp``, one addition and one
  division: ``5 M N`` operations (counting ``exp`` as one), intensity ``5 / (2 s)``
  FLOP/byte, still memory-bound on every machine in this book.
"""

from __future__ import annotations

import torch

from . import runtime
from .runtime import jit, tl, triton

MAX_COLS = 65536  # one row must fit in one program's registers (on a GPU they spill beyond)


@jit
def softmax_kernel(x_ptr, y_ptr, n_cols, x_row_stride, y_row_stride, BLOCK: tl.constexpr):
    row = tl.program_id(axis=0)                     # one program per row
    cols = tl.arange(0, BLOCK)
    inside = cols < n_cols
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=inside, other=-float("inf"))
    x = x.to(tl.float32)                            # compute in float32 even for float16
    shifted = x - tl.max(x, axis=0)                 # the largest entry becomes 0
    numerator = tl.exp(shifted)                     # masked lanes: exp(−inf) = 0
    y = numerator / tl.sum(numerator, axis=0)
    tl.store(y_ptr + row * y_row_stride + cols, y.to(y_ptr.dtype.element_ty), mask=inside)


def num_warps_for(block: int) -> int:
    """Warps per program on a GPU: more for longer rows (ignored by the interpreter)."""
    return 4 if block <= 2048 else 8 if block <= 8192 else 16


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Row softmax of a contiguous 2-D float16/float32 ``x`` by :func:`softmax_kernel`."""
    runtime.require()
    runtime.check_tensor("x", x, dims=2)
    n_rows, n_cols = x.shape
    if not 1 <= n_cols <= MAX_COLS:
        raise ValueError(f"x must have between 1 and {MAX_COLS} columns (one row per "
                         f"program, held in registers), got {n_cols}")
    y = torch.empty_like(x)
    block = max(16, triton.next_power_of_2(n_cols))
    if n_rows:
        softmax_kernel[(n_rows,)](x, y, n_cols, x.stride(0), y.stride(0), BLOCK=block,
                                  num_warps=num_warps_for(block))
    return y


def softmax_reference(x: torch.Tensor) -> torch.Tensor:
    """The plain-torch reference, computed in float32 and cast back like the kernel."""
    return torch.softmax(x.float(), dim=-1).to(x.dtype)


def flops(rows: int, cols: int) -> int:
    """max, subtract, exp, add, divide: ``5 M N`` operations."""
    return 5 * rows * cols


def bytes_moved(rows: int, cols: int, itemsize: int) -> int:
    """The fused kernel: read once, write once, ``2 M N s`` bytes."""
    return 2 * rows * cols * itemsize


def unfused_bytes_moved(rows: int, cols: int, itemsize: int) -> int:
    """One pass per step: max (read), exp (read + write), sum (read), divide (read +
    write): ``6 M N s`` bytes, ignoring the ``M``-sized row statistics."""
    return 6 * rows * cols * itemsize
