"""Vector addition ``z = x + y``: the smallest Triton kernel (chapter 5, "From CPU to GPU").

The kernel is launched on a one-dimensional grid of ``P = ceil(n / BLOCK)`` program
instances. Program ``pid`` owns the elements ``pid·BLOCK … pid·BLOCK + BLOCK − 1``; the
last program's block sticks out past ``n``, so every load and store carries the mask
``offsets < n``: masked-off lanes read nothing and write nothing.

Cost, for ``n`` elements of ``s`` bytes (:func:`flops`, :func:`bytes_moved`):

* arithmetic: ``n`` additions, so ``n`` FLOP;
* memory traffic: read ``x`` and ``y``, write ``z``: ``3 n s`` bytes;
* arithmetic intensity: ``n / (3 n s) = 1 / (3 s)`` FLOP/byte (1/12 in float32), far left
  of any ridge point: the kernel is bound by memory bandwidth on every machine.
"""

from __future__ import annotations

import torch

from . import runtime
from .runtime import jit, tl, triton

DEFAULT_BLOCK = 1024


@jit
def add_kernel(x_ptr, y_ptr, z_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(axis=0)                    # which block this program owns
    offsets = pid * BLOCK + tl.arange(0, BLOCK)    # BLOCK element indices at once
    inside = offsets < n                           # the last block may stick out past n
    x = tl.load(x_ptr + offsets, mask=inside)
    y = tl.load(y_ptr + offsets, mask=inside)
    tl.store(z_ptr + offsets, x + y, mask=inside)


def vector_add(x: torch.Tensor, y: torch.Tensor, *, block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """``x + y`` by :func:`add_kernel`: contiguous float16/float32 tensors of one shape."""
    runtime.require()
    runtime.check_tensor("x", x)
    runtime.check_tensor("y", y)
    runtime.check_same(("x", "y"), x, y)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    runtime.check_block("block", block)
    z = torch.empty_like(x)
    n = x.numel()
    if n:
        add_kernel[(triton.cdiv(n, block),)](x, y, z, n, BLOCK=block)
    return z


def vector_add_reference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The plain-torch reference: ``x + y``."""
    return x + y


def flops(n: int) -> int:
    """One addition per element: ``n`` FLOP."""
    return n


def bytes_moved(n: int, itemsize: int) -> int:
    """Two reads and one write per element: ``3 n s`` bytes."""
    return 3 * n * itemsize
