"""The GPT with its windows split along the sequence over K ranks: context parallelism
(chapter 5, "Long sequences"; the ring of :mod:`.context`).

Every rank holds the whole model and the 2·S/(2K) positions of its two chunks
(:func:`parcourse.model_parallel.context.positions`). Everything but attention works on
each position by itself, so it runs on the rank's positions unchanged: the embeddings add
the position table's rows of the *global* positions, the MLPs, LayerNorms and the head see
only local rows. Attention needs all earlier keys and values: it is the ring
(:func:`.context.ring_attend`). The layers keep their parameters and names, so the split
model's ``state_dict`` is the GPT's.

Each rank's loss is the mean over its N·2c positions; every rank has as many, so the
global mean is the average of the K local means, and a rank back-propagates its mean × 1/K.
Each parameter then has on each rank the part of its gradient that comes from the rank's
positions (∂K and ∂V of the others' queries came home through the ring), and the full
gradient is their sum over the ranks: one all-reduce after backward.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import gpt
from .context import Recorder, positions, ring_attend


class ContextEmbeddings(nn.Module):
    """E[t] + P[global position] for this rank's positions; the GPT's tables."""

    def __init__(self, embeddings: gpt.Embeddings, rank: int, ranks: int):
        super().__init__()
        self.token, self.position = embeddings.token, embeddings.position
        self.rank, self.ranks = rank, ranks

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        sequence = ids.shape[-1] * self.ranks
        where = positions(self.rank, self.ranks, sequence).to(ids.device)
        return self.token(ids) + self.position(where)


class ContextAttention(nn.Module):
    """The block's attention with the ring in the middle; the same W_qkv and W_o."""

    def __init__(self, attention: gpt.CausalSelfAttention, rank: int, ranks: int,
                 recorder: Recorder | None = None):
        super().__init__()
        self.qkv, self.out, self.heads = attention.qkv, attention.out, attention.heads
        self.rank, self.ranks, self.recorder = rank, ranks, recorder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(ring_attend(self.qkv(x), self.heads, self.rank, self.ranks,
                                    self.recorder))


def parallelize(model: gpt.GPT, rank: int, ranks: int,
                recorder: Recorder | None = None) -> gpt.GPT:
    """``model`` for this rank: takes the ids of its positions (n, S/K), returns their
    logits (n, S/K, V). Shares the parameters of ``model`` (the head stays tied)."""
    layers = list(model)
    layers[0] = ContextEmbeddings(layers[0], rank, ranks)
    for block in layers[1:-1]:
        block.attention = ContextAttention(block.attention, rank, ranks, recorder)
    return gpt.GPT(*layers)


def local(windows: torch.Tensor, rank: int, ranks: int) -> torch.Tensor:
    """This rank's positions of (N, S) ids or targets."""
    return windows[:, positions(rank, ranks, windows.shape[1]).to(windows.device)]
