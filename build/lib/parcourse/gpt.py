"""A small GPT: a decoder-only transformer over bytes (chapter 5, "Training a transformer";
Radford et al., 2019; the block of Vaswani et al., 2017, with the LayerNorm before each
sub-layer, as in GPT-2).

For a window of T token ids t₁ … t_T (bytes, vocabulary V = 256) and width d:

* **embeddings**: x⁰_s = E[t_s] + P[s], token table E (V×d) and position table P (T×d);
* **L blocks**, each two residual sub-layers on the pre-normalised input:
  x ← x + Attention(LN₁(x)), then x ← x + W₂ GELU(W₁ LN₂(x)) (W₁: d → 4d, W₂: 4d → d);
* **causal self-attention** with H heads of width d_h = d/H: q, k, v = x W_q, x W_k, x W_v
  split into heads; head h's output at position s is Σ_{r≤s} softmax_r(q_s·k_r / √d_h) v_r
  (the scores of later positions r > s are −∞ before the softmax, so position s never
  sees a later token), the heads are concatenated and projected by W_o;
* **head**: logits_s = LN_f(x^L_s) Eᵀ — the output layer *is* the token table (weight
  tying, Press & Wolf, 2017): one V×d parameter, used twice, with one gradient that sums
  both uses.

The model is an ``nn.Sequential`` of [embeddings, block 1, …, block L, head], so the
package's per-layer machinery sees its layers: recomputation's blocks, ZeRO-3's groups,
FSDP's units. The tied table is one ``nn.Parameter`` registered in two layers:
``named_parameters()`` lists it once (as ``0.token.weight``), ``state_dict()`` under both
names (:func:`parcourse.models.shared_parameters` says which names are one tensor). No
dropout: the function is deterministic, so a parallel run can equal the single run
exactly.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .moe import MixtureOfExperts

VOCAB = 256          # byte-level tokens
INIT_STD = 0.02      # every weight matrix and table starts N(0, 0.02²); biases at 0


class Embeddings(nn.Module):
    """Token ids (N, T) → E[t] + P[position], (N, T, d)."""

    def __init__(self, vocab: int, width: int, sequence: int):
        super().__init__()
        self.token = nn.Embedding(vocab, width)
        self.position = nn.Embedding(sequence, width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[-1], device=ids.device)
        return self.token(ids) + self.position(positions)


class CausalSelfAttention(nn.Module):
    """Multi-head attention in which position s attends to positions r ≤ s only."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)   # W_q, W_k, W_v side by side
        self.out = nn.Linear(width, width)       # W_o
        self.kernel: Attention = causal_attention  # not a parameter: see use_attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(attend(self.qkv(x), self.heads, self.kernel))


# The heads' causal attention: (q, k, v), each (n, H, t, d_h) → (n, H, t, d_h).
Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √d_h, later positions masked) v, in plain torch: the scores and the
    probabilities are (n, H, t, t) tensors kept for backward."""
    t = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])            # (n, H, t, t)
    later = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(later, float("-inf")).softmax(dim=-1) @ v


def attend(qkv: torch.Tensor, heads: int, kernel: Attention = causal_attention) -> torch.Tensor:
    """The heads' causal attention from their projections: ``qkv`` (n, t, 3·H·d_h) holds
    [q | k | v], each H heads of d_h side by side; returns the heads' outputs side by side,
    (n, t, H·d_h). A tensor-parallel rank calls it with its own heads only
    (:mod:`parcourse.model_parallel.tensor_gpt`). ``kernel`` computes it per head:
    :func:`causal_attention`, or FlashAttention (``--attention triton``)."""
    n, t, _ = qkv.shape
    q, k, v = qkv.chunk(3, dim=-1)
    d = q.shape[-1]
    q, k, v = (z.view(n, t, heads, d // heads).transpose(1, 2) for z in (q, k, v))
    return kernel(q, k, v).transpose(1, 2).reshape(n, t, d)              # heads side by side


def use_attention(model: nn.Module, kernel: Attention) -> nn.Module:
    """Let every attention layer of ``model`` compute its heads with ``kernel`` (the same
    function, another algorithm: the parameters and state_dict do not change)."""
    for layer in model.modules():
        if hasattr(layer, "kernel") and hasattr(layer, "heads"):
            layer.kernel = kernel
    return model


class Block(nn.Module):
    """x + Attention(LN₁(x)), then + MLP(LN₂(x)) with a GELU hidden layer of 4d; with
    ``experts`` E ≥ 1 the MLP is a mixture of E such MLPs (:mod:`parcourse.moe`)."""

    def __init__(self, width: int, heads: int, experts: int = 0, top_k: int = 1,
                 capacity_factor: float = 1.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = (MixtureOfExperts(width, experts, top_k, capacity_factor) if experts else
                    nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                  nn.Linear(4 * width, width)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Head(nn.Module):
    """LN_f(x) Eᵀ: the logits over the vocabulary, from the token table ``weight`` (tied)."""

    def __init__(self, weight: nn.Parameter):
        super().__init__()
        self.norm = nn.LayerNorm(weight.shape[1])
        self.weight = weight      # the embeddings' own Parameter, registered here too

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) @ self.weight.t()


class GPT(nn.Sequential):
    """[embeddings, block 1 … block L, head]; input (N, T) int64 ids with T ≤ ``sequence``,
    output (N, T, 256) logits of the next byte at every position.

    ``model[a:b]`` is a slice with the original layer names, as for the other models.
    """

    def __init__(self, *modules: nn.Module, **sizes):
        if modules:                 # a slice: the layers it keeps
            super().__init__(*modules)
            return
        super().__init__(*build_layers(**sizes))
        self.apply(_initialise)


def build_layers(layers: int = 2, width: int = 32, heads: int = 2, sequence: int = 32,
                 vocab: int = VOCAB, experts: int = 0, top_k: int = 1,
                 capacity_factor: float = 1.0) -> list[nn.Module]:
    """The layers of a GPT of ``layers`` blocks, ``width`` channels, ``heads`` heads and a
    context of ``sequence`` tokens; ``experts`` E ≥ 1 makes each block's MLP a mixture of
    E experts, each token routed to ``top_k`` of them, ``capacity_factor`` sizing their
    capacity per window (:mod:`parcourse.moe`; 0, the default, keeps the dense MLP)."""
    for name, value in (("layers", layers), ("width", width), ("heads", heads),
                        ("sequence", sequence), ("vocab", vocab)):
        if value < 1:
            raise ValueError(f"a GPT needs {name} ≥ 1 (got {value})")
    if width % heads:
        raise ValueError(f"width {width} is not divisible by {heads} heads")
    embeddings = Embeddings(vocab, width, sequence)
    return [embeddings, *(Block(width, heads, experts, top_k, capacity_factor)
                          for _ in range(layers)),
            Head(embeddings.token.weight)]


def _initialise(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=INIT_STD)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


@torch.no_grad()
def generate(model: nn.Module, prompt: str, new_tokens: int, temperature: float = 0.0,
             seed: int = 0) -> str:
    """``prompt`` continued by ``new_tokens`` bytes, one at a time: each from the logits of
    the last position over the last ``sequence`` tokens — the most likely byte
    (``temperature`` 0, greedy) or a byte drawn from softmax(logits / temperature) with a
    generator seeded by ``seed``. Bytes that are not UTF-8 print as U+FFFD."""
    context = model[0].position.num_embeddings
    device = model[0].token.weight.device
    ids = torch.tensor([list(prompt.encode("utf-8"))], dtype=torch.int64, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    for _ in range(new_tokens):
        logits = model(ids[:, -context:])[0, -1].double()
        if temperature > 0:
            probabilities = (logits / temperature).softmax(dim=-1)
            following = torch.multinomial(probabilities, 1, generator=generator)
        else:
            following = logits.argmax().view(1)
        ids = torch.cat([ids, following.view(1, 1)], dim=1)
    model.train(was_training)
    return bytes(ids[0].tolist()).decode("utf-8", errors="replace")

