"""Pipeline parallelism: GPipe and 1F1B schedules, run for real, with a recorded timeline
(chapters 3, 4 and 5, model parallelism).

A model cut into P stages (see :mod:`parcourse.model_parallel.partition`) runs one stage per worker.
The global batch is cut into M equal micro-batches; a *schedule* says in which order a
stage runs the forward (F) and backward (B) passes of its micro-batches:

* **naive split** (M = 1): stage s computes, sends its activation to stage s+1 and waits
  for the gradient to come back. Only one stage works at a time.
* **GPipe** (Huang et al., 2019): every stage runs F_0 … F_{M−1}, then B_0 … B_{M−1}.
* **1F1B** (one forward, one backward: from PipeDream, Narayanan et al., 2019; this
  synchronous, flushed form is the one Megatron-LM uses, Narayanan et al., 2021): stage s
  runs P − s − 1 forwards to fill the pipe, then alternates one forward and one backward, then drains. Same bubble
  as GPipe, but at most P − s micro-batches of activations are alive at once instead of M.

With equal stage times t_F, t_B, both finish a step in (M + P − 1)(t_F + t_B), of which
each stage is busy M(t_F + t_B): the idle share, the *bubble*, is (P − 1)/(M + P − 1).

There is one loss, at the last stage: micro-batch m contributes (b_m / B)·mean loss over
its b_m samples, so the gradients accumulated over the M micro-batches are those of the
mean loss over the whole batch, the same as without a pipeline (chapter 4 corrects the
source document, which averages "sub-model losses"). The backward pass runs through the
stages in reverse; each stage owns its parameters and steps them itself: no gradient is
exchanged between stages, only activations (forward) and their gradients (backward).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

SCHEDULES = ("gpipe", "1f1b")


def gpipe_schedule(stage: int, stages: int, microbatches: int) -> list[tuple[str, int]]:
    """All forwards, then all backwards: ``[("F", 0), …, ("F", M−1), ("B", 0), …]``."""
    return ([("F", m) for m in range(microbatches)]
            + [("B", m) for m in range(microbatches)])


def one_f_one_b_schedule(stage: int, stages: int, microbatches: int) -> list[tuple[str, int]]:
    """Warm up with P − s − 1 forwards, then one forward and one backward in turn, then
    drain the remaining backwards."""
    warmup = min(stages - stage - 1, microbatches)
    actions = [("F", m) for m in range(warmup)]
    for m in range(microbatches - warmup):
        actions += [("F", warmup + m), ("B", m)]
    actions += [("B", m) for m in range(microbatches - warmup, microbatches)]
    return actions


def schedule(name: str, stage: int, stages: int, microbatches: int) -> list[tuple[str, int]]:
    """The actions of ``stage`` under schedule ``name`` ("gpipe" or "1f1b")."""
    if microbatches < 1:
        raise ConfigError(f"--microbatches must be at least 1 (got {microbatches})")
    if name not in SCHEDULES:
        raise ConfigError(f"unknown pipeline schedule {name!r}: choose one of "
                          f"{', '.join(SCHEDULES)}")
    make = gpipe_schedule if name == "gpipe" else one_f_one_b_schedule
    return make(stage, stages, microbatches)


def peak_in_flight(actions: list[tuple[str, int]]) -> int:
    """Most micro-batches whose activations a stage holds at once (forward done, backward
    not yet): M for GPipe, at most P − s for 1F1B."""
    alive = peak = 0
    for kind, _ in actions:
        alive += 1 if kind == "F" else -1
        peak = max(peak, alive)
    return peak


def bubble_theory(stages: int, microbatches: int) -> float:
    """(P − 1)/(M + P − 1): the idle share of a pipeline with equal stage times."""
    return (stages - 1) / (microbatches + stages - 1)


@dataclass
class Event:
    """One forward or backward pass of one micro-batch on one stage, in seconds since the
    start of training (taken by every stage right after a common barrier)."""

    step: int
    stage: int
    kind: str      # "F" or "B"
    micro: int
    start: float
    end: float


def bubble_measured(events: list[Event], stages: int) -> float:
    """Idle share of one step's timeline: 1 − (busy time) / (stages × step span)."""
    span = max(e.end for e in events) - min(e.start for e in events)
    busy = sum(e.end - e.start for e in events)
    return 1.0 - busy / (stages * span)


def mean_bubble(events: list[Event], stages: int, skip_first: bool = True) -> float:
    """Average of :func:`bubble_measured` over the recorded steps (the first step, which
    pays for warm-up, left out when there are others)."""
    steps = sorted({e.step for e in events})
    if skip_first and len(steps) > 1:
        steps = steps[1:]
    values = [bubble_measured([e for e in events if e.step == s], stages) for s in steps]
    return sum(values) / len(values)


def common_clock_origin(device: torch.device = torch.device("cpu")) -> float:
    """A time origin for this worker's timeline that all workers share (collective).

    On one host ``time.perf_counter`` reads the same monotonic clock in every process, so
    every worker takes rank 0's reading: timelines line up to the microsecond. Across
    hosts the clocks differ, and each worker takes its own reading right after a barrier
    (aligned to within the barrier's exit skew, tens of microseconds on a fast network).
    """
    hosts = [None] * dist.get_world_size()
    dist.all_gather_object(hosts, socket.gethostname())
    dist.barrier()
    origin = torch.tensor([time.perf_counter()], dtype=torch.float64, device=device)
    if len(set(hosts)) == 1:
        dist.broadcast(origin, src=0)
    return origin.item()


class PipelineStage:
    """One stage of a pipeline: runs a schedule of forwards and backwards for one step.

    ``prev_rank`` / ``next_rank`` are the global ranks of the neighbouring stages (None at
    the ends); ``input_shape`` is the shape of one micro-batch's activation entering this
    stage (the first stage gets its inputs directly). Activations travel with
    ``isend``/``recv``: a stage never waits for its own sends, only for what it needs.
    """

    def __init__(self, module: nn.Module, stage: int, stages: int,
                 prev_rank: int | None, next_rank: int | None,
                 input_shape: torch.Size, output_shape: torch.Size, device: torch.device,
                 dtype: torch.dtype = torch.float32):
        self.module, self.stage, self.stages = module, stage, stages
        self.prev_rank, self.next_rank = prev_rank, next_rank
        self.input_shape, self.output_shape = input_shape, output_shape
        self.device, self.dtype = device, dtype
        self.peak_in_flight = 0

    @property
    def is_first(self) -> bool:
        return self.prev_rank is None

    @property
    def is_last(self) -> bool:
        return self.next_rank is None

    def run(self, actions: list[tuple[str, int]], step: int, t0: float,
            inputs: list[torch.Tensor] | None = None,
            targets: list[torch.Tensor] | None = None,
            weights: list[float] | None = None) -> tuple[float, list[Event]]:
        """Run one step's ``actions``; the last stage returns Σ_m weight_m · loss_m.

        ``inputs`` (first stage) and ``targets`` (last stage) are the micro-batches;
        ``weights[m] = b_m / B`` scales micro-batch m's mean loss. Gradients accumulate
        in ``module``'s parameters; the caller steps the optimizer.
        """
        stash, events, sends, loss_sum = {}, [], [], 0.0
        for kind, m in actions:
            if kind == "F":
                if self.is_first:
                    x = inputs[m]
                else:
                    x = torch.empty(self.input_shape, dtype=self.dtype, device=self.device)
                    dist.recv(x, src=self.prev_rank)
                    x.requires_grad_()
                start = time.perf_counter()
                out = self.module(x)
                if self.is_last:
                    # logits (n, classes) or, for a GPT, (n, T, vocab): mean over all
                    loss = F.cross_entropy(out.flatten(0, -2), targets[m].flatten())
                    loss_sum += loss.item() * weights[m]
                    out = loss * weights[m]
                end = time.perf_counter()
                if not self.is_last:
                    activation = out.detach()
                    sends.append((dist.isend(activation, dst=self.next_rank), activation))
                stash[m] = (x, out)
                self.peak_in_flight = max(self.peak_in_flight, len(stash))
            else:
                x, out = stash.pop(m)
                if self.is_last:
                    start = time.perf_counter()
                    out.backward()
                else:
                    grad = torch.empty(self.output_shape, dtype=self.dtype, device=self.device)
                    dist.recv(grad, src=self.next_rank)
                    start = time.perf_counter()
                    out.backward(grad)
                end = time.perf_counter()
                if not self.is_first:
                    sends.append((dist.isend(x.grad, dst=self.prev_rank), x.grad))
            events.append(Event(step, self.stage, kind, m, start - t0, end - t0))
        for request, _tensor in sends:  # the tensor stays alive until it is sent
            request.wait()
        return loss_sum, events
