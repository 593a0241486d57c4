"""FlashAttention-2: exact attention without the ``S × S`` matrix (chapter 5, "From CPU to
GPU", section "Attention in tiles").

For one head, with queries ``Q``, keys ``K`` and values ``V`` of ``S × d`` and scale
``τ = 1/√d``: ``O = softmax(τ Q Kᵀ) V``. Naive attention writes the scores
``X = τ Q Kᵀ`` and the probabilities ``P = softmax(X)`` to memory, ``2 S²`` values per
head. FlashAttention-2 (Dao, 2023, arXiv:2307.08691) never forms them: one program takes a
tile of ``BLOCK_M`` queries and streams the keys and values past it in tiles of
``BLOCK_N``, keeping for each query row ``i`` a running maximum ``m_i``, a running sum
``ℓ_i`` and an unnormalized output ``a_i``. After a key tile ``j`` with scores ``x_ij``:

    m_i' = max(m_i, max_j x_ij)                    (the new running maximum)
    ℓ_i' = e^(m_i − m_i') ℓ_i + Σ_j e^(x_ij − m_i')  (old sum rescaled, new terms added)
    a_i' = e^(m_i − m_i') a_i + Σ_j e^(x_ij − m_i') v_j

and at the end ``o_i = a_i / ℓ_i`` (the *online softmax*, Milakov & Gimelshein, 2018).
The factor ``e^(m_i − m_i')`` rescales what was summed against the old maximum, so every
exponent is ≤ 0 and nothing overflows. The program also stores the log-sum-exp
``L_i = m_i + log ℓ_i`` (``S`` numbers per head): with it the backward pass recomputes
any probability exactly, ``p_ij = e^(x_ij − L_i)``. Exponentials are taken base 2
(``exp2``, the GPU's native instruction) with the scores multiplied by ``log₂ e``.

**Causal masking** (query ``i`` sees keys ``j ≤ i``): a query tile stops at the key tile
holding its last query, so tiles above the diagonal are never loaded (half the work); inside
the tiles it loads, ``j > i`` and keys past ``S`` get ``−∞``.

**Backward** (:mod:`parcourse.kernels.flash_attention_backward`), with ``dO`` the gradient
of the output and ``D_i = Σ_k dO_ik O_ik = rowsum(dO ∘ O)`` (one preprocessing pass):

    dV = Pᵀ dO,   dP = dO Vᵀ,   dX = P ∘ (dP − D),   dQ = τ dX K,   dK = τ dXᵀ Q

(``D_i = Σ_j p_ij dP_ij``, the softmax's Jacobian applied to ``dP``). ``P`` is recomputed
tile by tile from ``Q``, ``K`` and ``L``. One program per key tile accumulates ``dK`` and
``dV`` over the query tiles; a second kernel, one program per query tile, accumulates
``dQ`` over the key tiles. The paper's Algorithm 2 does both in one pass and adds into
``dQ`` with atomic additions; two passes avoid the atomics (a deterministic result) at the
price of computing ``Q Kᵀ`` and ``dO Vᵀ`` twice. Counts of FLOP, bytes and memory:
:mod:`parcourse.kernels.attention_costs`.

**Precision.** Tiles are loaded in the input dtype (float16, bfloat16 or float32), products
accumulate in float32, ``P`` is rounded to the input dtype before ``P V`` (as on tensor
cores), the output once at the end. float32 products are exact (``input_precision=
"ieee"``, no TF32). Triton 3.9's interpreter holds bfloat16 as raw 16-bit integers and its
``tl.dot`` multiplies those integers, not the numbers; in the interpreter the kernels
therefore widen bfloat16 tiles to float32 before ``tl.dot`` (``UPCAST``): a bfloat16
product is exact in float32, so this computes what a GPU's bfloat16 tensor cores compute,
up to the order of the float32 sums. Compiled for a GPU, ``UPCAST`` is off.
"""

from __future__ import annotations

import math
import os

import torch

from . import runtime
from .runtime import jit, tl, triton
from .attention_tiles import kernel_flags, launch_settings, tile_dot  # noqa: F401 (re-exported)
from .flash_attention_backward import attention_backward

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HEAD_DIMS = (16, 32, 64, 128)
LOG2E = 1.4426950408889634  # log₂ e: e^x = 2^(x log₂ e)
LN2 = 0.6931471805599453
INTERPRETER_BLOCKS = (32, 32)  # (BLOCK_M, BLOCK_N): few programs, the interpreter is slow


@jit
def attention_forward_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, seq_len, scale,
                             HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                             CAUSAL: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    # 1. This program: query tile `tile_m` of head `head` (batch × heads flattened).
    tile_m, head = tl.program_id(axis=0), tl.program_id(axis=1)
    base = head * seq_len * HEAD_DIM                      # (B, H, S, d), contiguous
    rows = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    row_in = rows < seq_len
    q = tl.load(q_ptr + base + rows[:, None] * HEAD_DIM + dims[None, :], mask=row_in[:, None], other=0.0)

    # 2. Running maximum m, running sum ℓ and unnormalized output a, in float32.
    m = tl.full((BLOCK_M,), -float("inf"), dtype=tl.float32)
    total = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
    qk_scale = scale * 1.4426950408889634                 # base-2 scores: τ log₂ e
    end = seq_len
    if CAUSAL:                                            # skip the tiles above the diagonal
        end = tl.minimum(seq_len, (tile_m + 1) * BLOCK_M)

    # 3. Stream the key/value tiles past the query tile.
    for start in range(0, end, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_in = cols < seq_len
        k_t = tl.load(k_ptr + base + cols[None, :] * HEAD_DIM + dims[:, None], mask=col_in[None, :], other=0.0)
        v = tl.load(v_ptr + base + cols[:, None] * HEAD_DIM + dims[None, :], mask=col_in[:, None], other=0.0)
        x = tile_dot(q, k_t, IEEE, UPCAST) * qk_scale     # BLOCK_M × BLOCK_N scores, base 2
        keep = col_in[None, :]
        if CAUSAL:
            keep = keep & (cols[None, :] <= rows[:, None])
        x = tl.where(keep, x, -float("inf"))
        m_new = tl.maximum(m, tl.max(x, axis=1))          # key 0 is in the first tile: finite
        rescale = tl.exp2(m - m_new)                      # e^(m − m'), 0 on the first tile
        p = tl.exp2(x - m_new[:, None])
        total = total * rescale + tl.sum(p, axis=1)
        acc = acc * rescale[:, None] + tile_dot(p.to(v.dtype), v, IEEE, UPCAST)
        m = m_new

    # 4. Normalize once, store O and the log-sum-exp L = m + log ℓ (natural log).
    out = acc / total[:, None]
    tl.store(o_ptr + base + rows[:, None] * HEAD_DIM + dims[None, :], out.to(o_ptr.dtype.element_ty),
             mask=row_in[:, None])
    tl.store(lse_ptr + head * seq_len + rows, (m + tl.log2(total)) * 0.6931471805599453, mask=row_in)


def default_blocks(head_dim: int) -> tuple[int, int]:
    """``(BLOCK_M, BLOCK_N)``: small in the interpreter; on a GPU 128 × 64 up to ``d = 64``
    and 64 × 64 above (an untuned starting point: the benchmark sweeps tiles)."""
    if runtime.DEVICE != "cuda":
        return INTERPRETER_BLOCKS
    return (128 if head_dim <= 64 else 64), 64


def check_inputs(q, k, v, causal, scale, block_m, block_n) -> tuple[float, int, int]:
    """Raise a one-line error for anything the kernels cannot take; return the scale and
    the block sizes to use."""
    runtime.require()
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        runtime.check_tensor(name, tensor, dims=4, dtypes=DTYPES)
    runtime.check_same(("q", "k", "v"), q, k, v)
    if not q.shape == k.shape == v.shape:
        raise ValueError(f"q, k and v must have the same shape (batch, heads, sequence, head dim), "
                         f"got {tuple(q.shape)}, {tuple(k.shape)} and {tuple(v.shape)}")
    head_dim = q.shape[3]
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"the head dimension q.shape[3] must be a power of two from 16 to 128, "
                         f"got {head_dim}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be True or False, got {causal!r}")
    if scale is None:
        scale = 1 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    defaults = default_blocks(head_dim)
    block_m, block_n = (defaults[0] if block_m is None else block_m), (defaults[1] if block_n is None else block_n)
    runtime.check_block("block_m", block_m)
    runtime.check_block("block_n", block_n)
    return float(scale), block_m, block_n




def attention_forward(q, k, v, *, causal: bool = False, scale: float | None = None,
                      block_m: int | None = None, block_n: int | None = None):
    """``(O, L)``: the output (the dtype of ``q``) and the float32 log-sum-exp of every
    query row, ``(B, H, S)``, by :func:`attention_forward_kernel`; no autograd."""
    scale, block_m, block_n = check_inputs(q, k, v, causal, scale, block_m, block_n)
    batch, heads, seq_len, head_dim = q.shape
    out = torch.empty_like(q)
    lse = torch.empty((batch, heads, seq_len), dtype=torch.float32, device=q.device)
    if out.numel():
        grid = (triton.cdiv(seq_len, block_m), batch * heads)
        attention_forward_kernel[grid](q, k, v, out, lse, seq_len, scale, HEAD_DIM=head_dim,
                                       BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal,
                                       **kernel_flags(q.dtype), **launch_settings(block_m, block_n))
    return out, lse


class FlashAttention(torch.autograd.Function):
    """The forward kernel, and the backward kernels for ``dQ``, ``dK``, ``dV``."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, block_m, block_n):
        out, lse = attention_forward(q, k, v, causal=causal, scale=scale, block_m=block_m, block_n=block_n)
        ctx.save_for_backward(q, k, v, out, lse)  # O(S) extra per head: L, not P
        ctx.settings = dict(causal=causal, scale=scale, block_m=block_m, block_n=block_n)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        return (*attention_backward(grad_out, q, k, v, out, lse, **ctx.settings), None, None, None, None)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              scale: float | None = None, block_m: int | None = None,
              block_n: int | None = None) -> torch.Tensor:
    """``softmax(scale · q kᵀ) v`` per batch and head, differentiable, by FlashAttention-2.

    ``q``, ``k``, ``v``: contiguous ``(B, H, S, d)`` tensors of one dtype (float16,
    bfloat16 or float32) and device, ``d`` a power of two from 16 to 128. ``scale``
    defaults to ``1/√d``; ``causal=True`` lets query ``i`` see keys ``0..i``. Block sizes
    (powers of two ≥ 16) default to :func:`default_blocks`.
    """
    scale, block_m, block_n = check_inputs(q, k, v, causal, scale, block_m, block_n)
    return FlashAttention.apply(q, k, v, causal, scale, block_m, block_n)


def causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal :func:`attention` of (n, H, t, d_h) heads, as the GPT's attention layers call
    it (``--attention triton``, :func:`parcourse.gpt.use_attention`); the heads are views
    of the QKV projection, copied to contiguous tensors first."""
    return attention(q.contiguous(), k.contiguous(), v.contiguous(), causal=True)


def unsupported(width: int, heads: int, dtype: str, precision: str = "full") -> str | None:
    """Why ``--attention triton`` cannot train a GPT of ``width`` and ``heads`` in
    ``dtype`` here (one line), or None."""
    if not runtime.AVAILABLE:
        return runtime.INSTALL_HINT
    if runtime.DEVICE != "cuda" and not runtime.INTERPRETED:
        return (f"--attention triton runs the Triton kernels on a CUDA GPU or in Triton's "
                f"interpreter, which TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')} "
                f"turns off on this machine without one: unset it")
    if dtype not in ("float32", "float16", "bfloat16"):
        return (f"--attention triton computes in float32, float16 or bfloat16 (got --dtype "
                f"{dtype}): use --dtype float32, with --precision bf16 or fp16 for 16-bit "
                f"products")
    if width // heads not in HEAD_DIMS:
        return (f"--attention triton needs a head width (--width / --heads) of "
                f"{', '.join(map(str, HEAD_DIMS))} (got {width} / {heads} = {width // heads})")
    return None


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                        scale: float | None = None) -> torch.Tensor:
    """Naive attention in plain torch, in the input dtype: it materializes the scores and
    the probabilities, two ``S × S`` tensors per batch and head."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(scale)
    if causal:
        above = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).triu_(1)
        scores.masked_fill_(above, -math.inf)
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def online_logsumexp(scores: torch.Tensor, block: int) -> list[dict]:
    """The online softmax of one row of ``scores``, ``block`` keys at a time, as the
    kernels run it: after each tile, its ``start`` and ``end`` keys, the running ``max``
    m', the ``rescale`` factor e^(m − m') applied to the old sum, and the running
    ``sum`` ℓ'. The log-sum-exp of the row is ``max + log(sum)`` of the last step."""
    if block < 1:
        raise ValueError(f"block must be ≥ 1, got {block}")
    m, total, steps = -math.inf, 0.0, []
    for start in range(0, scores.numel(), block):
        tile = scores[start:start + block]
        m_new = max(m, tile.max().item())
        rescale = math.exp(m - m_new)
        total = rescale * total + torch.exp(tile - m_new).sum().item()
        steps.append({"start": start, "end": start + len(tile) - 1, "max": m_new,
                      "rescale": rescale, "sum": total})
        m = m_new
    return steps


def errors_against_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad_out: torch.Tensor, *,
                        causal: bool = False, block_m: int | None = None,
                        block_n: int | None = None) -> list[float]:
    """Largest absolute differences of :func:`attention`'s ``O``, ``dQ``, ``dK``, ``dV``
    (in the inputs' dtype, ``grad_out`` flowing back) from PyTorch's
    ``scaled_dot_product_attention`` of the same inputs in float64."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = attention(*leaves, causal=causal, block_m=block_m, block_n=block_n)
    grads = torch.autograd.grad(out, leaves, grad_out)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref = torch.nn.functional.scaled_dot_product_attention(*ref_leaves, is_causal=causal)
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad_out.double())
    return [(a.double() - b).abs().max().item() for a, b in zip([out, *grads], [ref, *ref_grads])]
