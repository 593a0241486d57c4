"""FlashAttention-2 backward: ``dQ``, ``dK``, ``dV`` with the probabilities recomputed tile
by tile (chapter 5, "From CPU to GPU", section "Attention in tiles").

With ``X = τ Q Kᵀ`` (scores), ``P = softmax(X)`` row by row, ``O = P V`` and ``dO`` the
gradient of the loss with respect to ``O``:

* ``dV = Pᵀ dO`` and ``dP = dO Vᵀ`` (the product rule for ``O = P V``);
* ``dX_ij = p_ij (dP_ij − D_i)`` with ``D_i = Σ_j p_ij dP_ij``: the softmax's Jacobian
  ``∂p_ij/∂x_ik = p_ij (δ_jk − p_ik)`` applied to ``dP``. Since ``O = P V``,
  ``D_i = Σ_j p_ij Σ_k dO_ik V_jk = Σ_k dO_ik O_ik``: ``D = rowsum(dO ∘ O)``, ``S``
  numbers per head, computed first from ``O`` and ``dO`` by :func:`attention_delta_kernel`
  without any ``S × S`` matrix;
* ``dQ = τ dX K`` and ``dK = τ dXᵀ Q`` (the product rule for ``X = τ Q Kᵀ``).

No ``P`` was stored: a tile of it is recomputed from ``Q``, ``K`` and the forward pass's
log-sum-exp ``L`` as ``p_ij = e^(x_ij − L_i)``, exact and ≤ 1. :func:`attention_dkdv_kernel`
gives each program a key tile (``BLOCK_N`` keys) and walks the query tiles, summing ``dV``
and ``dK`` in float32 registers; :func:`attention_dq_kernel` gives each program a query
tile and walks the key tiles, summing ``dQ``. Causal: the first kernel starts at the query
tile holding the key tile's first key, the second stops at the diagonal, as forward does.
"""

from __future__ import annotations

import torch

from .runtime import jit, tl, triton
from .attention_tiles import kernel_flags, launch_settings, tile_dot


@jit
def attention_delta_kernel(o_ptr, do_ptr, delta_ptr, rows_total, HEAD_DIM: tl.constexpr,
                           BLOCK_M: tl.constexpr):
    # D_i = Σ_k dO_ik O_ik for BLOCK_M rows of the (B·H·S) × d matrices.
    rows = tl.program_id(axis=0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    row_in = rows < rows_total
    offsets = rows[:, None] * HEAD_DIM + dims[None, :]
    o = tl.load(o_ptr + offsets, mask=row_in[:, None], other=0.0).to(tl.float32)
    do = tl.load(do_ptr + offsets, mask=row_in[:, None], other=0.0).to(tl.float32)
    tl.store(delta_ptr + rows, tl.sum(o * do, axis=1), mask=row_in)


@jit
def attention_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                          seq_len, scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
                          UPCAST: tl.constexpr):
    # 1. This program: key tile `tile_n` of head `head`; its K and V stay in registers.
    tile_n, head = tl.program_id(axis=0), tl.program_id(axis=1)
    base = head * seq_len * HEAD_DIM
    cols = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, HEAD_DIM)
    col_in = cols < seq_len
    k = tl.load(k_ptr + base + cols[:, None] * HEAD_DIM + dims[None, :], mask=col_in[:, None], other=0.0)
    v = tl.load(v_ptr + base + cols[:, None] * HEAD_DIM + dims[None, :], mask=col_in[:, None], other=0.0)
    dk = tl.zeros((BLOCK_N, HEAD_DIM), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, HEAD_DIM), dtype=tl.float32)
    qk_scale = scale * 1.4426950408889634
    first = 0
    if CAUSAL:  # query tiles wholly above this key tile see none of its keys
        first = (tile_n * BLOCK_N // BLOCK_M) * BLOCK_M

    # 2. Walk the query tiles: recompute Pᵀ for this key tile, accumulate dV and dK.
    for start in range(first, seq_len, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_in = rows < seq_len
        q = tl.load(q_ptr + base + rows[:, None] * HEAD_DIM + dims[None, :], mask=row_in[:, None], other=0.0)
        do = tl.load(do_ptr + base + rows[:, None] * HEAD_DIM + dims[None, :], mask=row_in[:, None], other=0.0)
        lse = tl.load(lse_ptr + head * seq_len + rows, mask=row_in, other=0.0)
        delta = tl.load(delta_ptr + head * seq_len + rows, mask=row_in, other=0.0)
        x_t = tile_dot(k, tl.trans(q), IEEE, UPCAST) * qk_scale         # BLOCK_N × BLOCK_M
        p_t = tl.exp2(x_t - lse[None, :] * 1.4426950408889634)          # pᵀ = e^(x − L)
        keep = col_in[:, None] & row_in[None, :]
        if CAUSAL:
            keep = keep & (cols[:, None] <= rows[None, :])
        p_t = tl.where(keep, p_t, 0.0)
        dv += tile_dot(p_t.to(do.dtype), do, IEEE, UPCAST)               # dV += Pᵀ dO
        dp_t = tile_dot(v, tl.trans(do), IEEE, UPCAST)                   # dPᵀ = V dOᵀ
        ds_t = p_t * (dp_t - delta[None, :])                             # dXᵀ
        dk += tile_dot(ds_t.to(q.dtype), q, IEEE, UPCAST)                # dK += dXᵀ Q (× τ below)

    out = base + cols[:, None] * HEAD_DIM + dims[None, :]
    tl.store(dk_ptr + out, (dk * scale).to(dk_ptr.dtype.element_ty), mask=col_in[:, None])
    tl.store(dv_ptr + out, dv.to(dv_ptr.dtype.element_ty), mask=col_in[:, None])


@jit
def attention_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, seq_len, scale,
                        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        CAUSAL: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    # 1. This program: query tile `tile_m` of head `head`, with its dO, L and D.
    tile_m, head = tl.program_id(axis=0), tl.program_id(axis=1)
    base = head * seq_len * HEAD_DIM
    rows = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    row_in = rows < seq_len
    q = tl.load(q_ptr + base + rows[:, None] * HEAD_DIM + dims[None, :], mask=row_in[:, None], other=0.0)
    do = tl.load(do_ptr + base + rows[:, None] * HEAD_DIM + dims[None, :], mask=row_in[:, None], other=0.0)
    lse = tl.load(lse_ptr + head * seq_len + rows, mask=row_in, other=0.0)
    delta = tl.load(delta_ptr + head * seq_len + rows, mask=row_in, other=0.0)
    dq = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
    qk_scale = scale * 1.4426950408889634
    end = seq_len
    if CAUSAL:
        end = tl.minimum(seq_len, (tile_m + 1) * BLOCK_M)

    # 2. Walk the key tiles: recompute P, accumulate dQ += dX K.
    for start in range(0, end, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_in = cols < seq_len
        k_t = tl.load(k_ptr + base + cols[None, :] * HEAD_DIM + dims[:, None], mask=col_in[None, :], other=0.0)
        v_t = tl.load(v_ptr + base + cols[None, :] * HEAD_DIM + dims[:, None], mask=col_in[None, :], other=0.0)
        x = tile_dot(q, k_t, IEEE, UPCAST) * qk_scale
        p = tl.exp2(x - lse[:, None] * 1.4426950408889634)
        keep = row_in[:, None] & col_in[None, :]
        if CAUSAL:
            keep = keep & (cols[None, :] <= rows[:, None])
        p = tl.where(keep, p, 0.0)
        ds = p * (tile_dot(do, v_t, IEEE, UPCAST) - delta[:, None])     # dX = P ∘ (dO Vᵀ − D)
        dq += tile_dot(ds.to(k_t.dtype), tl.trans(k_t), IEEE, UPCAST)

    tl.store(dq_ptr + base + rows[:, None] * HEAD_DIM + dims[None, :],
             (dq * scale).to(dq_ptr.dtype.element_ty), mask=row_in[:, None])


def attention_backward(grad_out, q, k, v, out, lse, *, causal: bool, scale: float, block_m: int,
                       block_n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dQ, dK, dV)`` for ``O = attention(q, k, v)`` with forward log-sum-exp ``lse``;
    inputs as checked by :func:`~parcourse.kernels.flash_attention.check_inputs`."""
    grad_out = grad_out.contiguous().to(q.dtype)
    batch, heads, seq_len, head_dim = q.shape
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if not q.numel():
        return dq, dk, dv
    delta = torch.empty((batch, heads, seq_len), dtype=torch.float32, device=q.device)
    rows = batch * heads * seq_len
    attention_delta_kernel[(triton.cdiv(rows, block_m),)](out, grad_out, delta, rows,
                                                          HEAD_DIM=head_dim, BLOCK_M=block_m)
    common = dict(HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal,
                  **kernel_flags(q.dtype), **launch_settings(block_m, block_n))
    attention_dkdv_kernel[(triton.cdiv(seq_len, block_n), batch * heads)](
        q, k, v, grad_out, lse, delta, dk, dv, seq_len, scale, **common)
    attention_dq_kernel[(triton.cdiv(seq_len, block_m), batch * heads)](
        q, k, v, grad_out, lse, delta, dq, seq_len, scale, **common)
    return dq, dk, dv
