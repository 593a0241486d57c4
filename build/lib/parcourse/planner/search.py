"""The search: every data × tensor × pipeline grid, ZeRO stage, precision, recomputation
and micro-batch count for a model on some hardware, predicted, filtered and ranked
(chapter 4, "A planner"; ``python -m parcourse plan``).

A grid R·T·P must use every device; T divides the heads and stays inside a node (its
all-reduces are on every layer's critical path); P divides the layers; the global batch B
splits into R·M micro-batches. ZeRO shards over the R replicas (stages 1–3 need R > 1; with
a pipeline only stage 1, as Megatron-LM's distributed optimizer). Pipelines take
M ∈ {P, 2P, 4P, 8P}, the rest M = 1. A configuration fits if its total bytes per rank
(:mod:`.memory`) are at most the device's memory; the others are dropped, each with its
shortfall. The rest are ranked by predicted step time (:mod:`.time`), and the best's
reason names its largest term and what the runner-up loses against it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .hardware import GIB, Hardware
from .memory import PRECISIONS, Config, memory_per_rank
from .models import ModelShape
from .time import step_time


@dataclass
class Candidate:
    config: Config
    memory: dict
    time: dict
    fits: bool
    shortfall: float       # bytes over the device's memory (0 if it fits)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def grids(model: ModelShape, hw: Hardware, batch: int, tensor=None, pipeline=None):
    """Every (R, T, P) that uses all devices and the model allows."""
    out = []
    for t in _divisors(hw.devices):
        if t > hw.devices_per_node or (model.transformer and model.heads % t) \
                or (not model.transformer and t > 1) or (tensor and t != tensor):
            continue
        for p in _divisors(hw.devices // t):
            if model.layers % p or (pipeline and p != pipeline):
                continue
            r = hw.devices // (t * p)
            if batch % r == 0 and (batch // r) % p == 0:   # at least M = P micro-batches
                out.append((r, t, p))
    return out


def configurations(model: ModelShape, hw: Hardware, batch: int, tensor=None, pipeline=None,
                   precisions=PRECISIONS):
    for r, t, p in grids(model, hw, batch, tensor, pipeline):
        stages = (0, 1, 2, 3) if r > 1 and p == 1 else (0, 1) if r > 1 else (0,)
        micro = [m for m in (p, 2 * p, 4 * p, 8 * p) if (batch // r) % m == 0] if p > 1 \
            else [1]
        for zero in stages:
            for precision in precisions:
                for recompute in (False, True):
                    for m in micro:
                        yield Config(r, t, p, zero, precision, recompute, m)


def check_grid(model: ModelShape, hw: Hardware, batch: int, tensor=None, pipeline=None):
    """Refuse, in one line, a fixed --tensor or --pipeline that no grid allows."""
    if tensor is not None:
        if tensor < 1 or hw.devices % tensor or tensor > hw.devices_per_node:
            raise ConfigError(f"--tensor {tensor} does not fit {hw.devices} devices of "
                              f"{hw.devices_per_node} per node: use a divisor of "
                              f"{min(hw.devices, hw.devices_per_node)}")
        if model.transformer and model.heads % tensor:
            raise ConfigError(f"--tensor {tensor} does not divide the {model.heads} heads: "
                              f"use one of "
                              f"{', '.join(map(str, _divisors(model.heads)))}")
        if not model.transformer and tensor > 1:
            raise ConfigError(f"--tensor {tensor}: the {model.name} model has no heads to "
                              f"split: use --tensor 1")
    if pipeline is not None and (pipeline < 1 or model.layers % pipeline
                                 or hw.devices % pipeline):
        raise ConfigError(f"--pipeline {pipeline} must divide both the {model.layers} layers "
                          f"and the {hw.devices} devices")
    if batch < 1:
        raise ConfigError(f"--batch-size must be at least 1 (got {batch})")
    if not grids(model, hw, batch, tensor, pipeline):
        raise ConfigError(f"no grid of {hw.devices} devices splits --batch-size {batch} over "
                          f"its replicas and micro-batches: use a multiple of {hw.devices}")


def plan(model: ModelShape, hw: Hardware, batch: int, tensor=None, pipeline=None,
         precisions=PRECISIONS) -> list[Candidate]:
    """Every configuration, predicted: those that fit first, fastest first."""
    check_grid(model, hw, batch, tensor, pipeline)
    out = []
    for config in configurations(model, hw, batch, tensor, pipeline, precisions):
        memory = memory_per_rank(model, config, batch)
        short = max(0.0, memory["total"] - hw.memory)
        out.append(Candidate(config, memory, step_time(model, config, hw, batch),
                             short == 0, short))
    out.sort(key=lambda c: (not c.fits, float(f"{c.time['step']:.3g}") if c.fits
                            else c.shortfall, c.memory["total"]))   # ties: the smaller
    if not out[0].fits:
        least = out[0]
        need = -(-least.memory["total"] * hw.devices // hw.memory)
        raise ConfigError(
            f"no configuration fits in {hw.memory / GIB:.1f} GiB per device: the smallest, "
            f"{least.config.label()}, needs {least.memory['total'] / GIB:.1f} GiB, "
            f"{least.shortfall / GIB:.1f} GiB too many; use more devices (about "
            f"{int(need)} at this size), a smaller --batch-size, or bigger devices")
    return out


TERMS = ("compute", "bubble", "pipeline", "tensor", "data")


def reason(ranked: list[Candidate]) -> str:
    """Why the best configuration wins: its largest term, and the runner-up's loss."""
    best = ranked[0]
    top = max(TERMS, key=lambda k: best.time[k])
    share = best.time[top] / best.time["step"]
    text = f"{best.config.label()} wins: {top} is {share:.0%} of its step"
    fitting = [c for c in ranked[1:] if c.fits]
    if fitting:
        second = fitting[0]
        worse = max(TERMS, key=lambda k: second.time[k] - best.time[k])
        text += (f"; the runner-up {second.config.label()} takes "
                 f"{second.time['step'] / best.time['step']:.2f}× as long, mostly in {worse}")
    return text


def format_plan(ranked: list[Candidate], hw: Hardware, top: int = 10) -> str:
    """The ranked table: memory and time per configuration (predictions), the reason."""
    fits = [c for c in ranked if c.fits]
    dropped = [c for c in ranked if not c.fits]
    big = max((c.memory["total"] for c in fits), default=GIB) >= GIB
    unit, scale = ("GiB", GIB) if big else ("MiB", 1 << 20)
    head = (f"{'#':>3} {'configuration':<30}{'states ' + unit:>11}{'activ. ' + unit:>11}"
            f"{'total ' + unit:>10}{'step s':>10}{'compute':>9}{'bubble':>8}{'pipe':>8}"
            f"{'tensor':>8}{'data':>8}")
    lines = [f"predicted for {hw.devices} × {hw.name} ({hw.memory / GIB:.0f} GiB each, "
             f"{hw.efficiency:.0%} of peak FLOP/s assumed" +
             (", gradient traffic overlapped with backward)" if hw.overlap else ")"), head]
    for i, c in enumerate(fits[:top], 1):
        states = sum(c.memory[k] for k in ("parameters", "gradients", "optimizer state"))
        lines.append(f"{i:>3} {c.config.label():<30}{states / scale:>11.2f}"
                     f"{c.memory['activations'] / scale:>11.2f}"
                     f"{c.memory['total'] / scale:>10.2f}"
                     f"{c.time['step']:>10.3g}" + "".join(
                         f"{c.time[k] / c.time['step']:>{w}.0%}"
                         for k, w in zip(TERMS, (9, 8, 8, 8, 8))))
    lines.append(f"{len(fits)} configurations fit, {len(dropped)} dropped"
                 + (f" (the closest is {dropped[0].shortfall / GIB:.1f} GiB over: "
                    f"{dropped[0].config.label()})" if dropped else ""))
    lines.append(reason(ranked))
    return "\n".join(lines)
