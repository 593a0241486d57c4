"""Context parallelism: ring attention over a sequence split between K ranks (chapter 5,
"Long sequences"; Liu et al., 2023, on the online softmax of Milakov & Gimelshein, 2018).

**The split.** A window of S tokens is cut into 2K chunks of c = S/(2K) positions; rank r
holds chunks r and 2K−1−r (:func:`chunks_of`), 2c positions in all. Under the causal mask
query chunk i sees key chunk j only for j ≤ i, so a rank holding the first chunks would
have little to do and one holding the last ones much: with the two ends paired every rank
computes the same number of blocks, 2 whole c×c blocks per step of the ring (its own step:
one whole and two halves, the diagonal blocks). Blocks with j > i are skipped.

**Forward.** Each rank keeps its queries; the keys and values travel around the ring: at
step s = 0 … K−1 rank r holds those of rank t = r − s (mod K). The transfer for step s + 1
is posted (``irecv`` from the left, ``isend`` to the right) *before* the rank computes on
step s's block, so the message travels while it computes. For each query row the rank
keeps a running maximum m, a running denominator ℓ = Σ e^{x−m} and a running weighted sum
a = Σ e^{x−m} v over the scores x = q·k/√d seen so far. A block with scores x_b gives its
own (m_b, ℓ_b, a_b); the two merge as (:func:`merge`)

    m = max(m₁, m₂),  ℓ = ℓ₁ e^{m₁−m} + ℓ₂ e^{m₂−m},  a = a₁ e^{m₁−m} + a₂ e^{m₂−m},

which is exact: both sums are rescaled to the same exponent. After the last block the
output is o = a/ℓ, softmax(x)·V over all keys, and the log-sum-exp λ = m + log ℓ is saved.
Sent per rank: K − 1 messages of its K and V, 2·(K−1)·(S/K)·b·h numbers (b windows,
width h = H·d_h).

**Backward** (:class:`RingAttention`), with ∂o given: D = Σ_d ∂o ∘ o per query row. The
keys and values go around the ring again, and with them an accumulator of their ∂K, ∂V.
For each block the probabilities are recomputed from the saved λ, P = e^{x−λ} (masked
entries 0), and

    ∂V_j += Pᵀ ∂o_i,   ∂P = ∂o_i V_jᵀ,   ∂x = P ∘ (∂P − D_i),
    ∂Q_i += ∂x K_j / √d_h,   ∂K_j += ∂xᵀ Q_i / √d_h.

∂Q stays on its rank. The rank adds its ∂K, ∂V of block t to the accumulator that arrives
from the left (posted a step ahead, so it arrives while the rank computes its part) and
sends it on to the right; after K steps it is back at its owner. Sent per rank: K − 1
messages of K and V and K of ∂K and ∂V, 2·(K−1 + K)·(S/K)·b·h numbers (none for K = 1).
:func:`bytes_per_call` states these; :func:`parcourse.ring.bytes_sent` counts them.
"""

from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist

from .. import ring
from ..errors import ConfigError


def chunks_of(rank: int, ranks: int) -> tuple[int, int]:
    """The two chunks (of 2K) that rank ``rank`` of ``ranks`` holds: r and 2K − 1 − r."""
    return rank, 2 * ranks - 1 - rank


def positions(rank: int, ranks: int, sequence: int) -> torch.Tensor:
    """The global positions (int64) of rank ``rank``'s 2·S/(2K) tokens, in order."""
    c = sequence // (2 * ranks)
    return torch.cat([torch.arange(i * c, (i + 1) * c) for i in chunks_of(rank, ranks)])


def blocks_of(rank: int, ranks: int) -> list[list[tuple[int, int]]]:
    """For each ring step s, the (query chunk, key chunk) blocks rank ``rank`` computes
    with the keys of rank r − s: those on or below the diagonal (key chunk ≤ query chunk)."""
    steps = []
    for s in range(ranks):
        keys = chunks_of((rank - s) % ranks, ranks)
        steps.append([(i, j) for i in chunks_of(rank, ranks) for j in keys if j <= i])
    return steps


def check_sequence(sequence: int, ranks: int) -> None:
    """A one-line error unless S splits into 2K equal chunks."""
    if sequence % (2 * ranks):
        step = 2 * ranks
        lower = sequence - sequence % step or step
        raise ConfigError(f"--strategy context cuts each window of --sequence {sequence} "
                          f"tokens into 2 × --workers {ranks} chunks: use a --sequence that is "
                          f"a multiple of {step}, e.g. {lower} or {lower + step}")


def bytes_per_call(sequence: int, batch: int, width: int, ranks: int,
                   element: int) -> dict[str, int]:
    """Bytes one rank sends for one ring attention call (module docstring)."""
    kv = 2 * (sequence // ranks) * batch * width * element      # its K and V
    return {"forward": (ranks - 1) * kv,
            "backward": ((ranks - 1) + ranks) * kv if ranks > 1 else 0}


# --- the online softmax on one block and the merge ---------------------------------------

def block_state(q, k, v, diagonal: bool):
    """(m, ℓ, a) of one block: row maximum, Σ e^{x−m} and Σ e^{x−m} v over its scores
    x = q kᵀ/√d (the keys after the query masked on a ``diagonal`` block)."""
    x = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if diagonal:
        x = x.masked_fill(_upper(x), float("-inf"))
    m = x.amax(dim=-1, keepdim=True)
    p = torch.exp(x - m)
    return m, p.sum(dim=-1, keepdim=True), p @ v


def merge(first, second):
    """Two partial softmax results (m, ℓ, a) over disjoint sets of keys → the one over
    both; ``first`` may be ``None`` (nothing seen yet)."""
    if first is None:
        return second
    (m1, l1, a1), (m2, l2, a2) = first, second
    m = torch.maximum(m1, m2)
    s1, s2 = torch.exp(m1 - m), torch.exp(m2 - m)
    return m, l1 * s1 + l2 * s2, a1 * s1 + a2 * s2


def _upper(x: torch.Tensor) -> torch.Tensor:
    c = x.shape[-1]
    return torch.ones(c, c, dtype=torch.bool, device=x.device).triu(1)


# --- the ring ------------------------------------------------------------------------------

class Recorder:
    """Time-stamped events of ring attention calls on this rank, for a Gantt chart:
    (kind, label, start, end) with kind "compute", "send" or "receive"; times are
    ``time.perf_counter()`` (one clock for all processes on a machine)."""

    def __init__(self):
        self.events: list[tuple[str, str, float, float]] = []

    def add(self, kind: str, label: str, start: float) -> None:
        self.events.append((kind, label, start, time.perf_counter()))


class _Transfer:
    """One message to the right and one from the left, posted now, waited for later."""

    def __init__(self, ranks, outgoing, label, recorder, rank):
        self.left, right = (rank - 1) % ranks, (rank + 1) % ranks
        self.label, self.recorder = label, recorder
        self.start = time.perf_counter()
        self.incoming = torch.empty_like(outgoing)
        self.receive = dist.irecv(self.incoming, src=self.left)  # posted before the send
        self.send = ring.isend(outgoing, right)

    def wait(self) -> torch.Tensor:
        self.receive.wait()
        if self.recorder:
            self.recorder.add("receive", self.label, self.start)
        self.send.wait()
        if self.recorder:
            self.recorder.add("send", self.label, self.start)
        return self.incoming


def _chunk(x, index, c):
    """Rows of local chunk ``index`` (0 or 1, the order of chunks_of) of x (n, H, 2c, ·)."""
    return x.narrow(2, index * c, c)


class RingAttention(torch.autograd.Function):
    """Causal attention of this rank's queries over all ranks' keys (module docstring).

    Forward: K − 1 ring transfers of [K | V]; backward: K − 1 of [K | V] and K of
    [∂K | ∂V]. Inputs q, k, v (n, H, 2c, d_h) of this rank's two chunks; output the same.
    """

    @staticmethod
    def forward(ctx, q, k, v, rank, ranks, recorder):
        c = q.shape[2] // 2
        mine = chunks_of(rank, ranks)
        states = [None, None]
        kv = torch.stack([k, v]).contiguous()
        for s in range(ranks):
            transfer = (_Transfer(ranks, kv, f"K,V step {s + 1}", recorder, rank)
                        if s < ranks - 1 else None)
            start, theirs = time.perf_counter(), chunks_of((rank - s) % ranks, ranks)
            for a, i in enumerate(mine):
                for b, j in enumerate(theirs):
                    if j <= i:
                        states[a] = merge(states[a], block_state(
                            _chunk(q, a, c), _chunk(kv[0], b, c), _chunk(kv[1], b, c),
                            diagonal=i == j))
            if recorder:
                recorder.add("compute", f"blocks of rank {(rank - s) % ranks}", start)
            if transfer is not None:
                kv = transfer.wait()
        out = torch.cat([a / l for m, l, a in states], dim=2)
        lse = torch.cat([m + torch.log(l) for m, l, a in states], dim=2)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.rank, ctx.ranks, ctx.recorder = rank, ranks, recorder
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        rank, ranks, recorder = ctx.rank, ctx.ranks, ctx.recorder
        c, scale = q.shape[2] // 2, 1 / math.sqrt(q.shape[-1])
        mine = chunks_of(rank, ranks)
        grad_out = grad_out.contiguous()
        D = (grad_out * out).sum(dim=-1, keepdim=True)
        dq = torch.zeros_like(q)
        kv = torch.stack([k, v]).contiguous()
        incoming = None                      # the accumulator of ∂K, ∂V arriving next
        for s in range(ranks):
            ahead = (_Transfer(ranks, kv, f"K,V step {s + 1}", recorder, rank)
                     if s < ranks - 1 else None)
            start, theirs = time.perf_counter(), chunks_of((rank - s) % ranks, ranks)
            dkv = torch.zeros_like(kv)       # this rank's part of ∂K, ∂V of rank r − s
            for a, i in enumerate(mine):
                qi, oi, Di, li = (_chunk(z, a, c) for z in (q, grad_out, D, lse))
                for b, j in enumerate(theirs):
                    if j > i:
                        continue
                    kj, vj = _chunk(kv[0], b, c), _chunk(kv[1], b, c)
                    x = qi @ kj.transpose(-2, -1) * scale
                    if i == j:
                        x = x.masked_fill(_upper(x), float("-inf"))
                    p = torch.exp(x - li)
                    _chunk(dkv[1], b, c).add_(p.transpose(-2, -1) @ oi)
                    dx = p * (oi @ vj.transpose(-2, -1) - Di)
                    _chunk(dq, a, c).add_(dx @ kj * scale)
                    _chunk(dkv[0], b, c).add_(dx.transpose(-2, -1) @ qi * scale)
            if recorder:
                recorder.add("compute", f"gradients of rank {(rank - s) % ranks}", start)
            if incoming is not None:
                dkv += incoming.wait()       # the sum so far of the ranks before this one
            if ranks > 1:                    # on to the right; after K hops, home
                incoming = _Transfer(ranks, dkv, f"dK,dV step {s + 1}", recorder, rank)
            if ahead is not None:
                kv = ahead.wait()
        if incoming is not None:
            dkv = incoming.wait()
        return dq, dkv[0], dkv[1], None, None, None


def ring_attend(qkv: torch.Tensor, heads: int, rank: int, ranks: int,
                recorder: Recorder | None = None) -> torch.Tensor:
    """:func:`parcourse.gpt.attend` for this rank's positions: ``qkv`` (n, 2c, 3·H·d_h) of
    its two chunks → the heads' outputs (n, 2c, H·d_h), attending to every rank's keys."""
    n, t, _ = qkv.shape
    q, k, v = qkv.chunk(3, dim=-1)
    d = q.shape[-1]
    q, k, v = (z.reshape(n, t, heads, d // heads).transpose(1, 2) for z in (q, k, v))
    out = RingAttention.apply(q, k, v, rank, ranks, recorder)
    return out.transpose(1, 2).reshape(n, t, d)
