"""Tiled matrix multiplication ``C = A B`` with grouped program order (chapter 5, "From CPU
to GPU").

``A`` is ``M × K``, ``B`` is ``K × N``. Program instance ``pid`` computes one
``BLOCK_M × BLOCK_N`` tile of ``C``: it walks along ``K`` in steps of ``BLOCK_K``, loading
a ``BLOCK_M × BLOCK_K`` tile of ``A`` and a ``BLOCK_K × BLOCK_N`` tile of ``B`` each step
and accumulating their product (``tl.dot``) in float32. Tiles that stick out past ``M``,
``N`` or ``K`` are masked (loaded as 0, not stored).

**Cost** (:func:`flops`, :func:`bytes_moved`, :func:`tiled_bytes_moved`), ``s`` bytes per
element:

* arithmetic: ``M N K`` multiply-adds, ``2 M N K`` FLOP (TFLOPS = 2MNK / time);
* compulsory traffic, every matrix touched once: ``(M K + K N + M N) s`` bytes;
* traffic of the tiling when nothing is reused between programs: each of the
  ``(M / BLOCK_M)(N / BLOCK_N)`` programs reads ``(BLOCK_M + BLOCK_N) K`` elements, in all
  ``M N K (1/BLOCK_N + 1/BLOCK_M) s`` bytes, plus ``M N s`` for writing ``C``; the
  intensity ``2 M N K / bytes`` is then about ``2 / ((1/BLOCK_M + 1/BLOCK_N) s)``, i.e.
  ``BLOCK / s`` FLOP/byte for square tiles: **bigger tiles, higher intensity**.

**Grouped ordering.** Programs run in waves of as many as the GPU holds at once. In
row-major order a wave covers a few rows of tiles and *all* columns: it needs all of
``B``. :func:`tile_order` numbers the tiles group by group instead: ``GROUP_M`` rows of
tiles are walked column by column, so a wave covers a squarer patch of ``C`` and reads
fewer distinct tiles of ``A`` and ``B``, which then stay in the L2 cache for the wave's
other programs (:func:`panels_loaded` counts them).
"""

from __future__ import annotations

import functools

import torch

from . import runtime
from .runtime import jit, tl, triton

INTERPRETER_BLOCKS = dict(block_m=32, block_n=32, block_k=32)  # small: the interpreter is slow
DEFAULT_GROUP_M = 8


def tile_order(num_m: int, num_n: int, group_m: int) -> list[tuple[int, int]]:
    """The ``(tile row, tile column)`` that program ``pid`` computes, for every ``pid``.

    The same arithmetic as the kernel's first lines, in Python. Groups of ``group_m``
    tile rows (the last group may be shorter) are numbered one after another; inside a
    group, ``pid`` runs down a column of tiles first, then moves to the next column.
    ``group_m = 1`` is plain row-major order.
    """
    if min(num_m, num_n, group_m) < 1:
        raise ValueError(f"num_m, num_n and group_m must be ≥ 1, got {num_m}, {num_n}, {group_m}")
    order = []
    for pid in range(num_m * num_n):
        group = pid // (group_m * num_n)
        first_row = group * group_m
        rows_in_group = min(num_m - first_row, group_m)
        within = pid % (group_m * num_n)
        order.append((first_row + within % rows_in_group, within // rows_in_group))
    return order


def panels_loaded(order: list[tuple[int, int]], wave: int) -> int:
    """Tile rows of ``A`` plus tile columns of ``B`` fetched from memory when programs run
    in waves of ``wave`` consecutive ``pid`` and each wave's panels are read once (L2
    holds them during the wave, not across waves)."""
    if wave < 1:
        raise ValueError(f"wave must be ≥ 1, got {wave}")
    total = 0
    for start in range(0, len(order), wave):
        tiles = order[start:start + wave]
        total += len({m for m, _ in tiles}) + len({n for _, n in tiles})
    return total


@jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K,
                  stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  GROUP_M: tl.constexpr, IEEE: tl.constexpr):
    # 1. Which tile of C: the grouped order of tile_order(), computed from the program id.
    pid = tl.program_id(axis=0)
    tiles_n = tl.cdiv(N, BLOCK_N)
    tiles_per_group = GROUP_M * tiles_n
    first_row = (pid // tiles_per_group) * GROUP_M
    rows_in_group = tl.minimum(tl.cdiv(M, BLOCK_M) - first_row, GROUP_M)
    tile_m = first_row + (pid % tiles_per_group) % rows_in_group
    tile_n = (pid % tiles_per_group) // rows_in_group

    # 2. Pointers to the first BLOCK_M × BLOCK_K tile of A and BLOCK_K × BLOCK_N tile of B.
    rows = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    a_tile = a_ptr + rows[:, None] * stride_am + ks[None, :] * stride_ak
    b_tile = b_ptr + ks[:, None] * stride_bk + cols[None, :] * stride_bn

    # 3. March along K, accumulating in float32; masks zero what lies past M, N or K.
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(a_tile, mask=(rows[:, None] < M) & (ks[None, :] < k_left), other=0.0)
        b = tl.load(b_tile, mask=(ks[:, None] < k_left) & (cols[None, :] < N), other=0.0)
        if IEEE:  # float32 inputs: exact float32 products, like torch.matmul's default
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:     # float16 inputs: tensor cores where the GPU has them for Triton
            acc = tl.dot(a, b, acc)
        a_tile += BLOCK_K * stride_ak
        b_tile += BLOCK_K * stride_bk

    # 4. Write the tile of C, only where it lies inside M × N.
    c_tile = c_ptr + rows[:, None] * stride_cm + cols[None, :] * stride_cn
    tl.store(c_tile, acc.to(c_ptr.dtype.element_ty), mask=(rows[:, None] < M) & (cols[None, :] < N))


# Configurations tried by triton.autotune on a GPU (never in the interpreter): block sizes,
# pipeline stages and warps. Those too big for a GPU's shared memory are skipped by the
# autotuner (for example the first ones on a T4, whose blocks get 64 KiB).
GPU_CONFIGS = [  # (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps)
    (128, 256, 64, 3, 8), (256, 128, 64, 3, 8), (128, 128, 64, 4, 4), (128, 128, 32, 4, 4),
    (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (64, 64, 32, 5, 2), (32, 64, 32, 5, 2),
]


@functools.lru_cache(maxsize=None)
def _autotuned():
    """The kernel wrapped in ``triton.autotune`` over :data:`GPU_CONFIGS` (GPU only)."""
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": DEFAULT_GROUP_M},
                             num_stages=stages, num_warps=warps)
               for m, n, k, stages, warps in GPU_CONFIGS]
    return triton.autotune(configs=configs, key=["M", "N", "K", "IEEE"])(matmul_kernel)


def matmul(a: torch.Tensor, b: torch.Tensor, *, block_m: int | None = None,
           block_n: int | None = None, block_k: int | None = None,
           group_m: int = DEFAULT_GROUP_M, num_warps: int | None = None,
           num_stages: int | None = None) -> torch.Tensor:
    """``a @ b`` for 2-D float16/float32 tensors of one dtype, by :func:`matmul_kernel`.

    Any strides are accepted (a transposed view costs no copy). Give all three block
    sizes (powers of two ≥ 16) to run one configuration, optionally with Triton's
    ``num_warps`` and ``num_stages`` (its defaults otherwise: 4 warps, 3 stages); leave
    them out to get :data:`INTERPRETER_BLOCKS` in the interpreter and ``triton.autotune``
    over :data:`GPU_CONFIGS` on a GPU. float32 uses exact float32 products (no TF32).
    """
    runtime.require()
    runtime.check_tensor("a", a, dims=2, contiguous=False)
    runtime.check_tensor("b", b, dims=2, contiguous=False)
    runtime.check_same(("a", "b"), a, b)
    (M, K), (K2, N) = a.shape, b.shape
    if K != K2:
        raise ValueError(f"a is {M} × {K} and b is {K2} × {N}: a's columns must match b's rows")
    blocks = (block_m, block_n, block_k)
    if any(v is not None for v in blocks) and any(v is None for v in blocks):
        raise ValueError("give all three of block_m, block_n, block_k, or none of them")
    if block_m is None and (num_warps, num_stages) != (None, None):
        raise ValueError("num_warps and num_stages go with explicit block sizes (block_m, "
                         "block_n, block_k); without them the autotuner chooses all five")
    if isinstance(group_m, bool) or not isinstance(group_m, int) or group_m < 1:
        raise ValueError(f"group_m must be an integer ≥ 1, got {group_m!r}")
    c = torch.empty((M, N), dtype=a.dtype, device=a.device)
    if M == 0 or N == 0:
        return c
    if K == 0:
        return c.zero_()
    args = (a, b, c, M, N, K, *a.stride(), *b.stride(), *c.stride())
    ieee = a.dtype == torch.float32
    if block_m is None and runtime.DEVICE == "cuda":
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)
        _autotuned()[grid](*args, IEEE=ieee)
        return c
    if block_m is None:
        block_m, block_n, block_k = INTERPRETER_BLOCKS.values()
    for name, value in zip(("block_m", "block_n", "block_k"), (block_m, block_n, block_k)):
        runtime.check_block(name, value)
    grid = (triton.cdiv(M, block_m) * triton.cdiv(N, block_n),)
    launch = {k: v for k, v in (("num_warps", num_warps), ("num_stages", num_stages)) if v is not None}
    matmul_kernel[grid](*args, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                        GROUP_M=group_m, IEEE=ieee, **launch)
    return c


def matmul_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The plain-torch reference: float32 products and sums, cast back to the input dtype."""
    return (a.float() @ b.float()).to(a.dtype)


def flops(m: int, n: int, k: int) -> int:
    """``M N K`` multiply-adds: ``2 M N K`` FLOP."""
    return 2 * m * n * k


def bytes_moved(m: int, n: int, k: int, itemsize: int) -> int:
    """Compulsory traffic, each matrix read or written once: ``(M K + K N + M N) s``."""
    return (m * k + k * n + m * n) * itemsize


def tiled_bytes_moved(m: int, n: int, k: int, itemsize: int, block_m: int, block_n: int) -> int:
    """Traffic of the tiling with no reuse between programs: every program reads its
    ``BLOCK_M × K`` panel of A and ``K × BLOCK_N`` panel of B, and ``C`` is written once.
    Edge tiles are counted in full (their masked part is not read): an upper bound."""
    tiles_m, tiles_n = -(-m // block_m), -(-n // block_n)
    return (tiles_m * tiles_n * (block_m + block_n) * k + m * n) * itemsize
