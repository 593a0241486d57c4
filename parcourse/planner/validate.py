"""The planner against measured runs on this machine (chapter 4, "Checked against
measurement").

For configurations that run here (CPU processes over gloo), two checks:

* **state bytes per rank** — for DDP and ZeRO-1/2/3 the bytes of parameters, gradients and
  optimizer state counted from the tensors each rank holds at the optimizer step
  (:func:`parcourse.bench.memory.measure`), beside :func:`.memory.state_bytes`: they must
  agree to the byte, on every rank. The same run measures the peak of a step, beside
  the ledger's prediction from a one-process peak (:func:`~parcourse.data_parallel.
  zero_ledger.predicted_peak`). For the tensor-parallel, pipelined and FSDP runs each rank
  counts the tensors it holds at the end of the run (``TrainResult.held``), beside the
  exact split of :func:`.memory.state_bytes` (a pipeline's busiest stage) or
  :func:`.memory.fsdp_state_bytes` (every rank).
* **step time** — the median of a ``train`` run's steps, the first two left out (for
  pipelines the step-to-step times of the recorded timeline, for the others the loop's
  own clock), beside :func:`.time.step_time` with this machine's measured α and β and
  collectives (:mod:`.hardware`, :mod:`.measured`) and its achievable FLOP/s *for this
  case*, measured right before the run: K processes at once, each training what one rank
  computes on one micro-batch, every step followed by the bytes the case moves in a step
  (:mod:`.rate`). Nothing else is fitted.
"""

from __future__ import annotations

import statistics
from dataclasses import replace


from .. import tables
from ..bench import memory as bench_memory
from ..training import TrainConfig, train
from .hardware import Hardware, this_machine
from .memory import Config, fsdp_state_bytes, state_bytes
from .models import book_shape
from .rate import achievable_flops
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
    ("fsdp", "complex", 2, Config(2, zero=3, engine="fsdp"), {}),
    ("dp-pp-tp", "gpt", 4, Config(1, tensor=2, pipeline=2, microbatches=2),
     {"stages": 2, "tensor": 2, "microbatches": 2}),
)


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


def _case(strategy, model, workers, config, options, held=None, formula=None, peak=None,
          predicted_peak=None) -> dict:
    return {"strategy": strategy, "model": model, "workers": workers, "grid": config,
            "options": options, "config": config.label(), "held": held, "formula": formula,
            "peak": peak, "predicted_peak": predicted_peak,
            "exact": None, "rounds": []}


def _time_round(case: dict, batch: int, steps: int, hw: Hardware,
                traffic: bool) -> None:
    """One round of a case: the FLOP/s that its workers reach now, then its run, then the
    prediction with that rate (the two measured moments apart, under the same load)."""
    config, model = case["grid"], case["model"]
    rate = achievable_flops(model, batch // (config.data * config.microbatches), config,
                            traffic, case["strategy"])
    measured, method, result = step_seconds(case["strategy"], model, case["workers"], batch,
                                            steps, case["options"])
    predicted = step_time(book_shape(model), config, for_workers(hw, rate), batch)
    case["rounds"].append({"measured": measured, "predicted": predicted, "flops": rate})
    case["method"], case["result"] = method, result


def _exact(held: list | None, formula) -> bool | None:
    """Held = predicted: per rank (a list of formulas), every rank (ZeRO), or the busiest
    rank (a pipeline's busiest stage)."""
    if held is None:
        return None
    if isinstance(formula, list):
        return held == formula
    if len({tuple(sorted(h.items())) for h in held}) == 1:
        return all(h == formula for h in held)
    return max(held, key=lambda h: sum(h.values())) == formula


def _summary(case: dict) -> dict:
    """The case's row: the round whose error is the median of the rounds' (its measured
    and predicted step, so that the row's numbers agree with its error), and every
    round's error."""
    rounds = case.pop("rounds")
    middle = sorted(rounds, key=lambda r: r["predicted"]["step"] / r["measured"])
    chosen = middle[len(middle) // 2]
    case.pop("result", None)
    return {**case, "measured_s": chosen["measured"], "predicted_s": chosen["predicted"]["step"],
            "terms": chosen["predicted"], "flops": chosen["flops"],
            "error": chosen["predicted"]["step"] / chosen["measured"] - 1,
            "errors": [r["predicted"]["step"] / r["measured"] - 1 for r in rounds],
            "method": f"{case['method']}; the round of the median error of {len(rounds)}"}


def step_seconds(strategy: str, model: str, workers: int, batch: int, steps: int,
                 options: dict):
    """(median step seconds, how it was measured, the run) of a ``train`` run of
    steps + 2 steps: a pipeline's from its timeline, the others' from the loop's clock,
    the first two steps left out (warm-up)."""
    result = train(TrainConfig(strategy=strategy, model=model, workers=workers,
                               steps=steps + 2, batch_size=batch, optimizer="adam", lr=1e-3,
                               quiet=True, **options))
    if result.timeline:
        return pipeline_step(result), f"{steps} steps (timeline)", result
    return statistics.median(result.step_seconds[2:]), f"{steps} steps (after 2)", result


def validate(workers: int = 2, model: str = "complex", batch: int = 32, trained=TRAINED,
             steps: int = 16, hw: Hardware | None = None, rounds: int = 3,
             variants=tuple(ZERO), traffic: bool = True) -> list[dict]:
    """Rows of predicted vs measured: state bytes (every rank) and peak for ``variants``
    (DDP and ZeRO-1/2/3 on ``model``), step time for those and for ``trained`` (strategy,
    model, workers, grid, options).

    Step times: ``rounds`` rounds, each running every case once (rate, then run), so that
    a change of the machine's load falls on all of them; a row's error is the median of
    its rounds' errors. ``traffic``: the rate is measured with the case's bytes moved
    between its steps (:func:`.rate.rate_worker`)."""
    hw = hw or this_machine()
    shape = book_shape(model)
    per_rank = (bench_memory.measure(workers, model, "adam", "float32", batch,
                                     variants=tuple(variants)) if variants else [])
    cases = []
    for variant in variants:
        config = Config(workers, zero=ZERO[variant])
        cases.append(_case(variant, model, workers, config, {},
                           [r[variant]["held"] for r in per_rank], state_bytes(shape, config),
                           max(r[variant]["peak"] for r in per_rank),
                           per_rank[0][variant]["predicted_peak"]))
    cases += [_case(strategy, name, k, config, options)
              for strategy, name, k, config, options in trained]
    for _ in range(rounds):
        for case in cases:
            _time_round(case, batch, steps, hw, traffic)
    for case in cases:
        result, config = case["result"], case["grid"]
        if result.held:                        # the run's ranks counted their own tensors
            case["held"] = result.held
            if case["strategy"] == "fsdp":
                case["formula"] = fsdp_state_bytes(case["model"], case["workers"])
            else:                              # the busiest rank against the busiest stage
                case["formula"] = state_bytes(book_shape(case["model"]), config)
        case["exact"] = _exact(case["held"], case["formula"])
    return [_summary(case) for case in cases]


def _kib(x) -> str:
    return f"{x / 1024:,.1f}"


def _spread(errors: list[float]) -> str:
    return f"{min(errors):+.0%}…{max(errors):+.0%}"


MEMORY_HEADER = ("strategy", "model", "K", "states KiB, each rank", "predicted", "peak KiB",
                 "predicted")
TIME_HEADER = ("strategy", "model", "K", "step ms", "predicted", "compute + bubble",
               "communication", "error", "rounds")
COMPUTE = ("compute", "bubble")   # .time.step_time's terms in the "compute + bubble" column


def memory_cells(rows: list[dict]) -> list[list[str]]:
    """One row of cells per case that counted its tensors, for :data:`MEMORY_HEADER`: the
    states each rank counted ("=" when they are the prediction, to the byte) and the
    prediction (each distinct value), the peak of a step and its prediction."""
    cells = []
    for r in rows:
        if r["held"] is None:
            continue
        formula = r["formula"] if isinstance(r["formula"], list) else [r["formula"]]
        totals = sorted({sum(f[k] for k in KINDS) for f in formula}, reverse=True)
        states = ("= " if r["exact"] else "≠ ") + " / ".join(
            _kib(sum(h[k] for k in KINDS)) for h in r["held"])
        peak, peak_predicted = "—", "—"
        if r["peak"] is not None:
            peak, peak_predicted = _kib(r["peak"]), _kib(r["predicted_peak"])
        cells.append([r["strategy"], r["model"], str(r["workers"]), states,
                      " / ".join(_kib(t) for t in totals), peak, peak_predicted])
    return cells


def time_cells(rows: list[dict]) -> list[list[str]]:
    """One row of cells per case, for :data:`TIME_HEADER`: the measured and predicted step
    (the median round's), the prediction's compute (with a pipeline's bubble) and its
    communication, its error and the rounds' spread."""
    cells = []
    for r in rows:
        compute = sum(r["terms"][k] for k in COMPUTE)
        cells.append([r["strategy"], r["model"], str(r["workers"]),
                      f"{r['measured_s'] * 1e3:.1f}", f"{r['predicted_s'] * 1e3:.1f}",
                      f"{compute * 1e3:.1f}", f"{(r['predicted_s'] - compute) * 1e3:.1f}",
                      f"{r['error']:+.0%}", _spread(r["errors"])])
    return cells


def format_validation(rows: list[dict]) -> str:
    """Both tables for a terminal (:func:`memory_cells`, :func:`time_cells`), with how
    they were measured."""
    methods = sorted({r["method"] for r in rows})
    return (tables.text(MEMORY_HEADER, memory_cells(rows)) + "\nstates: the tensors each "
            "rank holds, counted by the rank, in rank order (a pipeline: predicted for its "
            "busiest stage)\n\n" + tables.text(TIME_HEADER, time_cells(rows))
            + "\nstep: " + "; ".join(methods))
