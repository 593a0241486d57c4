"""The messages of one pipeline step: activations forward, their gradients backward
(chapter 5, model parallelism in practice).

A model cut into P·V chunks has *virtual stages* v = 0 … P·V − 1; chunk c of stage s is
virtual stage c·P + s, so virtual stage v runs on stage v mod P. Two kinds of message
arrive at virtual stage v for micro-batch m: its input activation (key ("F", v, m), from
virtual stage v − 1) and the gradient of its output (key ("B", v, m), from v + 1). Each
key has its own tag, so messages between the same two workers can arrive in any order.

When a receive is posted matters more than anything else here. Gloo moves a message
only once its receive is posted: measured on a 2-core machine, a 1 MiB message whose
receive was posted 50 ms before it was needed was ready in 30 µs, one whose receive was
posted at the moment of need took 1.2 ms, an 8 MiB one 12 ms — the transfer then runs
while the stage waits. ``receives`` says when a stage posts them:

* ``"needed"``: when the stage needs the message (a blocking ``recv``): the slowest;
* ``"ahead"``: the next message of each direction is kept posted, from the start of the
  step and again as soon as the one before is taken (as Megatron-LM pairs each send with
  the next receive);
* ``"step"`` (the default): every receive of the step is posted at its start, so that every
  sender finds its receiver ready; it holds one buffer per message of the step (M
  activations and M gradients at the cuts, small beside the activations a stage keeps).

:mod:`parcourse.bench.pipeline` measures the three side by side. Sends are ``isend``: a
stage never waits for its own sends until the end of the step. Messages to the stage
itself (one stage holding consecutive chunks) are handed over without the network. The
time spent in each ``isend`` call and waiting in each receive is kept (:attr:`Messages.log`).
"""

from __future__ import annotations

import time
from collections import deque

import torch
import torch.distributed as dist


RECEIVES = ("step", "ahead", "needed")  # when receives are posted: see the module's docstring


class Messages:
    """The receives and sends of one step of worker ``rank`` (see the module's docstring).

    ``incoming`` lists, in the order the stage will take them, the messages it receives:
    ``(key, source rank, shape)`` with key ``(kind, virtual stage, micro-batch)``.
    """

    def __init__(self, rank: int, microbatches: int, incoming: list, device: torch.device,
                 dtype: torch.dtype, receives: str = "step"):
        if receives not in RECEIVES:
            raise ValueError(f"receives must be one of {', '.join(RECEIVES)} (got {receives!r})")
        self.rank, self.microbatches = rank, microbatches
        self.device, self.dtype, self.receives = device, dtype, receives
        self.early = receives == "ahead"
        self.log: list = []         # ("wait" or "send", key, start, end) of every message
        self.queues = {"F": deque(), "B": deque()}
        for key, source, shape in incoming:
            self.queues[key[0]].append((key, source, shape))
        self.posted: dict = {}      # key → (request, buffer)
        self.local: dict = {}       # key → tensor sent by this worker to itself
        self.sends: list = []       # (request, tensor): the tensor lives until it is sent
        if receives == "ahead":
            for kind in self.queues:
                self._post_next(kind)
        elif receives == "step":
            for queue in self.queues.values():
                for message in queue:
                    self._post(*message)

    def tag(self, key) -> int:
        kind, virtual, micro = key
        return 2 * (virtual * self.microbatches + micro) + (kind == "B")

    def _post(self, key, source, shape) -> None:
        if source == self.rank:
            return  # arrives through self.local
        buffer = torch.empty(shape, dtype=self.dtype, device=self.device)
        self.posted[key] = (dist.irecv(buffer, src=source, tag=self.tag(key)), buffer)

    def _post_next(self, kind: str) -> None:
        if self.queues[kind]:
            self._post(*self.queues[kind][0])

    def take(self, key) -> torch.Tensor:
        """The message ``key``, waiting for it if it has not arrived."""
        expected, source, shape = self.queues[key[0]].popleft()
        if expected != key:
            raise RuntimeError(f"message {key} taken before {expected}")
        if source == self.rank:
            tensor = self.local.pop(key)
        else:
            if key not in self.posted:
                self._post(key, source, shape)
            request, tensor = self.posted.pop(key)
            start = time.perf_counter()
            request.wait()
            self.log.append(("wait", key, start, time.perf_counter()))
        if self.early:
            self._post_next(key[0])
        return tensor

    def send(self, tensor: torch.Tensor, destination: int, key) -> None:
        """Send ``tensor`` as message ``key`` (the receiver's key) without waiting."""
        if destination == self.rank:
            self.local[key] = tensor
        else:
            start = time.perf_counter()
            self.sends.append((dist.isend(tensor, dst=destination, tag=self.tag(key)), tensor))
            self.log.append(("send", key, start, time.perf_counter()))

    def finish(self) -> None:
        """Wait until every send of the step has left."""
        for request, _tensor in self.sends:
            request.wait()
        self.sends.clear()
