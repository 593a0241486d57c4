"""Pipeline parallelism run for real: the stage runner and its recorded timeline
(chapters 3, 4 and 5, model parallelism).

A model cut into P stages (see :mod:`parcourse.model_parallel.partition`) runs one stage per
worker. The global batch is cut into M equal micro-batches; a *schedule*
(:mod:`parcourse.model_parallel.schedules`: GPipe, 1F1B, interleaved 1F1B, ZB-H1) says in which
order a stage runs the forward (F) and backward (B) passes of its micro-batches — and the
weight-gradient passes (W), where the backward is split
(:mod:`parcourse.model_parallel.zero_bubble`).
With M = 1 it is the naive split: stage s computes, sends its activation to stage s+1 and
waits for the gradient to come back; only one stage works at a time.

With equal stage times t_F, t_B, GPipe and 1F1B finish a step in (M + P − 1)(t_F + t_B),
of which each stage is busy M(t_F + t_B): the idle share, the *bubble*, is
(P − 1)/(M + P − 1).

There is one loss, at the last stage: micro-batch m contributes (b_m / B)·mean loss over
its b_m samples (for a GPT, over their b_m·T positions), so the gradients accumulated over
the M micro-batches are those of the mean loss over the whole batch, the same as without
a pipeline (chapter 4 corrects the source document, which averages "sub-model losses").
The backward pass runs through the stages in reverse; each stage owns its parameters and
steps them itself: no gradient is exchanged between stages, only activations (forward)
and their gradients (backward) (:mod:`parcourse.model_parallel.messages`), except a weight
that two stages hold (the GPT's tied token table, :mod:`parcourse.training.pipeline`).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import zero_bubble
from .messages import Messages
from .schedules import (SCHEDULES, SPLIT_BACKWARD, Action, bubble_theory,  # noqa: F401
                        check_schedule, peak_in_flight, schedule)


@dataclass
class Event:
    """One pass of one micro-batch on one stage, in seconds since the start of training
    (on a clock that all stages share: :func:`common_clock_origin`)."""

    step: int
    stage: int
    kind: str      # "F", "B" or "W"
    micro: int
    start: float
    end: float
    chunk: int = 0  # the stage's model chunk (interleaved schedules)


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
    """One stage of a pipeline: runs a schedule of passes for one step.

    ``modules`` are the stage's model chunks (one, or V for an interleaved schedule: chunk
    c is virtual stage c·P + ``stage``); ``ranks`` the global ranks of the pipeline's P
    stages; ``shapes`` the P·V + 1 shapes at the cuts of the model into chunks
    (:func:`parcourse.model_parallel.partition.boundary_shapes`): shapes[v] enters virtual stage
    v. ``split_backward`` runs B as the input gradient only and W as the weight gradients
    (:mod:`parcourse.model_parallel.zero_bubble`); ``receives`` says when the stage posts its
    receives (:mod:`parcourse.model_parallel.messages`); the time it spends sending and waiting
    for each message is kept in :attr:`messages` (events of kind "send" and "wait").
    """

    def __init__(self, modules: nn.Module | list[nn.Module], stage: int, stages: int,
                 ranks: list[int], shapes: list[torch.Size], device: torch.device,
                 dtype: torch.dtype = torch.float32, *, split_backward: bool = False,
                 receives: str = "step"):
        self.modules = list(modules) if isinstance(modules, (list, tuple)) else [modules]
        self.stage, self.stages, self.ranks = stage, stages, list(ranks)
        self.last = stages * len(self.modules) - 1          # the last virtual stage
        self.shapes, self.device, self.dtype = shapes, device, dtype
        self.deferred = ([zero_bubble.defer_weight_gradients(m) for m in self.modules]
                         if split_backward else None)
        self.receives = receives
        self.peak_in_flight = 0
        self.messages: list[Event] = []  # "send" calls and "wait"s in receives, every step

    def _rank_of(self, virtual: int) -> int:
        return self.ranks[virtual % self.stages]

    def _incoming(self, action: Action):
        """The message ``action`` needs: (key, source rank, shape), or None."""
        v = action.chunk * self.stages + self.stage
        if action.kind == "F" and v > 0:
            return ("F", v, action.micro), self._rank_of(v - 1), self.shapes[v]
        if action.kind == "B" and v < self.last:
            return ("B", v, action.micro), self._rank_of(v + 1), self.shapes[v + 1]
        return None

    def run(self, actions: list[Action], step: int, t0: float,
            inputs: list[torch.Tensor] | None = None,
            targets: list[torch.Tensor] | None = None,
            weights: list[float] | None = None) -> tuple[float, list[Event]]:
        """Run one step's ``actions``; the last stage returns Σ_m weight_m · loss_m.

        ``inputs`` (first stage) and ``targets`` (last stage) are the micro-batches;
        ``weights[m] = b_m / B`` scales micro-batch m's mean loss. Gradients accumulate
        in the modules' parameters; the caller steps the optimizer.
        """
        incoming = [m for m in map(self._incoming, actions) if m is not None]
        box = Messages(self.ranks[self.stage], 1 + max(a.micro for a in actions), incoming,
                       self.device, self.dtype, self.receives)
        stash, pending, events, loss_sum = {}, {}, [], 0.0
        for action in actions:
            kind, m, chunk = action
            v = chunk * self.stages + self.stage
            if kind == "F":
                if v == 0:
                    x = inputs[m]
                else:
                    x = box.take(("F", v, m)).requires_grad_()
                start = time.perf_counter()
                if self.deferred:
                    pending[m, chunk] = self.deferred[chunk].collect()
                out = self.modules[chunk](x)
                if v == self.last:
                    # logits (n, classes) or, for a GPT, (n, T, vocab): mean over all
                    loss = F.cross_entropy(out.flatten(0, -2), targets[m].flatten())
                    loss_sum += loss.item() * weights[m]
                    out = loss * weights[m]
                end = time.perf_counter()
                if v < self.last:
                    box.send(out.detach(), self._rank_of(v + 1), ("F", v + 1, m))
                stash[m, chunk] = (x, out)
                held = len(stash) + len(pending) - len(set(stash) & set(pending))
                self.peak_in_flight = max(self.peak_in_flight, held)
            elif kind == "B":
                x, out = stash.pop((m, chunk))
                grad = None if v == self.last else box.take(("B", v, m))
                start = time.perf_counter()
                out.backward(grad)
                end = time.perf_counter()
                if v > 0:
                    box.send(x.grad, self._rank_of(v - 1), ("B", v - 1, m))
            else:
                start = time.perf_counter()
                zero_bubble.WeightGradients.apply(pending.pop((m, chunk)))
                end = time.perf_counter()
            events.append(Event(step, self.stage, kind, m, start - t0, end - t0, chunk))
        box.finish()
        for what, (_kind, v, m), start, end in box.log:
            self.messages.append(Event(step, self.stage, what, m, start - t0, end - t0,
                                       v // self.stages))
        return loss_sum, events
