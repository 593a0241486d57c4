"""Model FLOPs of a GPT and model FLOPs utilization, MFU (chapter 5, "Parallelism for
transformers").

**Training FLOPs per token.** A parameter that multiplies an input costs one
multiply-add (2 FLOPs) per token forward and two backward (the gradients of the input and
of the weight): 6 FLOPs per parameter per token (Kaplan et al., 2020, §2.1). Attention adds
two products that have no parameters, the scores q·k over s positions and their weighted
sum of v, 2·s·d FLOPs each per token and layer forward, 12·L·d·s with backward. So

    FLOPs per token = 6·N + 12·L·d·s,

the count behind Narayanan et al. (2021, §5.1: 72·B·s·L·d²·(1 + s/(6d) + V/(12·L·d)) per
batch of B sequences, without recomputation) and the definition of MFU of Chowdhery et
al. (2022, PaLM, appendix B). Here **N is every parameter except the position table**: the
blocks and the final LayerNorm (Kaplan's non-embedding N) plus the tied V×d token table
once, because it is also the head's matrix, which costs 6·V·d FLOPs per token like any
other (Kaplan leaves that term out; with a 256-byte vocabulary and d = 32 it is a quarter
of the model's FLOPs). A table *lookup* costs nothing, so the position table is left out.
Biases and LayerNorm gains and shifts are counted 6 times though they cost about one
operation each: 13·d of a block's 12·d² + 13·d parameters, an overcount of 2.7% at the
default d = 32, negligible for real widths (:func:`overcount`). The attention term
counts the whole s×s score matrix, as the papers do, though the causal mask makes half
of it −∞: a kernel that skips it (FlashAttention) does less work than the model FLOPs.

**MFU** = achieved model FLOP/s ÷ peak FLOP/s = tokens/s × FLOPs per token ÷ peak. Work
that the model does not need — recomputation, a replicated LayerNorm computed on every
tensor rank, communication — does not count, so it lowers MFU.
"""

from __future__ import annotations

import torch
from torch import nn

from .gpt import GPT


def model_flop_parameters(model: nn.Module) -> int:
    """N of a :class:`parcourse.gpt.GPT`: its parameters (the tied table once) minus the
    position table."""
    total = sum(p.numel() for p in model.parameters())
    return total - model[0].position.weight.numel()


def flops_per_token(parameters: int, layers: int, width: int, sequence: int) -> int:
    """6·N + 12·L·d·s: training FLOPs (forward and backward) per token."""
    for name, value in (("parameters", parameters), ("layers", layers), ("width", width),
                        ("sequence", sequence)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1 (got {value})")
    return 6 * parameters + 12 * layers * width * sequence


def gpt_flops_per_token(layers: int = 2, width: int = 32, heads: int = 2, sequence: int = 32,
                        vocab: int = 256) -> int:
    """:func:`flops_per_token` of the GPT of these sizes (``heads`` does not change it)."""
    with torch.device("meta"):
        model = GPT(layers=layers, width=width, heads=heads, sequence=sequence, vocab=vocab)
    return flops_per_token(model_flop_parameters(model), layers, width, sequence)


def overcount(layers: int, width: int, vocab: int = 256) -> float:
    """The share of 6·N that biases and LayerNorm gains and shifts make up (they cost
    about one FLOP per token each, not six)."""
    small = layers * (3 * width + width + 4 * width + width + 4 * width) + 2 * width
    matrices = layers * 12 * width * width + vocab * width
    return small / (matrices + small)


def mfu(tokens_per_second: float, flops_token: float, peak_flops: float) -> float:
    """Model FLOPs utilization: tokens/s × FLOPs per token ÷ peak FLOP/s."""
    if not peak_flops > 0:
        raise ValueError(f"the peak must be a positive number of FLOP/s (got {peak_flops})")
    return tokens_per_second * flops_token / peak_flops
