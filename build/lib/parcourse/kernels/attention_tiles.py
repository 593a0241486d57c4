"""What the forward and backward kernels of FlashAttention share (chapter 5, the GPU
page): the tile product in the kernel's precision, its flags, and the launch settings.
"""

from __future__ import annotations

import torch

from . import runtime
from .runtime import jit, tl


@jit
def tile_dot(a, b, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """``a @ b`` accumulated in float32 (``UPCAST``: float32 copies of the tiles first)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:
        product = tl.dot(a, b, input_precision="ieee")
    else:
        product = tl.dot(a, b)
    return product


def launch_settings(block_m: int, block_n: int) -> dict:
    """Warps per program: 8 for tiles of 128 × 64 and more, 4 below; 2 pipeline stages."""
    return dict(num_warps=8 if block_m * block_n >= 128 * 64 else 4, num_stages=2)


def kernel_flags(dtype: torch.dtype) -> dict:
    """``IEEE`` (exact float32 products) and ``UPCAST`` (bfloat16 in the interpreter)."""
    upcast = runtime.INTERPRETED and dtype == torch.bfloat16
    return dict(IEEE=dtype == torch.float32 or upcast, UPCAST=upcast)
