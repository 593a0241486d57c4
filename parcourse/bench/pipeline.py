"""Step time of the naive layer split, GPipe and 1F1B, with the measured and the
theoretical bubble (chapter 5; ``python -m parcourse bench pipeline``).

For each schedule and number of micro-batches M the same model is trained on P workers
(one stage each) for a few steps. The table gives the step time (the first step, which
pays for warm-up, left out), the speedup over the naive split (M = 1), the bubble
measured on the recorded timeline (:func:`parcourse.model_parallel.pipeline.mean_bubble`) beside
(P − 1)/(M + P − 1) and beside the bubble of the ideal timeline replayed with each
stage's measured pass times (:func:`parcourse.model_parallel.timeline.simulate`), and the peak
number of micro-batches whose activations a stage held. The formula assumes equal stages
and free messages; the replay drops only the second assumption, so what remains between
it and the measurement is the cost of the messages and of the workers competing for cores.
"""

from __future__ import annotations

from dataclasses import replace

from ..model_parallel import pipeline
from ..model_parallel import timeline as pipeline_timeline
from ..training import TrainConfig, train

DEFAULT_MICROBATCHES = (1, 2, 4, 8)


def measure(base: TrainConfig, microbatches=DEFAULT_MICROBATCHES,
            schedules=pipeline.SCHEDULES) -> list[dict]:
    """One row per (schedule, M); M = 1 is the naive split and is run once."""
    rows, naive = [], None
    for m in microbatches:
        for name in schedules if m > 1 else schedules[:1]:
            config = replace(base, strategy=f"pipeline-{name}", microbatches=m, quiet=True)
            result = train(config)
            stages = len(result.stage_layers)
            steps = sorted({e.step for e in result.timeline})[1:] or [0]
            spans = [max(e.end for e in result.timeline if e.step == s)
                     - min(e.start for e in result.timeline if e.step == s) for s in steps]
            step_ms = 1e3 * sum(spans) / len(spans)
            naive = naive or step_ms
            forward, backward = pipeline_timeline.stage_times(result.timeline, stages)
            ideal = pipeline_timeline.simulate(name, stages, m, forward, backward)
            rows.append({"schedule": "naive split" if m == 1 else name, "M": m,
                         "step_ms": step_ms, "speedup": naive / step_ms,
                         "bubble": pipeline.mean_bubble(result.timeline, stages),
                         "bubble_theory": pipeline.bubble_theory(stages, m),
                         "bubble_stages": pipeline.bubble_measured(ideal, stages),
                         "peak_in_flight": max(result.peak_in_flight),
                         "result": result})
    return rows


def format_rows(rows: list[dict]) -> str:
    """A fixed-width table of :func:`measure` (without the raw results)."""
    lines = [f"{'schedule':>12} {'M':>3} {'step (ms)':>10} {'speedup':>8} "
             f"{'bubble':>7} {'(P-1)/(M+P-1)':>14} {'with stage times':>17} "
             f"{'peak in flight':>15}"]
    for r in rows:
        lines.append(f"{r['schedule']:>12} {r['M']:>3} {r['step_ms']:>10.2f} "
                     f"{r['speedup']:>8.2f} {r['bubble']:>7.2f} {r['bubble_theory']:>14.2f} "
                     f"{r['bubble_stages']:>17.2f} "
                     f"{r['peak_in_flight']:>15}")
    return "\n".join(lines)


def default_config(workers: int = 2, steps: int = 12, batch_size: int = 256,
                   model: str = "complex", partition: str = "time") -> TrainConfig:
    """The benchmark's run: the source document's ComplexModel on P = ``workers`` stages,
    cut where the measured layer times balance."""
    return TrainConfig(workers=workers, steps=steps, batch_size=batch_size, model=model,
                       partition=partition)
