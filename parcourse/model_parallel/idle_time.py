"""Every idle millisecond of a recorded pipeline step, accounted for (chapter 5, model
parallelism in practice).

In a recorded step of span S, stage s computes for busy_s and idles S − busy_s. Four
replays of the same step with :func:`parcourse.model_parallel.timeline.simulate` split that
idle time into parts that add up exactly:

* R₀, **ideal**: every pass of a kind takes the mean recorded time of that kind over all
  stages, messages are free. Same total work B = Σ_s busy_s; span S₀. What the schedule
  itself leaves idle, per stage: S₀ − B/P — for GPipe and 1F1B (P − 1)/(M + P − 1) of S₀.
* R_m, **stage imbalance**: each stage's passes take that stage's mean time; span S_m.
  Per stage: (S_m − S₀) + (B/P − busy_s), the second term the stage's own share of
  unequal work (it sums to zero over the stages).
* R₁, **variation**: every pass takes its own recorded time; span S₁. Per stage:
  S₁ − S_m, what the spread of one pass's time from micro-batch to micro-batch adds.
* R₂, **messages**: R₁ where each message occupies its *sender* after the pass that
  produced it — on one machine gloo's "network" is a memory copy that the sending
  process makes (an ``isend`` to a receiver that is ready returns once the data is
  copied). With the step's recorded sends (``messages``) each message takes the time its
  own ``isend`` call took; without them, α + nβ, the point-to-point time fitted by a
  ping-pong on this machine (:func:`parcourse.bench.allreduce.fit_alpha_beta`) for its n
  bytes. Span S₂; per stage: S₂ − S₁. The replay with α + nβ is kept beside it
  (``spans["α+nβ"]``): how far the fit's prediction is from the sends as they ran
  (measured on a 2-core machine while both stages compute, 1.5 to 3 times the idle
  machine's α + nβ).
* **the rest**: S − S₂ per stage — what no replay explains: messages that arrived later
  than their send (a receive posted late, a receiver's transfer waiting for a core),
  Python between the passes, the workers being descheduled.

For each stage, ideal + imbalance + variation + messages + rest = S − busy_s, the
stage's measured idle time; summed over the stages and divided by P·S, the parts add
up to the measured bubble. The *replay* bubble is R₁'s: the schedule played with the
passes exactly as they ran and free messages.

The stage also records the time it spends in each ``isend`` call and waiting in each
receive (:class:`parcourse.model_parallel.pipeline.PipelineStage`'s ``messages``). A stage's
idle time is spent before its first pass or after its last (waiting for the pipe to fill
or drain), waiting in a receive, sending, or *between passes* otherwise (Python, being
descheduled). The measured sending time checks the fit's α + nβ
(:attr:`IdleTime.sending` against the number of messages); the rest splits, measured,
into ``between`` (outside passes, receives and sends) and ``late`` = rest − between:
time waiting in receives beyond what the replay explains.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from .pipeline import Event
from .schedules import SPLIT_BACKWARD
from .timeline import simulate

PARTS = ("ideal", "imbalance", "variation", "messages", "rest")


@dataclass
class IdleTime:
    """One step's idle time split into :data:`PARTS`, in seconds, one value per stage."""

    span: float                 # S, the measured step
    busy: list[float]           # busy_s
    parts: dict[str, list[float]]
    spans: dict[str, float]     # S₀, S_m, S₁, S₂ of the replays
    between: list[float] | None = None   # measured: not in a pass, a receive or a send
    sending: list[float] | None = None   # measured: in isend calls
    sent: list[int] | None = None        # messages sent to other stages

    def rest_split(self) -> dict[str, float]:
        """The rest as shares of P·S: messages slower than α + nβ, and between passes."""
        between = sum(self.between) / (self.stages * self.span)
        return {"late": self.share("rest") - between, "between": between}

    def seconds_per_send(self) -> float:
        """Measured mean time of one ``isend`` call (to check against α + nβ)."""
        return sum(self.sending) / max(1, sum(self.sent))

    @property
    def stages(self) -> int:
        return len(self.busy)

    def share(self, part: str) -> float:
        """The part's idle time over all stages, as a share of P·S."""
        return sum(self.parts[part]) / (self.stages * self.span)

    @property
    def bubble(self) -> float:
        """The measured idle share: 1 − Σ busy / (P·S) = the sum of the shares."""
        return 1.0 - sum(self.busy) / (self.stages * self.span)

    def replay_bubble(self, which: str = "replay") -> float:
        """The idle share of a replay: "ideal" (R₀), "stage times" (R_m), "replay" (R₁),
        "messages" (R₂) or "α+nβ" (R₁ with every message at the fit's α + nβ)."""
        return 1.0 - sum(self.busy) / (self.stages * self.spans[which])


def _durations(events: list[Event]) -> dict:
    return {(e.stage, e.kind, e.micro, e.chunk): e.end - e.start for e in events}


def _per_stage_means(events: list[Event], stages: int, microbatches: int) -> dict:
    """The time per micro-batch (all chunks) of each kind on each stage."""
    total = {(s, k): 0.0 for s in range(stages) for k in "FBW"}
    for e in events:
        total[e.stage, e.kind] += e.end - e.start
    return {key: value / microbatches for key, value in total.items()}


def _replay(name, stages, microbatches, chunks, forward, backward, weight, send=0.0,
            durations=None, sends=None) -> float:
    split = name in SPLIT_BACKWARD
    events = simulate(name, stages, microbatches,
                      forward=forward, backward=[b + w for b, w in zip(backward, weight)]
                      if split else backward, weight=weight if split else None,
                      send=send, chunks=chunks, durations=durations, sends=sends)
    return max(e.end for e in events) - min(e.start for e in events)


def recorded_sends(events: list[Event], messages: list[Event]) -> dict:
    """Each recorded ``isend``'s time, keyed by the pass it followed: ``(stage, kind,
    micro, chunk)`` of the last pass of that stage to end before the send began (a stage
    sends right after the pass that produced the message), for :func:`timeline.simulate`'s
    ``sends``."""
    found = {}
    for s in {e.stage for e in events}:
        passes = sorted((e for e in events if e.stage == s), key=lambda e: e.end)
        ends = [e.end for e in passes]
        for w in messages:
            if w.stage == s and w.kind == "send":
                i = bisect.bisect_right(ends, w.start + 1e-9) - 1
                if i >= 0:
                    e = passes[i]
                    key = (s, e.kind, e.micro, e.chunk)
                    found[key] = found.get(key, 0.0) + w.end - w.start
    return found


def _measured(events: list[Event], messages: list[Event], stages: int) -> tuple:
    """Per stage, from its first pass to its last: the time in no pass, receive or send;
    the time in sends; the number of sends (``events`` and ``messages`` on one clock)."""
    between, sending, sent = [], [], []
    for s in range(stages):
        mine = [e for e in events if e.stage == s]
        first, last = min(e.start for e in mine), max(e.end for e in mine)

        def inside(kind):
            return sum(max(0.0, min(w.end, last) - max(w.start, first))
                       for w in messages if w.stage == s and w.kind == kind)

        sending.append(inside("send"))
        sent.append(sum(1 for w in messages if w.stage == s and w.kind == "send"))
        between.append(last - first - sum(e.end - e.start for e in mine)
                       - inside("wait") - sending[-1])
    return between, sending, sent


def account(events: list[Event], name: str, stages: int, microbatches: int, chunks: int = 1,
            link: dict | float = 0.0, messages: list[Event] | None = None) -> IdleTime:
    """Split the idle time of one recorded step (``events`` of one step, every stage).

    ``link`` is the α + nβ time of one message (``{"F": activation, "B": gradient}``);
    ``messages`` the step's recorded sends and waits (then :attr:`IdleTime.between`).
    """
    measured = (None,) * 3 if messages is None else _measured(events, messages, stages)
    sends = None if messages is None else recorded_sends(events, messages)
    start = min(e.start for e in events)
    events = [Event(e.step, e.stage, e.kind, e.micro, e.start - start, e.end - start, e.chunk)
              for e in events]
    span = max(e.end for e in events)
    busy = [sum(e.end - e.start for e in events if e.stage == s) for s in range(stages)]
    means = _per_stage_means(events, stages, microbatches)
    spans = {}
    for kind_times, key in ((lambda k: [sum(means[s, k] for s in range(stages)) / stages]
                             * stages, "ideal"),
                            (lambda k: [means[s, k] for s in range(stages)], "stage times")):
        spans[key] = _replay(name, stages, microbatches, chunks, kind_times("F"),
                             kind_times("B"), kind_times("W"))
    recorded = _durations(events)
    zero = [0.0] * stages
    spans["replay"] = _replay(name, stages, microbatches, chunks, zero, zero, zero,
                              durations=recorded)
    spans["α+nβ"] = _replay(name, stages, microbatches, chunks, zero, zero, zero,
                            send=link, durations=recorded)
    spans["messages"] = spans["α+nβ"] if sends is None else _replay(
        name, stages, microbatches, chunks, zero, zero, zero, durations=recorded, sends=sends)
    mean_busy = sum(busy) / stages
    parts = {"ideal": [spans["ideal"] - mean_busy] * stages,
             "imbalance": [spans["stage times"] - spans["ideal"] + mean_busy - b for b in busy],
             "variation": [spans["replay"] - spans["stage times"]] * stages,
             "messages": [spans["messages"] - spans["replay"]] * stages,
             "rest": [span - spans["messages"]] * stages}
    return IdleTime(span, busy, parts, spans, *measured)


def account_steps(events: list[Event], name: str, stages: int, microbatches: int,
                  chunks: int = 1, link: dict | float = 0.0,
                  skip_first: bool = True, messages: list[Event] | None = None
                  ) -> list[IdleTime]:
    """:func:`account` for every recorded step (the first, which pays for warm-up, left
    out when there are others)."""
    steps = sorted({e.step for e in events})
    if skip_first and len(steps) > 1:
        steps = steps[1:]
    return [account([e for e in events if e.step == s], name, stages, microbatches, chunks,
                    link, None if messages is None else [w for w in messages if w.step == s])
            for s in steps]


def message_seconds(alpha_beta, shapes: list, itemsize: int) -> dict:
    """α + nβ of an activation and of a gradient message: the mean over the cuts between
    stages (``shapes[1:-1]`` of :func:`parcourse.model_parallel.partition.boundary_shapes`;
    a gradient has its activation's shape)."""
    cuts = shapes[1:-1]
    if not cuts:
        return {"F": 0.0, "B": 0.0}
    nbytes = sum(itemsize * _numel(shape) for shape in cuts) / len(cuts)
    seconds = alpha_beta.seconds(nbytes)
    return {"F": seconds, "B": seconds}


def _numel(shape) -> int:
    count = 1
    for n in shape:
        count *= n
    return count
