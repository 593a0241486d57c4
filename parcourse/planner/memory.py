"""Memory per rank of one parallel configuration (chapter 4, "Memory per rank").

A configuration is R data-parallel replicas × T tensor ranks × P pipeline stages, ZeRO
stage z (0: plain data parallelism), a precision, recomputation on or off and M
micro-batches per replica. One rank holds Ψ = N/(T·P) parameters' states and

* **states** — per parameter, Adam: fp32 4 + 4 + 8 bytes; bf16 (mixed precision: bf16
  parameters and gradients, fp32 master weights and both moments) 2 + 2 + 12 = 16 bytes;
  ZeRO-1 divides the optimizer state by R, ZeRO-2 the gradients too, ZeRO-3 the
  parameters too (:func:`parcourse.data_parallel.zero_ledger.ideal_bytes_per_parameter`).
  For the book's own models on one stage and one tensor rank in fp32 the exact ledger,
  padding and Adam's step counters included, is used
  (:func:`~parcourse.data_parallel.zero_ledger.state_bytes`): it is what the runs hold;
  with a pipeline or tensor ranks (no ZeRO) the stages are the pipeline strategies' own
  cut (:func:`parcourse.model_parallel.partition.partition`, by parameters), and
  :func:`stage_state_bytes` gives each stage's exact bytes on a tensor rank (the book's
  GPT keeps its embeddings, LayerNorms and head whole on every tensor rank);
  :func:`fsdp_state_bytes` gives FSDP2's, whose shards are cut per parameter.
* **activations** — per transformer layer, the bytes of
  :func:`parcourse.bench.transformer_memory.activation_bytes` (16·sbh + a·s²·b + 4·sb
  numbers of e bytes, split by T with sequence parallelism), for the L/P layers of a stage,
  times the micro-batches alive at once (1F1B: min(P, M) on the first stage; one without
  a pipeline). With recomputation a layer keeps only its input, sbh·e/T, and one layer's
  full set is alive during its backward. The head's logits and their gradient, 2·b·s·V
  fp32 numbers per micro-batch (/T: the vocabulary is split), come on top. Models without
  layers of that shape keep their layers' outputs (:mod:`.models`).
* **gathered** — ZeRO-3 holds one gathered layer besides its shard: N/L parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..bench.transformer_memory import activation_bytes
from ..data_parallel import zero_ledger
from ..model_parallel.partition import partition
from ..models import build_model
from .models import ModelShape

VARIANT = {0: "ddp", 1: "zero1", 2: "zero2", 3: "zero3"}
GPT_DEFAULTS = {"layers": 2, "width": 32, "heads": 2, "sequence": 32}
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Config:
    """One point of the search: the grid, ZeRO stage, precision, recomputation, M; and
    the engine that shards (``"fsdp"``: PyTorch's FSDP2, ZeRO-3's states cut per
    parameter, with its own collectives; otherwise the book's ZeRO engines)."""
    data: int
    tensor: int = 1
    pipeline: int = 1
    zero: int = 0
    precision: str = "fp32"
    recompute: bool = False
    microbatches: int = 1
    engine: str = "parcourse"

    @property
    def devices(self) -> int:
        return self.data * self.tensor * self.pipeline

    def label(self) -> str:
        return (f"R{self.data}·T{self.tensor}·P{self.pipeline} zero{self.zero} "
                f"{self.precision}{' rc' if self.recompute else ''} M{self.microbatches}")


def element(precision: str) -> int:
    return 2 if precision == "bf16" else 4


def exact_states(model: ModelShape, config: Config) -> bool:
    """Whether the exact ledger of the book's model applies (one stage, one tensor rank,
    fp32, a book model at its default sizes)."""
    return (model.book in ("simple", "complex") or (model.book == "gpt" and model.sizes ==
            GPT_DEFAULTS)) \
        and config.tensor == 1 and config.pipeline == 1 and config.precision == "fp32"


def _adam_bytes(params: list) -> dict:
    """Exact fp32 Adam bytes of these tensors: 4 + 4 + 8 per element, 4 per step counter."""
    n = sum(p.numel() for p in params)
    return {"parameters": 4 * n, "gradients": 4 * n,
            "optimizer state": 8 * n + zero_ledger.STEP_BYTES * len(params)}


def stage_state_bytes(book: str, ranges, tensor: int = 1) -> list[dict]:
    """Exact fp32 Adam bytes of each pipeline stage holding the layers ``ranges`` of the
    book's model, on one of its ``tensor`` ranks (the GPT's blocks split as
    :mod:`parcourse.model_parallel.tensor_gpt` splits them, the rest whole; every tensor
    rank holds the same bytes)."""
    from ..model_parallel import tensor_gpt

    model = build_model(book)
    out = []
    for start, end in ranges:
        part = model[start:end]
        if tensor > 1:
            part = tensor_gpt.parallelize(part, 0, tensor)
        out.append(_adam_bytes(list(part.parameters())))
    return out


def fsdp_state_bytes(book: str, world_size: int) -> list[dict]:
    """Exact fp32 Adam bytes on each of FSDP2's K ranks: every parameter cut along its
    first dimension into K chunks of ⌈d₀/K⌉ rows (``torch.chunk``; the last ones shorter
    or empty), rank r holding chunk r; one step counter per parameter on every rank."""
    params = list(build_model(book).parameters())
    out = []
    for rank in range(world_size):
        n = 0
        for p in params:
            rows = -(-p.shape[0] // world_size)
            mine = max(0, min(p.shape[0], (rank + 1) * rows) - rank * rows)
            n += mine * (p.numel() // p.shape[0])
        out.append({"parameters": 4 * n, "gradients": 4 * n,
                    "optimizer state": 8 * n + zero_ledger.STEP_BYTES * len(params)})
    return out


def state_bytes(model: ModelShape, config: Config) -> dict:
    """Bytes of parameters, gradients and optimizer state on one rank (with a pipeline:
    the busiest stage's)."""
    default_gpt = model.book == "gpt" and model.sizes == GPT_DEFAULTS
    if config.zero == 0 and config.precision == "fp32" and (
            (model.book in ("simple", "complex") and config.pipeline > 1 and config.tensor == 1)
            or (default_gpt and config.pipeline * config.tensor > 1)):
        stages = stage_state_bytes(model.book, partition(build_model(model.book),
                                                         config.pipeline), config.tensor)
        return max(stages, key=lambda held: sum(held.values()))
    if exact_states(model, config):
        return zero_ledger.state_bytes(model.book, VARIANT[config.zero], config.data,
                                       "adam", torch.float32)
    per = zero_ledger.ideal_bytes_per_parameter(config.zero, config.data,
                                                mixed=config.precision == "bf16")
    psi = model.parameters / (config.tensor * config.pipeline)
    return {kind: psi * b for kind, b in per.items()}


def activation_memory(model: ModelShape, config: Config, batch: int) -> float:
    """Bytes of activations alive at the peak on the busiest rank (the first stage)."""
    micro = batch / (config.data * config.microbatches)
    e, t, p = element(config.precision), config.tensor, config.pipeline
    alive = min(p, config.microbatches)
    if not model.transformer:
        return model.activation_per_sample * micro * e / 4 * alive / p
    s, h, a = model.sequence, model.width, model.heads
    mode = "sequence" if t > 1 else "single"
    layer = activation_bytes(s, micro, h, a, t, mode, e)
    stage_layers = max(1, model.layers // p)
    if config.recompute:
        kept = stage_layers * alive * s * micro * h * e / t + layer
    else:
        kept = stage_layers * alive * layer
    return kept + 2 * micro * s * model.vocab * 4 / t


def memory_per_rank(model: ModelShape, config: Config, batch: int) -> dict:
    """States by kind, activations, ZeRO-3's gathered layer and the total, in bytes."""
    out = dict(state_bytes(model, config))
    out["activations"] = activation_memory(model, config, batch)
    out["gathered"] = (model.parameters / (config.tensor * config.pipeline)
                       / max(model.layers, 1) * element(config.precision)
                       if config.zero == 3 else 0.0)
    out["total"] = sum(out.values())
    return out
