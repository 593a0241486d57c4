"""Chapter 5, "Long sequences: context parallelism": what the book's page measures in one
run per K (:mod:`parcourse.bench.context`), and on every rank the proof that the ring is
causal attention: its output and ∂qkv on the rank's positions against
:func:`parcourse.gpt.attend` over the whole window, in float64."""

from __future__ import annotations

import torch

from .. import compare, gpt
from ..bench import context as bench_context
from ..model_parallel import context


def ring_against_attend(rank: int, ranks: int, sequence: int = 32, heads: int = 4,
                        width: int = 32, batch: int = 2) -> float:
    """The largest difference (output and ∂qkv) between the ring on this rank's positions
    and whole-window causal attention, float64, the same seeded inputs on every rank."""
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(batch, sequence, 3 * width, generator=g, dtype=torch.float64)
    upstream = torch.randn(batch, sequence, width, generator=g, dtype=torch.float64)
    mine = context.positions(rank, ranks, sequence)
    local = qkv[:, mine].clone().requires_grad_()
    out = context.ring_attend(local, heads, rank, ranks)
    (out * upstream[:, mine]).sum().backward()
    whole = qkv.clone().requires_grad_()
    expected = gpt.attend(whole, heads)
    (expected * upstream).sum().backward()
    return max(compare.difference(out, expected[:, mine]).absolute,
               compare.difference(local.grad, whole.grad[:, mine]).absolute)


def page_worker(rank: int, ranks: int, sizes: dict, steps: int) -> dict:
    """:func:`parcourse.bench.context.rank_figures` and, as ``extra``, the ring's largest
    difference from attend on this rank."""
    figures = bench_context.rank_figures(rank, ranks, sizes, steps)
    figures["extra"] = ring_against_attend(rank, ranks)
    return figures


def measure(ranks_list=(1, 2, 4), steps: int = 3) -> list[dict]:
    """The page's rows: :func:`parcourse.bench.context.measure` with the equality check."""
    return bench_context.measure(ranks_list, steps=steps, worker=page_worker)
