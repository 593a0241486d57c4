"""Step time, bubble and idle-time accounting of every pipeline schedule, side by side
(chapter 5; ``python -m parcourse bench pipeline``).

The workload is the balanced one: the GPT (:mod:`parcourse.gpt`), whose blocks are
identical, on P = ``workers`` stages. Every variant — the naive split (M = 1), GPipe,
1F1B, interleaved 1F1B (V chunks per stage) and ZB-H1 for each M, with receives posted
early and, if asked, posted only when needed (the implementation before
:mod:`parcourse.model_parallel.messages` posted them early) — trains in the same worker
processes, in turn, for ``repeats`` rounds of ``steps`` steps
(:mod:`parcourse.bench.pipeline_runs`). Each round gives one value per variant, the mean
over its steps after the first; a row is the median over the rounds, with the smallest
and largest.

Per row: the step time and the speedup over the naive split; the measured bubble beside
the replay of the recorded passes with free messages (R₁ of
:mod:`parcourse.model_parallel.idle_time`) and with each message's recorded send (R₂),
how far the measurement is from each, the ideal replay
of equal stages (R₀) and (P − 1)/(V·M + P − 1); the most micro-batches (× chunks) a stage
held. A second table splits the idle time into the schedule's ideal bubble, stage
imbalance, variation of pass times, messages and the rest, with the measured time of one
``isend`` beside the α + nβ of a ping-pong fitted in the same run. The reference rows time
``torch.distributed.pipelining``'s schedules on the same model in the same rounds.
"""

from __future__ import annotations

import statistics
from dataclasses import replace

from .. import launch, tables
from ..model_parallel import idle_time, schedules
from ..training import TrainConfig
from ..training.pipeline import DEFAULT_CHUNKS, PIPELINES
from ..training.registry import validate
from .allreduce import measure_alpha_beta
from .pipeline_runs import bench_worker

DEFAULT_MICROBATCHES = (4, 8)
STRATEGIES = {"gpipe": "pipeline-gpipe", "1f1b": "pipeline-1f1b",
              "interleaved": "pipeline-interleaved", "zb-h1": "pipeline-zb-h1"}
GPT_SIZES = dict(layers=8, width=256, heads=4, sequence=32)


def default_config(workers: int = 2, steps: int = 6, batch_size: int = 64,
                   model: str = "gpt", partition: str = "parameters") -> TrainConfig:
    """The benchmark's run: the GPT of 8 identical blocks of width 256 over windows of 32
    bytes (or another model) on P = ``workers`` stages, in float32.

    The sizes make messages small beside the passes, so that the schedule's own bubble
    is what the measurement tests: a pass's FLOPs per byte it sends grow with the width
    and with the blocks per chunk. Measured on a 2-core machine, interleaved 1F1B at
    M = 8: with 4 blocks of width 64 (windows of 64, batch 256) the messages and their
    delays took 0.044 of P × step, most of its ideal bubble of 0.053; with these sizes
    0.020 against 0.057, at about twice the step time (0.65 s against 0.35 s).
    """
    sizes = GPT_SIZES if model == "gpt" else {}
    return TrainConfig(workers=workers, stages=workers, steps=steps, batch_size=batch_size,
                       model=model, partition=partition, optimizer="adam", lr=0.001,
                       quiet=True, **sizes)


def variants(base: TrainConfig, microbatches=DEFAULT_MICROBATCHES,
             names=tuple(STRATEGIES), receives=("step",), chunks: int = DEFAULT_CHUNKS):
    """The configurations to compare: the naive split first, then every (M, receives,
    schedule); each one validated (a variant the model cannot run is an error)."""
    found = [replace(base, strategy="pipeline-gpipe", microbatches=1)]
    for m in microbatches:
        for when in receives:
            for name in names:
                found.append(replace(base, strategy=STRATEGIES[name], microbatches=m,
                                     receives=when,
                                     chunks=chunks if name == "interleaved" else 0))
    for config in found:
        validate(config)
    return found


def _median_and_range(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def summarize(config: TrainConfig, run: dict, repeats: int, steps: int, alpha_beta) -> dict:
    """One row from one variant's recorded rounds."""
    name = PIPELINES[config.strategy].schedule
    itemsize = 8 if config.dtype == "float64" else 4
    link = idle_time.message_seconds(alpha_beta, run["shapes"], itemsize)
    stages, m, chunks = config.workers, config.microbatches, run["chunks"]
    per_round = []
    for r in range(repeats):
        kept = [e for e in run["timeline"] if r * steps < e.step < (r + 1) * steps]
        accounts = idle_time.account_steps(kept, name, stages, m, chunks, link,
                                           skip_first=False, messages=run["messages"])
        per_round.append({
            "step_ms": 1e3 * statistics.mean(a.span for a in accounts),
            "bubble": statistics.mean(a.bubble for a in accounts),
            "replay": statistics.mean(a.replay_bubble() for a in accounts),
            "with_messages": statistics.mean(a.replay_bubble("messages") for a in accounts),
            "ideal": statistics.mean(a.replay_bubble("ideal") for a in accounts),
            **{part: statistics.mean(a.share(part) for a in accounts)
               for part in idle_time.PARTS},
            **{part: statistics.mean(a.rest_split()[part] for a in accounts)
               for part in ("late", "between")},
            "send_us": 1e6 * statistics.mean(a.seconds_per_send() for a in accounts)})
    row = {key: _median_and_range([r[key] for r in per_round]) for key in per_round[0]}
    return {"schedule": "naive split" if m == 1 else name, "M": m, "V": chunks,
            "receives": config.receives,
            "theory": schedules.bubble_theory(stages, m, chunks),
            "peak_in_flight": max(run["peak_in_flight"]), "link": link, **row}


def measure(base: TrainConfig, microbatches=DEFAULT_MICROBATCHES, names=tuple(STRATEGIES),
            receives=("step",), repeats: int = 3, torch_reference: bool = False,
            alpha_beta=None) -> dict:
    """Run every variant (and the torch references) ``repeats`` rounds of ``base.steps``
    steps; returns ``{"rows", "references", "alpha_beta", "configs", "runs"}`` (each run's
    timeline, messages, peaks in flight, cut and boundary shapes, in the order of
    ``configs``)."""
    configs = variants(base, microbatches, names, receives)
    references = []
    if torch_reference:
        for m in microbatches:
            for name, chunks in (("1f1b", 1), ("interleaved", DEFAULT_CHUNKS),
                                 ("zero-bubble", DEFAULT_CHUNKS)):
                references.append((replace(base, microbatches=m), name, chunks))
    alpha_beta = alpha_beta or measure_alpha_beta()
    runs = launch.run(bench_worker, base.workers,
                      args=(configs, references, repeats, base.steps), backend="gloo",
                      timeout=base.timeout, verbose=False)[0]
    rows = [summarize(c, run, repeats, base.steps, alpha_beta)
            for c, run in zip(configs, runs["variants"])]
    naive = rows[0]["step_ms"][0]
    for row in rows:
        row["speedup"] = naive / row["step_ms"][0]
    ref_rows = []
    for (config, name, chunks), seconds in zip(references, runs["references"]):
        per_round = [1e3 * statistics.mean(t for step, t in seconds
                                           if r * base.steps < step < (r + 1) * base.steps)
                     for r in range(repeats)]
        ref_rows.append({"schedule": f"torch {name}", "M": config.microbatches, "V": chunks,
                         "step_ms": _median_and_range(per_round)})
    return {"rows": rows, "references": ref_rows, "alpha_beta": alpha_beta,
            "configs": configs, "runs": runs["variants"]}


def _name(row: dict) -> str:
    return row["schedule"] + ("" if row.get("receives", "step") == "step"
                              else f" ({row['receives']})")


def _ms(cell) -> str:
    median, low, high = cell
    digits = 0 if median >= 100 else 1
    return f"{median:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def _gap(measured: float, replayed: float) -> str:
    return f"{measured / replayed - 1:+.0%}" if replayed else "–"


STEP_HEADER = ("schedule", "M", "V", "step ms (min–max)", "speedup", "in flight",
               "α+nβ µs", "isend µs")
BUBBLE_HEADER = ("schedule", "M", "V", "bubble", "replay", "vs it", "+ sends", "vs it",
                 "ideal", "formula")
IDLE_HEADER = ("schedule", "M", "bubble", *idle_time.PARTS[:-1], "late", "between")


def step_cells(measured: dict) -> list[list[str]]:
    """The first table's rows: step time, speedup over the naive split, the peak of
    micro-batches (× chunks) in flight, and one message's cost — the fit's α + nβ beside
    what an ``isend`` took; then the torch references' step times. A schedule whose
    receives are not posted at the step's start says how they were."""
    rows = [[_name(r), str(r["M"]), str(r["V"]), _ms(r["step_ms"]), f"{r['speedup']:.2f}",
             str(r["peak_in_flight"]), f"{1e6 * r['link']['F']:.0f}",
             f"{r['send_us'][0]:.0f}"] for r in measured["rows"]]
    for r in measured["references"]:
        rows.append([r["schedule"], str(r["M"]), str(r["V"]), _ms(r["step_ms"]),
                     *["–"] * (len(STEP_HEADER) - 4)])
    return rows


def bubble_cells(measured: dict) -> list[list[str]]:
    """The second table's rows: the measured bubble beside the replays (free messages;
    the recorded sends), how far it is from each, the ideal replay and the formula."""
    return [[_name(r), str(r["M"]), str(r["V"]), f"{r['bubble'][0]:.3f}",
             f"{r['replay'][0]:.3f}", _gap(r["bubble"][0], r["replay"][0]),
             f"{r['with_messages'][0]:.3f}", _gap(r["bubble"][0], r["with_messages"][0]),
             f"{r['ideal'][0]:.3f}", f"{r['theory']:.3f}"] for r in measured["rows"]]


def idle_cells(measured: dict) -> list[list[str]]:
    """The third table's rows: the idle time split, as shares of P × step (the rest as
    late + between)."""
    return [[_name(r), str(r["M"]), f"{r['bubble'][0]:.3f}",
             *[f"{r[p][0]:.3f}" for p in (*idle_time.PARTS[:-1], "late", "between")]]
            for r in measured["rows"]]


def format_rows(measured: dict) -> str:
    """The three tables for a terminal: step time and message cost; bubbles beside their
    replays; the idle time, split."""
    return "\n".join([tables.text(STEP_HEADER, step_cells(measured)), "",
                      f"bubbles, as shares of P × step; the fit: α + nβ with "
                      f"{measured['alpha_beta']}",
                      tables.text(BUBBLE_HEADER, bubble_cells(measured)), "",
                      "idle time, as shares of P × step (medians over the rounds; "
                      "bubble = ideal + imbalance + variation + messages + late + "
                      "between); messages as their sends took",
                      tables.text(IDLE_HEADER, idle_cells(measured))])
