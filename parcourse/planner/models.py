"""Model shapes for the planner (chapter 4): parameters, layers, width, heads, sequence,
vocabulary, and FLOPs and activations per sample.

For a GPT-shaped model of L layers of width d, vocabulary V and sequence s:
N ≈ 12·L·d² + V·d parameters (QKV and output projections 4d², the MLP 8d²; the tied token
table V·d), 6N + 12·L·d·s training FLOPs per token (:mod:`parcourse.model_flops`), and
per layer the activations of :func:`parcourse.bench.transformer_memory.activation_bytes`.
The book's own models (``simple``, ``complex``, ``gpt`` at given sizes) are built on the
meta device so that N is exact (the GPT's head, which its tensor-parallel form keeps
whole on every rank, is counted apart too); the MLP's and the CNN's FLOPs are counted by torch's
FLOP counter on one sample's forward and backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from ..model_flops import flops_per_token, model_flop_parameters
from ..models import MODELS, build_model

BOOK_MODELS = tuple(MODELS)


@dataclass(frozen=True)
class ModelShape:
    """What the planner knows of a model. ``book`` names one of the book's models (its
    state bytes are then exact, padding included); ``sizes`` are its size options."""
    name: str
    parameters: int
    layers: int
    flops_per_sample: float
    width: int = 0
    heads: int = 0
    sequence: int = 1
    vocab: int = 0
    activation_per_sample: float = 0.0   # fp32 bytes kept for backward, non-GPT models
    book: str | None = None
    sizes: dict = field(default_factory=dict)
    replicated_flops_per_sample: float = 0.0  # what every tensor rank computes whole

    @property
    def transformer(self) -> bool:
        return self.heads > 0

    def rank_flops_per_sample(self, tensor: int = 1) -> float:
        """Training FLOPs per sample of one of ``tensor`` ranks: the split share ÷ T, plus
        what every rank computes whole."""
        split = self.flops_per_sample - self.replicated_flops_per_sample
        return split / tensor + self.replicated_flops_per_sample


def gpt_shape(layers: int, width: int, heads: int, sequence: int, vocab: int = 256,
              parameters: int | None = None, name: str | None = None) -> ModelShape:
    """A GPT-shaped model from raw sizes; ``parameters`` defaults to 12·L·d² + V·d + s·d
    plus biases and LayerNorms (13·L·d + 2·d), the package's GPT's exact count."""
    for option, value in (("layers", layers), ("width", width), ("heads", heads),
                          ("sequence", sequence), ("vocab", vocab)):
        if value < 1:
            raise ConfigError(f"--{option} must be at least 1 (got {value})")
    if width % heads:
        raise ConfigError(f"--width {width} is not a multiple of --heads {heads}: each head "
                          f"needs width/heads columns")
    if parameters is None:
        parameters = 12 * layers * width * width + 13 * layers * width + 2 * width \
            + vocab * width + sequence * width
    flop_parameters = parameters - sequence * width
    return ModelShape(name or f"GPT L={layers} d={width} a={heads} s={sequence}", parameters,
                      layers, float(flops_per_token(flop_parameters, layers, width, sequence)
                                    * sequence),
                      width, heads, sequence, vocab)


def _counted_flops(model: torch.nn.Module, sample: torch.Tensor, target: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(sample), target).backward()
    return float(counter.get_total_flops())


def _saved_bytes(model: torch.nn.Module, sample: torch.Tensor) -> float:
    """Bytes of each layer's input and output for one sample (what backward keeps)."""
    total = sample.numel() * sample.element_size()
    x = sample
    with torch.no_grad():
        for layer in model:
            x = layer(x)
            total += x.numel() * x.element_size()
    return float(total)


def book_shape(name: str, **sizes) -> ModelShape:
    """One of the book's models (``gpt`` with its size options), N exact."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}, "
                          f"or give its shape (--parameters, --layers, --width, ...)")
    if name == "gpt":
        defaults = {"layers": 2, "width": 32, "heads": 2, "sequence": 32}
        sizes = {**defaults, **{k: v for k, v in sizes.items() if v is not None}}
        with torch.device("meta"):
            model = build_model("gpt", **sizes)
        total = sum(p.numel() for p in model.parameters())
        shape = gpt_shape(**sizes, vocab=model[0].token.weight.shape[0], parameters=total,
                          name=f"gpt L={sizes['layers']} d={sizes['width']} "
                               f"a={sizes['heads']} s={sizes['sequence']}")
        assert model_flop_parameters(model) == total - sizes["sequence"] * sizes["width"]
        # the book's tensor-parallel GPT keeps the tied head whole on every rank (its
        # vocabulary is 256 bytes): 2·V·d FLOPs per token forward, 4·V·d backward
        head = 6 * shape.vocab * shape.width * shape.sequence
        return ModelShape(**{**shape.__dict__, "book": "gpt", "sizes": sizes,
                             "replicated_flops_per_sample": float(head)})
    model = build_model(name, seed=0)
    sample = torch.rand(1, 1, 28, 28)
    layers = sum(1 for m in model if any(True for _ in m.parameters()))
    return ModelShape(name, sum(p.numel() for p in model.parameters()), layers,
                      _counted_flops(model, sample, torch.zeros(1, dtype=torch.long)),
                      activation_per_sample=_saved_bytes(model, sample), book=name)
