"""Layer normalization, forward: a reduction per row (chapter 5, "From CPU to GPU").

For each row ``x`` of ``N`` entries: ``μ = Σ x_j / N``, ``σ² = Σ (x_j − μ)² / N``, and
``y_j = (x_j − μ) / sqrt(σ² + ε) · w_j + b_j`` (Ba, Kiros & Hinton, 2016). Like the
softmax, one program handles one row held in registers (``BLOCK`` = next power of two ≥
``N``, masked); unlike it, two *reductions* (the mean, then the variance) feed the
element-wise step. The masked lanes are loaded as 0 and must be kept out of the
variance: ``x − μ`` is not 0 there, so it is zeroed with ``tl.where`` before squaring.

Cost, for an ``M × N`` input of ``s`` bytes (:func:`flops`, :func:`bytes_moved`):

* memory traffic: read ``x``, write ``y`` (``2 M N s``), read ``w`` and ``b``
  (``2 N s``, once per program; cached after the first): ``(2 M N + 2 N) s`` bytes;
* arithmetic, per element: mean (1 add), centre (1 sub), variance (1 mul + 1 add),
  normalise (1 mul), scale and shift (1 mul + 1 add): ``7 M N`` FLOP, plus a division
  and a square root per row, ignored.
"""

from __future__ import annotations

import torch

from . import runtime
from .runtime import jit, tl, triton

MAX_COLS = 65536


@jit
def layer_norm_kernel(x_ptr, w_ptr, b_ptr, y_ptr, n_cols, row_stride, eps,
                      BLOCK: tl.constexpr):
    row = tl.program_id(axis=0)
    cols = tl.arange(0, BLOCK)
    inside = cols < n_cols
    x = tl.load(x_ptr + row * row_stride + cols, mask=inside, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / n_cols                     # reduction 1: masked lanes add 0
    centred = tl.where(inside, x - mean, 0.0)             # keep masked lanes out of σ²
    variance = tl.sum(centred * centred, axis=0) / n_cols  # reduction 2
    inv_std = 1.0 / tl.sqrt(variance + eps)
    w = tl.load(w_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    y = centred * inv_std * w + b
    tl.store(y_ptr + row * row_stride + cols, y.to(y_ptr.dtype.element_ty), mask=inside)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               eps: float = 1e-5) -> torch.Tensor:
    """Layer norm over the last dimension of a contiguous 2-D ``x`` (``weight``, ``bias``:
    1-D of length ``x.shape[1]``), by :func:`layer_norm_kernel`."""
    runtime.require()
    runtime.check_tensor("x", x, dims=2)
    runtime.check_tensor("weight", weight, dims=1)
    runtime.check_tensor("bias", bias, dims=1)
    runtime.check_same(("x", "weight", "bias"), x, weight, bias)
    n_rows, n_cols = x.shape
    if weight.shape[0] != n_cols or bias.shape[0] != n_cols:
        raise ValueError(f"weight and bias must have x.shape[1] = {n_cols} entries, got "
                         f"{weight.shape[0]} and {bias.shape[0]}")
    if not 1 <= n_cols <= MAX_COLS:
        raise ValueError(f"x must have between 1 and {MAX_COLS} columns (one row per "
                         f"program, held in registers), got {n_cols}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    y = torch.empty_like(x)
    block = max(16, triton.next_power_of_2(n_cols))
    if n_rows:
        layer_norm_kernel[(n_rows,)](x, weight, bias, y, n_cols, x.stride(0), eps, BLOCK=block,
                                     num_warps=4 if block <= 2048 else 8 if block <= 8192 else 16)
    return y


def layer_norm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                         eps: float = 1e-5) -> torch.Tensor:
    """The plain-torch reference, computed in float32 and cast back like the kernel."""
    y = torch.nn.functional.layer_norm(x.float(), (x.shape[-1],), weight.float(),
                                       bias.float(), eps)
    return y.to(x.dtype)


def flops(rows: int, cols: int) -> int:
    """Seven floating-point operations per element: ``7 M N``."""
    return 7 * rows * cols


def bytes_moved(rows: int, cols: int, itemsize: int) -> int:
    """Read ``x``, write ``y``, read ``w`` and ``b`` once: ``(2 M N + 2 N) s`` bytes."""
    return (2 * rows * cols + 2 * cols) * itemsize
