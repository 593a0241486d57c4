"""Step time of one parallel configuration (chapter 4, "Step time").

Ranks are numbered tensor fastest, then data, then pipeline (Megatron-LM's order), so a
tensor group is T neighbours, a data group R ranks T apart and a pipeline P ranks T·R
apart; a group that spans nodes pays the network's α and β (:mod:`.hardware`).

* **compute** = FLOPs ÷ achievable FLOP/s: F·b/(T·P) per rank for b = B/R samples per
  replica (F: training FLOPs per sample, 6N + 12·L·d·s per token, :mod:`.models`; the
  share a tensor rank computes whole, F_rep — the book's GPT keeps its head whole — is
  not divided by T), × 4/3 with recomputation (a second forward).
* **bubble** — with a pipeline the step lasts compute ÷ (1 − β_P), β_P = (P − 1)/(M + P − 1)
  the idle share of GPipe and 1F1B (:func:`parcourse.model_parallel.schedules.bubble_theory`).
* **pipeline messages** — each of the M + P − 1 slots of the critical path sends one
  micro-batch's activation (b/M·s·h·e bytes) forward and its gradient back: 2(M + P − 1)
  messages of α + nβ.
* **tensor** — 4 ring all-reduces of b/M·s·h·e bytes per layer and micro-batch (two in
  forward, two in backward; sequence parallelism's all-gathers and reduce-scatters move
  the same bytes), 6 with recomputation; on the critical path.
* **data** — the gradients of the rank's Ψ parameters: a ring all-reduce (ZeRO-0), a
  reduce-scatter and an all-gather (ZeRO-1, 2: the same bytes), two all-gathers and a
  reduce-scatter (ZeRO-3), one collective per bucket or group. Assumed overlap: on a GPU the
  traffic runs behind the backward pass (ZeRO-3's forward gathers behind the forward), so
  only what exceeds it counts; on this CPU the same cores compute and communicate, so all
  of it counts. FSDP2 (``engine="fsdp"``) works per unit — each layer with parameters,
  :func:`parcourse.training.fsdp.units` — gathering a unit's parameters before its forward
  and again before its backward, and reducing its gradient after: 2 all-gathers and one
  reduce-scatter per unit, with gloo's own collectives (its reduce-scatter an all-reduce
  of the unit's whole gradient, :mod:`.measured`), and the unit's own work in Python
  where the profile measured it.

* **loss** — the loop's all-reduce of the step's loss over all ranks (8 bytes: a few
  µs on a GPU, a fraction of a millisecond with gloo).

Each collective's time is the profile's (:meth:`.hardware.Hardware.collective`): measured
per call where the profile has a table for it (this machine), the α–β ring otherwise.

The optimizer step (memory-bound, ~16 bytes read and written per parameter) is left
out: it is small next to the rest for the models planned here.
"""

from __future__ import annotations

from ..data_parallel.flat_shards import group_parameters
from ..model_parallel.schedules import bubble_theory
from ..models import build_model
from .hardware import Hardware
from .memory import Config, element
from .models import ModelShape

BUCKET_BYTES = 25 << 20   # DDP's default bucket


def collective_counts(model: ModelShape, config: Config) -> int:
    """Collectives per gradient pass: the ZeRO engine's groups for the book's models
    (one per parameter under ZeRO-3, 1 MiB buckets otherwise), DDP's 25 MiB buckets."""
    if config.zero and model.book in ("simple", "complex") and config.pipeline == 1 \
            and config.tensor == 1:
        grouped = group_parameters(build_model(model.book), None if config.zero == 3
                                   else 1 << 20)
        return len(grouped)
    nbytes = model.parameters / (config.tensor * config.pipeline) * element(config.precision)
    if config.zero == 3:
        return max(1, model.layers // config.pipeline)
    return max(1, -(-int(nbytes) // BUCKET_BYTES))


def fsdp_unit_bytes(model: ModelShape, config: Config) -> list[float]:
    """Bytes of each FSDP2 unit's parameters (padded to K equal dim-0 chunks of each): the
    book's models by their layers, shapes as one unit per layer."""
    size = element(config.precision)
    if model.book in ("simple", "complex", "gpt") and config.pipeline == config.tensor == 1:
        from ..training.fsdp import units

        r = config.data
        return [sum(size * -(-p.shape[0] // r) * r * p[0].numel()
                    for p in {id(p): p for m in unit for p in m.parameters()}.values())
                for unit in units(build_model(model.book))]
    per_rank = model.parameters / (config.tensor * config.pipeline) * size
    layers = max(1, model.layers // config.pipeline)
    return [per_rank / layers] * layers


def fsdp_unit_seconds(nbytes: float, r: int, stride: int, hw: Hardware) -> float:
    """One FSDP2 unit of ``nbytes`` per step: 2 all-gathers and an all-reduce of its
    bytes; where the profile measured what a unit of n₀ bytes costs whole (hooks and its
    collectives, :func:`.measured.fsdp_unit_worker`), that plus the collectives' growth
    from n₀ to ``nbytes``."""
    def collectives(n):
        return 2 * hw.collective("all_gather gloo", n, r, stride) \
            + hw.collective("all_reduce", n, r, stride)   # FSDP runs alone: no grid

    unit = (hw.collectives or {}).get("fsdp unit", {}).get(str(r))
    if not unit:
        return collectives(nbytes)
    small, seconds = unit[0]
    return seconds + collectives(nbytes) - collectives(small)


def data_seconds(model: ModelShape, config: Config, hw: Hardware) -> float:
    """The data-parallel gradient (and ZeRO-3 parameter) traffic of one step."""
    r = config.data
    if r == 1:
        return 0.0
    if config.engine == "fsdp":
        return sum(fsdp_unit_seconds(n, r, config.tensor, hw)
                   for n in fsdp_unit_bytes(model, config))
    groups = collective_counts(model, config)
    nbytes = model.parameters / (config.tensor * config.pipeline) * element(config.precision)
    per = nbytes / groups
    if config.zero == 0:
        return groups * hw.collective("all_reduce", per, r, config.tensor, config.devices)
    gather = hw.collective("all_gather", per, r, config.tensor)
    scatter = hw.collective("reduce_scatter", per, r, config.tensor)
    return groups * (scatter + gather * (2 if config.zero == 3 else 1))


def tensor_seconds(model: ModelShape, config: Config, hw: Hardware, batch: int) -> float:
    t = config.tensor
    if t == 1 or not model.transformer:
        return 0.0
    micro = batch / (config.data * config.microbatches)
    nbytes = micro * model.sequence * model.width * element(config.precision)
    calls = (6 if config.recompute else 4) * (model.layers / config.pipeline)
    return config.microbatches * calls * hw.collective("all_reduce", nbytes, t,
                                                        processes=config.devices)


def pipeline_seconds(model: ModelShape, config: Config, hw: Hardware, batch: int) -> float:
    p, m = config.pipeline, config.microbatches
    if p == 1:
        return 0.0
    alpha, beta = hw.link(2, config.tensor * config.data)
    micro = batch / (config.data * m)
    width = model.sequence * model.width if model.transformer else \
        model.activation_per_sample / max(2 * model.layers, 1) / 4
    nbytes = micro * width * element(config.precision) / config.tensor
    return 2 * (m + p - 1) * (alpha + nbytes * beta)


def step_time(model: ModelShape, config: Config, hw: Hardware, batch: int) -> dict:
    """Seconds of one step by term, and their sum ("step")."""
    flops = model.rank_flops_per_sample(config.tensor) * batch / config.data \
        / config.pipeline
    compute = flops / hw.flops(config.precision) * (4 / 3 if config.recompute else 1)
    bubble = compute / (1 - bubble_theory(config.pipeline, config.microbatches)) - compute
    data = data_seconds(model, config, hw)
    exposed = data
    if hw.overlap:
        hidden = compute if config.zero == 3 else compute * 2 / 3
        exposed = max(0.0, data - hidden)
    terms = {"compute": compute, "bubble": bubble,
             "pipeline": pipeline_seconds(model, config, hw, batch),
             "tensor": tensor_seconds(model, config, hw, batch),
             "data": exposed,
             "loss": hw.collective("all_reduce", 8, config.devices)}
    terms["step"] = sum(terms.values())
    terms["data (all)"] = data
    return terms
