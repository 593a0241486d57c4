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
:mod:`parcourse.model_parallel.idle_time`) and with messages of α + nβ (R₂; α and β from a
ping-pong fitted in the same run), how far the measurement is from each, the ideal replay
of equal stages (R₀) and (P − 1)/(V·M + P − 1); the most micro-batches (× chunks) a stage
held. A second table splits the idle time into the schedule's ideal bubble, stage
imbalance, variation of pass times, messages and the rest, with the measured time of one
``isend`` beside α + nβ. The reference rows time
``torch.distributed.pipelining``'s schedules on the same model in the same rounds.
"""

from __future__ import annotations

import statistics
from dataclasses import replace

from .. import launch
from ..model_parallel import idle_time, schedules
from ..training import TrainConfig
from ..training.pipeline import DEFAULT_CHUNKS, PIPELINES
from ..training.registry import validate
from .allreduce import measure_alpha_beta
from .pipeline_runs import bench_worker

DEFAULT_MICROBATCHES = (4, 8)
STRATEGIES = {"gpipe": "pipeline-gpipe", "1f1b": "pipeline-1f1b",
              "interleaved": "pipeline-interleaved", "zb-h1": "pipeline-zb-h1"}
GPT_SIZES = dict(layers=4, width=64, heads=4, sequence=64)


def default_config(workers: int = 2, steps: int = 6, batch_size: int = 64,
                   model: str = "gpt", partition: str = "parameters") -> TrainConfig:
    """The benchmark's run: the GPT of 4 identical blocks of width 64 over windows of 64
    bytes (or another model) on P = ``workers`` stages, in float32."""
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


def _ms(cell) -> str:
    median, low, high = cell
    return f"{median:7.1f} [{low:.1f}–{high:.1f}]"


def format_rows(measured: dict) -> str:
    """Two fixed-width tables: step time and bubbles; the idle time, split."""
    rows = measured["rows"]
    lines = [f"{'schedule':>12} {'M':>2} {'V':>2} {'receives':>8} "
             f"{'step ms [min–max]':>22} {'speedup':>7} {'bubble':>6} {'replay':>6} "
             f"{'vs it':>6} {'+msgs':>6} {'vs it':>6} {'ideal':>6} {'formula':>7} "
             f"{'in flight':>9}"]
    for r in rows:
        gaps = [r["bubble"][0] / r[key][0] - 1 if r[key][0] else float("nan")
                for key in ("replay", "with_messages")]
        lines.append(f"{r['schedule']:>12} {r['M']:>2} {r['V']:>2} {r['receives']:>8} "
                     f"{_ms(r['step_ms']):>22} {r['speedup']:>7.2f} {r['bubble'][0]:>6.3f} "
                     f"{r['replay'][0]:>6.3f} {gaps[0]:>+6.0%} {r['with_messages'][0]:>6.3f} "
                     f"{gaps[1]:>+6.0%} {r['ideal'][0]:>6.3f} {r['theory']:>7.3f} "
                     f"{r['peak_in_flight']:>9}")
    for r in measured["references"]:
        lines.append(f"{r['schedule']:>17} {r['M']:>2} {r['V']:>2} {'':>3} "
                     f"{_ms(r['step_ms']):>22}")
    lines += ["", f"idle time, as shares of P × step (medians over the rounds); messages "
                  f"α + nβ with {measured['alpha_beta']}",
              f"{'schedule':>12} {'M':>2} {'receives':>8} {'α+nβ µs':>7} {'isend µs':>8} "
              f"{'bubble':>6} = "
              + " + ".join(f"{p:>9}" for p in idle_time.PARTS)
              + f"   (rest = {'late':>6} + {'between':>7})"]
    for r in rows:
        lines.append(f"{r['schedule']:>12} {r['M']:>2} {r['receives']:>8} "
                     f"{1e6 * r['link']['F']:>7.0f} {r['send_us'][0]:>8.0f} "
                     f"{r['bubble'][0]:>6.3f} = "
                     + " + ".join(f"{r[p][0]:>9.3f}" for p in idle_time.PARTS)
                     + f"   (       {r['late'][0]:>6.3f} + {r['between'][0]:>7.3f})")
    return "\n".join(lines)
