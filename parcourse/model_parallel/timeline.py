"""Pipeline timelines: the ideal one a schedule implies, and Gantt charts of recorded ones
(chapter 5, "Model parallelism in practice").

:func:`simulate` plays a schedule of :mod:`parcourse.model_parallel.schedules` with given
times: a forward takes ``forward``, a backward ``backward`` (of which ``weight`` is the
weight-gradient pass W, for a schedule that splits it off), a message between stages
``link``. Stage s runs its actions in order; on virtual stage v (chunk c of stage s is
v = c·P + s) F_m may start once stage s is free and F_m of virtual stage v − 1 has
arrived; B_m once B_m of v + 1 has arrived (the last virtual stage: once its own F_m is
done); W_m once its own B_m is done. With ``link = 0`` and equal stages its bubble is
exactly (P − 1)/(V·M + P − 1) for GPipe, 1F1B and interleaved 1F1B; for ZB-H1 with
t_F = t_B = t_W it is (P − 1)/(3M + P − 1). The real timeline recorded by
:class:`parcourse.model_parallel.pipeline.PipelineStage` is drawn with the same :func:`plot`,
and replayed through ``durations`` (each recorded pass's own length) by
:mod:`parcourse.model_parallel.idle_time`.
"""

from __future__ import annotations

from .pipeline import Event
from .schedules import SPLIT_BACKWARD, schedule
from ..widgets import Series

COLORS = {"F": "#1f77b4", "B": "#ff7f0e", "W": "#2ca02c"}
LABELS = {"F": "forward", "B": "backward", "W": "weight gradient"}
GAP = float("nan")  # breaks a line between two segments


def _per_stage(value, stages: int) -> list[float]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * stages


def simulate(name: str, stages: int, microbatches: int, forward=1.0, backward=2.0,
             link=0.0, chunks: int = 1, weight=None, durations: dict | None = None,
             send=0.0, sends: dict | None = None) -> list[Event]:
    """The timeline of one step of schedule ``name`` with fixed pass and message times.

    ``forward``, ``backward`` and ``weight`` are one stage's times for one micro-batch
    through all its chunks (each chunk takes 1/V of them): one number, or a list with one
    per stage (unequal stages: see :func:`stage_times`). ``weight`` is the W part of
    ``backward`` in a schedule that splits the backward (default: half of it), and B
    takes the rest. ``link`` is the time of one message: a number, or ``{"F": seconds of
    an activation, "B": seconds of a gradient}``; messages a stage sends itself are free.
    ``durations`` maps ``(stage, kind, micro, chunk)`` to a pass's own time and overrides
    the rest for the passes it names (a recorded step replayed). ``send`` (a number or a
    dict by kind, like ``link``) is the time a message occupies its *sender* after the
    pass that produced it — on one machine the "network" is a memory copy that the
    sender's CPU makes; the message leaves when it is done. ``sends`` maps
    ``(stage, kind, micro, chunk)`` of a pass to the recorded time of the send that
    followed it, overriding ``send`` for that message.
    """
    forward, backward = _per_stage(forward, stages), _per_stage(backward, stages)
    split = name in SPLIT_BACKWARD
    weight = _per_stage([b / 2 for b in backward] if weight is None else weight, stages)
    links = link if isinstance(link, dict) else {"F": link, "B": link}
    send_of = send if isinstance(send, dict) else {"F": send, "B": send}
    sends = sends or {}
    per_pass = {"F": [f / chunks for f in forward],
                "B": [(b - w if split else b) / chunks for b, w in zip(backward, weight)],
                "W": [w / chunks for w in weight]}
    durations = durations or {}
    plans = [schedule(name, s, stages, microbatches, chunks) for s in range(stages)]
    last = stages * chunks - 1
    position, free, done, events = [0] * stages, [0.0] * stages, {}, []
    while any(position[s] < len(plans[s]) for s in range(stages)):
        progressed = False
        for s in range(stages):
            if position[s] == len(plans[s]):
                continue
            kind, m, c = plans[s][position[s]]
            v = c * stages + s
            if kind == "F":
                source = None if v == 0 else (v - 1, "F")
            elif kind == "B":
                source = (v, "F") if v == last else (v + 1, "B")
            else:
                source = (v, "B")
            ready = 0.0 if source is None else done.get((*source, m))
            if ready is None:
                continue
            if source is not None and source[0] % stages != s:
                ready += links[kind]
            start = max(free[s], ready)
            end = start + durations.get((s, kind, m, c), per_pass[kind][s])
            events.append(Event(0, s, kind, m, start, end, c))
            to = v + 1 if kind == "F" else v - 1  # the virtual stage that needs the result
            sent = kind != "W" and 0 <= to <= last and to % stages != s
            free[s] = end + (sends.get((s, kind, m, c), send_of[kind]) if sent else 0.0)
            done[v, kind, m] = free[s] if sent else end
            position[s] += 1
            progressed = True
        if not progressed:
            raise RuntimeError(f"schedule {name!r} deadlocks")  # never for valid schedules
    return events


def stage_times(events: list[Event], stages: int, with_weight: bool = False) -> tuple:
    """Mean forward and backward time of one micro-batch on each stage, all its chunks
    together, over the recorded steps (the first step, which pays for warm-up, left out
    when there are others). The backward includes W; ``with_weight`` adds a third list,
    the W times alone."""
    steps = sorted({e.step for e in events})
    kept = [e for e in events if e.step in set(steps[1:] or steps)]
    micro = {(e.step, e.micro) for e in kept}

    def mean(stage, kinds):
        total = sum(e.end - e.start for e in kept if e.stage == stage and e.kind in kinds)
        return total / len(micro)

    times = ([mean(s, "F") for s in range(stages)], [mean(s, "BW") for s in range(stages)])
    return (*times, [mean(s, "W") for s in range(stages)]) if with_weight else times


def gantt_series(events: list[Event], stages: int) -> dict[str, Series]:
    """Each pass as a thick horizontal segment at height −stage (stage 0 on top), forwards
    and backwards as two series, for :func:`parcourse.widgets.explore`."""
    series = {}
    for kind, label in LABELS.items():
        xs, ys = [], []
        for e in events:
            if e.kind == kind:
                xs += [e.start, e.end, GAP]
                ys += [-e.stage, -e.stage, GAP]
        if xs or kind != "W":
            series[label] = Series(xs, ys, width=14)
    return series


def plot(events: list[Event], stages: int, ax=None, title: str = "", unit: float = 1e3,
         messages: list[Event] | None = None):
    """Gantt chart of one step's ``events`` with matplotlib (time × ``unit``: ms). With
    ``messages`` (the step's "send" and "wait" events), each stage's time in ``isend``
    (black) and waiting in a receive (grey) is drawn as a thin bar under its passes.
    A pass is labelled with its micro-batch where the label fits in its bar (about 3 % of
    the step's span per character, for a panel half the page's width)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    origin = min(e.start for e in events)
    span = (max(e.end for e in events) - origin) * unit
    for m in messages or []:
        ax.broken_barh([((m.start - origin) * unit, (m.end - m.start) * unit)],
                       (stages - 1 - m.stage - 0.5, 0.1),
                       facecolors="black" if m.kind == "send" else "0.7")
    for e in events:
        ax.broken_barh([((e.start - origin) * unit, (e.end - e.start) * unit)],
                       (stages - 1 - e.stage - 0.4, 0.8), facecolors=COLORS[e.kind],
                       edgecolor="white", linewidth=0.5)
        width = (e.end - e.start) * unit
        label = str(e.micro) if not e.chunk else f"{e.micro}.{e.chunk}"
        if width < 0.03 * span * len(label):
            continue
        ax.text((e.start - origin) * unit + width / 2, stages - 1 - e.stage, label,
                ha="center", va="center", fontsize=10, color="white")
    ax.set_yticks(range(stages), [f"stage {s}" for s in reversed(range(stages))])
    ax.set_xlabel("time (ms)" if unit == 1e3 else "time")
    ax.set_title(title)
    return ax
