"""The planner against measured runs on this machine (chapter 4, "Checked against
measurement").

For configurations that run here (CPU processes over gloo), two checks:

* **state bytes per rank** — for DDP and ZeRO-1/2/3 the bytes of parameters, gradients and
  optimizer state counted from the tensors each rank holds at the optimizer step
  (:func:`parcourse.bench.memory.measure`), beside :func:`.memory.state_bytes`: they must
  agree to the byte, on every rank. The same run measures the peak of a step, beside
  the ledger's prediction from a one-process peak (:func:`~parcourse.data_parallel.
  zero_ledger.predicted_peak`).
* **step time** — the median of repeated steps (the memory benchmark's; for pipelines the
  step-to-step times of the recorded timeline, the first two left out; for the other
  strategies the mean step of a ``train`` run of S + 2 steps minus one of 2 steps), beside :func:`.time.step_time` with this
  machine's measured α and β (:mod:`.hardware`) and its achievable FLOP/s *for this model
  at the size each rank computes, with K processes at once*: K workers, with the threads
  the strategies' workers get, each train the whole model on one micro-batch (b/M
  samples) at the same time, and FLOPs ÷ the median step is the rate (a CPU reaches its
  matmul peak only on large products, these layers are small, and K processes share the
  cores with each other and with whatever else runs). Nothing else is fitted.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from .. import launch
from ..bench import memory as bench_memory
from ..models import build_model
from ..training.loop import make_optimizer
from ..training import TrainConfig, train
from .hardware import Hardware, this_machine
from .memory import Config, stage_state_bytes, state_bytes
from .models import book_shape
from .time import step_time

KINDS = ("parameters", "gradients", "optimizer state")
ZERO = {"ddp": 0, "zero1": 1, "zero2": 2, "zero3": 3}
# strategy, model, workers, the planner's grid, TrainConfig options
TRAINED = (
    ("ddp", "simple", 2, Config(2), {}),
    ("pipeline-1f1b", "complex", 2, Config(1, pipeline=2, microbatches=4),
     {"microbatches": 4}),
    ("tensor", "gpt", 2, Config(1, tensor=2), {}),
    ("dp-pp", "complex", 4, Config(2, pipeline=2, microbatches=2),
     {"stages": 2, "microbatches": 2}),
)


def _sample(model: str, samples: int):
    if model == "gpt":
        tokens = torch.randint(256, (samples, 33))
        return tokens[:, :-1], tokens[:, 1:]
    return torch.rand(samples, 1, 28, 28), torch.randint(10, (samples,))


def rate_worker(rank: int, world_size: int, model: str, samples: int,
                repeats: int = 7) -> float:
    """FLOP/s of this worker training ``model`` (default sizes) on ``samples`` samples:
    training FLOPs ÷ the median step (forward, backward, Adam), no communication."""
    net = build_model(model, seed=0)
    optimizer = make_optimizer("adam", net.parameters(), 1e-3)
    x, y = _sample(model, samples)
    times = []
    for repeat in range(repeats + 1):
        start = time.perf_counter()
        optimizer.zero_grad()
        out = net(x)
        F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)).backward()
        optimizer.step()
        if repeat:
            times.append(time.perf_counter() - start)
    return book_shape(model).flops_per_sample * samples / statistics.median(times)


def achievable_flops(model: str, samples: int, workers: int) -> float:
    """The median over ``workers`` processes computing at once of :func:`rate_worker`."""
    return statistics.median(launch.run(rate_worker, workers, args=(model, samples),
                                        backend="gloo", verbose=False))


def for_workers(hw: Hardware, flops: float) -> Hardware:
    """This machine's profile with ``flops`` per process, all of it achievable."""
    return replace(hw, fp32_flops=flops, bf16_flops=flops, efficiency=1.0)


def pipeline_step(result) -> float:
    """The median of a pipeline's step-to-step times (its timeline), the first left out."""
    starts = {}
    for event in result.timeline:
        starts[event.step] = min(event.start, starts.get(event.step, event.start))
    ordered = [starts[k] for k in sorted(starts)]
    return statistics.median(b - a for a, b in zip(ordered[1:], ordered[2:]))


def _row(strategy, model, workers, config, batch, hw, measured, rates, held=None,
         formula=None, peak=None, predicted_peak=None, method="median of 5 steps"):
    samples = batch // (config.data * config.microbatches)
    if (model, samples, workers) not in rates:        # measured once per size
        rates[model, samples, workers] = achievable_flops(model, samples, workers)
    rate = rates[model, samples, workers]
    predicted = step_time(book_shape(model), config, for_workers(hw, rate), batch)
    return {"strategy": strategy, "model": model, "workers": workers,
            "config": config.label(), "held": held, "formula": formula,
            "peak": peak, "predicted_peak": predicted_peak,
            "measured_s": measured, "predicted_s": predicted["step"], "terms": predicted,
            "flops": rate, "held_from": "held tensors, every rank",
            "error": predicted["step"] / measured - 1, "method": method}


def validate(workers: int = 2, model: str = "complex", batch: int = 32, trained=TRAINED,
             steps: int = 8, hw: Hardware | None = None) -> list[dict]:
    """Rows of predicted vs measured: state bytes (every rank) and peak for DDP and ZeRO,
    step time for those and for ``trained`` (strategy, model, workers, grid, options)."""
    hw = hw or this_machine()
    shape = book_shape(model)
    per_rank = bench_memory.measure(workers, model, "adam", "float32", batch)
    rows, rates = [], {}
    for variant, zero in ZERO.items():
        config = Config(workers, zero=zero)
        formula = state_bytes(shape, config)
        held = [r[variant]["held"] for r in per_rank]
        r0 = per_rank[0][variant]
        rows.append(_row(variant, model, workers, config, batch, hw, r0["seconds"],
                         rates, held, formula, max(r[variant]["peak"] for r in per_rank),
                         r0["predicted_peak"]))
    for strategy, name, k, config, options in trained:
        def run(n):
            return train(TrainConfig(strategy=strategy, model=name, workers=k, steps=n,
                                     batch_size=batch, optimizer="adam", lr=1e-3,
                                     quiet=True, **options))
        result = run(steps + 2)
        if result.timeline:
            measured, method = pipeline_step(result), f"median of {steps} steps"
        else:        # two runs: the difference leaves out the first two steps' warm-up
            measured = (result.seconds - run(2).seconds) / steps
            method = f"mean of {steps} steps (after 2)"
            if measured <= 0:
                measured, method = result.seconds / (steps + 2), f"mean of {steps + 2} steps"
        row = _row(strategy, name, k, config, batch, hw, measured, rates, method=method)
        if result.stage_layers and config.tensor == 1:   # the run's own cut, counted
            stages = stage_state_bytes(name, result.stage_layers)
            row["held"] = [max(stages, key=lambda held: sum(held.values()))]
            row["formula"] = state_bytes(book_shape(name), config)
            row["held_from"] = "the run's stages"
        rows.append(row)
    return rows


def _kib(x) -> str:
    return f"{x / 1024:,.1f}"


def format_validation(rows: list[dict]) -> str:
    """The table: state bytes measured = predicted, peak, step time and the error."""
    lines = ["states: held tensors on every rank; (cut): the busiest stage of the run's own "
             "partition, counted",
             f"{'strategy':<14}{'model':<9}{'K':>2} {'states KiB, every rank (pred.)':<34}"
             f"{'peak KiB':>9}{'pred.':>9}{'step ms':>9}{'pred. ms':>9}{'error':>8}  measured"]
    for r in rows:
        if r["held"] is not None:
            total = [sum(h[k] for k in KINDS) for h in r["held"]]
            same = all(h == r["formula"] for h in r["held"])
            states = (f"{'/'.join(_kib(t) for t in total)} {'=' if same else '≠'} "
                      f"{_kib(sum(r['formula'][k] for k in KINDS))}"
                      + (" (cut)" if r["held_from"] == "the run's stages" else ""))
            peak = (f"{_kib(r['peak']):>9}{_kib(r['predicted_peak']):>9}"
                    if r["peak"] is not None else f"{'—':>9}{'—':>9}")
        else:
            states, peak = "—", f"{'—':>9}{'—':>9}"
        lines.append(f"{r['strategy']:<14}{r['model']:<9}{r['workers']:>2} {states:<34}{peak}"
                     f"{r['measured_s'] * 1e3:>9.1f}{r['predicted_s'] * 1e3:>9.1f}"
                     f"{r['error']:>+8.0%}  {r['method']}")
    return "\n".join(lines)
