"""Pipeline schedules: in which order each stage runs its passes (chapters 3, 4 and 5,
model parallelism).

A model cut into P stages runs one stage per worker; the global batch is cut into M
micro-batches. A schedule is, for each stage s, the list of its :class:`Action` s: the
forward pass F, the backward pass B, and — for schedules that split the backward — the
weight-gradient pass W, of micro-batch m on model chunk c of that stage.

* **GPipe** (Huang et al., 2019): F_0 … F_{M−1}, then B_0 … B_{M−1}.
* **1F1B** (PipeDream-Flush: Narayanan et al., 2019; 2021): P − s − 1 forwards to fill the
  pipe, then one forward and one backward in turn, then the remaining backwards. Same
  bubble as GPipe, but at most P − s micro-batches alive instead of M.
* **Interleaved 1F1B** (Narayanan et al., 2021): the model is cut into P·V chunks and stage
  s holds chunks s, s + P, …, s + (V − 1)P, so a micro-batch goes around the stages V
  times. The micro-batches enter each chunk in groups of P (M must be a multiple of P);
  stage s warms up with 2(P − s − 1) + (V − 1)P forwards, then alternates. Each pass is
  1/V of a stage's work, and the fill and drain shrink with it: the idle share is
  (P − 1)/(V·M + P − 1), the bubble is (P − 1)/(V·M) of the busy time.
* **ZB-H1** (Qi et al., 2024, "Zero Bubble Pipeline Parallelism"): each backward is split
  into B, the gradient of the stage's *input* (what the previous stage waits for), and W,
  the gradient of its *weights* (what nobody waits for). The order is 1F1B's with B
  alone on the critical path; stage s holds back its first s W passes and runs them in
  the drain, where 1F1B idles. With t_F = t_B = t_W the bubble is (P − 1)(t_F + t_B − t_W)
  of time instead of (P − 1)(t_F + t_B + t_W): a third; every stage then holds up to P
  micro-batches (F done, W not), the most 1F1B's first stage holds.

With equal stage times and free messages, GPipe and 1F1B idle (P − 1)/(M + P − 1) of the
step (:func:`bubble_theory`); :func:`parcourse.model_parallel.timeline.simulate` plays any
schedule with given pass times.
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import ConfigError

SCHEDULES = ("gpipe", "1f1b", "interleaved", "zb-h1")
SPLIT_BACKWARD = ("zb-h1",)  # schedules whose backward is B (input) then W (weights)


class Action(NamedTuple):
    """One pass of one stage: ``kind`` "F", "B" or "W", of micro-batch ``micro`` on the
    stage's model chunk ``chunk`` (always 0 unless the schedule interleaves)."""
    kind: str
    micro: int
    chunk: int = 0


def gpipe_schedule(stage: int, stages: int, microbatches: int) -> list[Action]:
    """All forwards, then all backwards."""
    return ([Action("F", m) for m in range(microbatches)]
            + [Action("B", m) for m in range(microbatches)])


def one_f_one_b_schedule(stage: int, stages: int, microbatches: int) -> list[Action]:
    """Warm up with P − s − 1 forwards, then one forward and one backward in turn, then
    drain the remaining backwards."""
    warmup = min(stages - stage - 1, microbatches)
    actions = [Action("F", m) for m in range(warmup)]
    for m in range(microbatches - warmup):
        actions += [Action("F", warmup + m), Action("B", m)]
    actions += [Action("B", m) for m in range(microbatches - warmup, microbatches)]
    return actions


def _interleaved_pass(k: int, stages: int, chunks: int, backward: bool) -> tuple[int, int]:
    """The micro-batch and chunk of a stage's k-th forward (or backward): groups of P
    micro-batches go through chunk 0, 1, … (backwards: V − 1, V − 2, …)."""
    group, within = divmod(k, stages * chunks)
    chunk = within // stages
    return group * stages + within % stages, chunks - 1 - chunk if backward else chunk


def interleaved_schedule(stage: int, stages: int, microbatches: int,
                         chunks: int) -> list[Action]:
    """Interleaved 1F1B with ``chunks`` = V model chunks per stage (M a multiple of P)."""
    if chunks == 1:
        return one_f_one_b_schedule(stage, stages, microbatches)
    total = microbatches * chunks
    warmup = total if microbatches == stages else min(
        2 * (stages - stage - 1) + (chunks - 1) * stages, total)

    def forward(k):
        return Action("F", *_interleaved_pass(k, stages, chunks, False))

    def backward(k):
        return Action("B", *_interleaved_pass(k, stages, chunks, True))

    actions = [forward(k) for k in range(warmup)]
    for k in range(total - warmup):
        actions += [forward(warmup + k), backward(k)]
    return actions + [backward(k) for k in range(total - warmup, total)]


def zb_h1_schedule(stage: int, stages: int, microbatches: int) -> list[Action]:
    """1F1B's order of F and B, with stage s's first s weight passes W held back: in the
    steady phase W_{k−s} follows B_k, in the drain one W follows each B, then the rest."""
    warmup = min(stages - stage - 1, microbatches)
    actions, next_w = [Action("F", m) for m in range(warmup)], 0
    for k in range(microbatches - warmup):
        actions += [Action("F", warmup + k), Action("B", k)]
        if k >= stage:
            actions.append(Action("W", next_w))
            next_w += 1
    for k in range(microbatches - warmup, microbatches):
        actions += [Action("B", k), Action("W", next_w)]
        next_w += 1
    return actions + [Action("W", m) for m in range(next_w, microbatches)]


def check_schedule(name: str, stages: int, microbatches: int, chunks: int = 1) -> None:
    """Raise :class:`ConfigError` unless schedule ``name`` can run M micro-batches on P
    stages with V chunks each."""
    if microbatches < 1:
        raise ConfigError(f"--microbatches must be at least 1 (got {microbatches})")
    if name not in SCHEDULES:
        raise ConfigError(f"unknown pipeline schedule {name!r}: choose one of "
                          f"{', '.join(SCHEDULES)}")
    if chunks < 1:
        raise ConfigError(f"--chunks must be at least 1 (got {chunks})")
    if chunks > 1 and name != "interleaved":
        raise ConfigError(f"--chunks {chunks} needs the interleaved schedule; {name} runs "
                          f"one chunk per stage")
    if name == "interleaved" and chunks > 1:
        if microbatches < stages:
            raise ConfigError(f"--microbatches {microbatches} is fewer than --stages {stages}: "
                              f"interleaved 1F1B sends the micro-batches through each chunk "
                              f"in groups of P = {stages}, so it needs at least {stages}")
        if microbatches % stages:
            raise ConfigError(f"--microbatches {microbatches} is not a multiple of --stages "
                              f"{stages}: interleaved 1F1B sends the micro-batches through "
                              f"each chunk in groups of P = {stages}; use "
                              f"{microbatches - microbatches % stages} or "
                              f"{microbatches - microbatches % stages + stages}")


def schedule(name: str, stage: int, stages: int, microbatches: int,
             chunks: int = 1) -> list[Action]:
    """The actions of ``stage`` under schedule ``name`` (one of :data:`SCHEDULES`)."""
    check_schedule(name, stages, microbatches, chunks)
    if name == "interleaved":
        return interleaved_schedule(stage, stages, microbatches, chunks)
    make = {"gpipe": gpipe_schedule, "1f1b": one_f_one_b_schedule,
            "zb-h1": zb_h1_schedule}[name]
    return make(stage, stages, microbatches)


def peak_in_flight(actions: list[Action]) -> int:
    """Most (micro-batch, chunk) pairs whose activations a stage holds at once: from F
    until the pass that needs them last, B — or W, where the schedule splits the backward
    (W needs each layer's input to form its weight gradient). GPipe: M; 1F1B: at most
    P − s; ZB-H1: at most P; interleaved: up to 2(P − s − 1) + (V − 1)P + 1 chunks, each
    1/V of a stage's layers."""
    last = "W" if any(a.kind == "W" for a in actions) else "B"
    alive = peak = 0
    for action in actions:
        alive += 1 if action.kind == "F" else -1 if action.kind == last else 0
        peak = max(peak, alive)
    return peak


def bubble_theory(stages: int, microbatches: int, chunks: int = 1) -> float:
    """(P − 1)/(V·M + P − 1): the idle share of GPipe, 1F1B (V = 1) and interleaved 1F1B
    with equal stage times and free messages."""
    return (stages - 1) / (chunks * microbatches + stages - 1)
