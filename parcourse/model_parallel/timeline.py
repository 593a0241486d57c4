"""Pipeline timelines: the ideal one a schedule implies, and Gantt charts of recorded ones
(chapter 5, "Model parallelism in practice").

:func:`simulate` plays a schedule of :mod:`parcourse.model_parallel.pipeline` with fixed times: a
forward takes ``forward``, a backward ``backward``, a message between neighbouring
stages ``link``. Stage s runs its actions in order; F_m may start once stage s is free
and F_m of stage s−1 has arrived; B_m once stage s is free and B_m of stage s+1 has
arrived (the last stage: once its own F_m is done). With ``link = 0`` its bubble is
exactly (P − 1)/(M + P − 1) for GPipe and 1F1B alike; the real timeline recorded by
:class:`parcourse.model_parallel.pipeline.PipelineStage` is drawn with the same :func:`plot`.
"""

from __future__ import annotations

from .pipeline import Event, schedule
from ..widgets import Series

COLORS = {"F": "#1f77b4", "B": "#ff7f0e"}
GAP = float("nan")  # breaks a line between two segments


def simulate(name: str, stages: int, microbatches: int, forward=1.0, backward=2.0,
             link: float = 0.0) -> list[Event]:
    """The timeline of one step of schedule ``name`` with fixed pass and message times.

    ``forward`` and ``backward`` are one time for every stage, or a list with one time
    per stage (unequal stages: see :func:`stage_times`)."""
    forward = forward if isinstance(forward, (list, tuple)) else [forward] * stages
    backward = backward if isinstance(backward, (list, tuple)) else [backward] * stages
    plans = [schedule(name, s, stages, microbatches) for s in range(stages)]
    position, free, done, events = [0] * stages, [0.0] * stages, {}, []
    while any(position[s] < len(plans[s]) for s in range(stages)):
        progressed = False
        for s in range(stages):
            if position[s] == len(plans[s]):
                continue
            kind, m = plans[s][position[s]]
            if kind == "F":
                ready = 0.0 if s == 0 else done.get((s - 1, "F", m))
                wait = 0.0 if s == 0 else link
            elif s == stages - 1:
                ready, wait = done.get((s, "F", m)), 0.0
            else:
                ready, wait = done.get((s + 1, "B", m)), link
            if ready is None:
                continue
            start = max(free[s], ready + wait)
            end = start + (forward[s] if kind == "F" else backward[s])
            events.append(Event(0, s, kind, m, start, end))
            done[s, kind, m], free[s] = end, end
            position[s] += 1
            progressed = True
        if not progressed:
            raise RuntimeError(f"schedule {name!r} deadlocks")  # never for valid schedules
    return events


def stage_times(events: list[Event], stages: int) -> tuple[list[float], list[float]]:
    """Mean forward and backward time of one micro-batch on each stage, over the recorded
    steps (the first step, which pays for warm-up, left out when there are others)."""
    steps = sorted({e.step for e in events})
    kept = [e for e in events if e.step in set(steps[1:] or steps)]

    def mean(stage, kind):
        times = [e.end - e.start for e in kept if e.stage == stage and e.kind == kind]
        return sum(times) / len(times)

    return ([mean(s, "F") for s in range(stages)], [mean(s, "B") for s in range(stages)])


def gantt_series(events: list[Event], stages: int) -> dict[str, Series]:
    """Each pass as a thick horizontal segment at height −stage (stage 0 on top), forwards
    and backwards as two series, for :func:`parcourse.widgets.explore`."""
    series = {}
    for kind, label in (("F", "forward"), ("B", "backward")):
        xs, ys = [], []
        for e in events:
            if e.kind == kind:
                xs += [e.start, e.end, GAP]
                ys += [-e.stage, -e.stage, GAP]
        series[label] = Series(xs, ys, width=14)
    return series


def plot(events: list[Event], stages: int, ax=None, title: str = "", unit: float = 1e3):
    """Gantt chart of one step's ``events`` with matplotlib (time × ``unit``: ms)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    origin = min(e.start for e in events)
    for e in events:
        ax.broken_barh([((e.start - origin) * unit, (e.end - e.start) * unit)],
                       (stages - 1 - e.stage - 0.4, 0.8), facecolors=COLORS[e.kind],
                       edgecolor="white", linewidth=0.5)
        width = (e.end - e.start) * unit
        ax.text((e.start - origin) * unit + width / 2, stages - 1 - e.stage, str(e.micro),
                ha="center", va="center", fontsize=7, color="white")
    ax.set_yticks(range(stages), [f"stage {s}" for s in reversed(range(stages))])
    ax.set_xlabel("time (ms)" if unit == 1e3 else "time")
    ax.set_title(title)
    return ax
