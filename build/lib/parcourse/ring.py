"""The ring's two phases, reduce-scatter and all-gather, from isend/irecv (chapter 3).

K ranks stand in a ring; each sends only to its right neighbour and receives only from
its left one. A tensor is cut into K chunks (``chunks[c]``, views of one flat tensor).

* **Reduce-scatter**, K−1 steps: at step s rank r sends the partial sum of chunk r−s−1
  and receives the partial sum of chunk r−s−2 (mod K), to which it adds its own. Chunk c
  starts at rank c+1 and collects one contribution per step, so after the last step rank
  r holds the full sum of chunk r, added in the order ((x_{r+1} + x_{r+2}) + …) + x_r:
  the same order on every run.
* **All-gather**, K−1 steps: every rank starts with its own chunk; at step s rank r sends
  chunk r−s and receives chunk r−s−1, which it passes on at the next step.

An all-reduce is the one followed by the other, ``Plan.then``: one :meth:`Ring.run` of
the reduce-scatter's steps and then the all-gather's. Each phase sends (K−1)/K of the
tensor per rank, in K−1 messages: (K−1)·α + (K−1)/K·n·β for n bytes.

How :meth:`Ring.run` orders the messages matters as much as how many there are. gloo's
send and receive meet in a rendezvous: a send finds out whether the receiver has posted
its buffer yet. If it has, the data goes out at once, from the sending thread. If not,
the sender only announces the message; once the receiver posts its buffer and says so,
gloo's network thread on the sending side wakes up and sends the data: one more trip
through the loopback and one more thread wake-up. So every receive of a collective is
posted before its first send, into a buffer of its own. The sends are waited for only at
the end, when they are long done: waiting for one still in flight puts the thread to
sleep, and each wake-up costs time too. On a 2-core CPU with K = 4 processes, where a
process that wakes up may wait for a core, a ring all-reduce of 4–64 KiB took a median
6.4–8.3 ms with each receive posted at its step and 3.9–5.3 ms with all posted first
(gloo's own: 6.5–6.7 ms).

Few Python calls between messages matter as much: inside a collective on that loaded
machine each costs several times what it costs in a loop on an idle core. And with K = 2,
where one connection carries both directions, a message and its answer in turn beat two
messages crossing: with both sent at once, 44–56% of all-reduces of 4–64 KiB took over
1.5 ms (a stalled process waits for a core), against 30–37% when rank 1 answers rank 0;
medians 0.72–2.35 ms against 0.59–0.75 ms (gloo's own: 0.48–0.57 ms).

Messages between two ranks match their receives in the order both were posted, which is
step order here. One collective at a time per process, as on any process group.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
import torch.distributed as dist

SEGMENT_BYTES = 4 << 20  # no message is sent in one piece larger than this …
SPLIT_BYTES = 1 << 20  # … and one larger than this goes in two pieces at least

_scratch_buffers: dict = {}
_sent = [0]  # bytes this process has sent through the package's collectives


def isend(tensor: torch.Tensor, dst: int):
    """``dist.isend``, counted in :func:`bytes_sent`."""
    _sent[0] += tensor.numel() * tensor.element_size()
    return dist.isend(tensor, dst=dst)


def send(tensor: torch.Tensor, dst: int) -> None:
    """``dist.send``, counted in :func:`bytes_sent`."""
    _sent[0] += tensor.numel() * tensor.element_size()
    dist.send(tensor, dst=dst)


def bytes_sent() -> int:
    """Bytes this process sent with the package's collectives since the last reset (the
    backend's own, ``native``, are not counted)."""
    return _sent[0]


def reset_bytes_sent() -> None:
    """Start counting :func:`bytes_sent` from zero."""
    _sent[0] = 0


def _scratch(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Receive buffers (at least ``numel`` elements) reused across calls: allocating (and
    first touching) tens of MB on every all-reduce cost a third of the ring's time at
    64 MiB."""
    key = (dtype, device)
    buffer = _scratch_buffers.get(key)
    if buffer is None or buffer.numel() < numel:
        buffer = _scratch_buffers[key] = torch.empty(numel, dtype=dtype, device=device)
    return buffer


class Step(NamedTuple):
    """One step of a ring: ``receive`` fills from the left; in a reduce-scatter, this
    rank's share ``add`` is then added to it, and the sum written to ``into``."""

    receive: torch.Tensor
    add: Optional[torch.Tensor] = None
    into: Optional[torch.Tensor] = None

    @property
    def result(self) -> torch.Tensor:
        """What the step leaves, and the next step sends on."""
        return self.receive if self.add is None else self.into


class Plan(NamedTuple):
    """A ring's messages: ``first`` goes right, then every step's result is passed on."""

    first: torch.Tensor
    steps: list

    def then(self, other: "Plan") -> "Plan":
        """This plan followed by ``other``, whose first message is this one's result."""
        if not self.steps or other.first is not self.steps[-1].result:
            raise ValueError("Plan.then: the second plan must start with the first's result")
        return Plan(self.first, self.steps + other.steps)


class Ring:
    """This process's place in the ring of all K ranks: its rank and its two neighbours."""

    def __init__(self) -> None:
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.right, self.left = (self.rank + 1) % self.size, (self.rank - 1) % self.size

    def reduce_scatter(self, chunks: Sequence[torch.Tensor], output: torch.Tensor) -> Plan:
        """The K−1 steps that leave the sum of chunk ``rank`` in ``output``.

        ``chunks`` are read, never written, unless ``output`` is one of them (the
        all-reduce passes ``chunks[rank]``, which only the last step reads). Each step
        receives into a scratch buffer of its own, so that all receives can be posted at
        once: (K−1)/K of the tensor in all, kept for the next call.
        """
        rank, k = self.rank, self.size
        owners = [chunks[(rank - step - 2) % k] for step in range(k - 1)]  # summed at step s
        scratch = _scratch(sum(c.numel() for c in owners), output.dtype, output.device)
        steps, offset = [], 0
        for step, own in enumerate(owners):
            partial = scratch[offset:offset + own.numel()]
            offset += own.numel()
            steps.append(Step(partial, own, output if step == k - 2 else partial))
        return Plan(chunks[(rank - 1) % k], steps)

    def all_gather(self, chunks: Sequence[torch.Tensor]) -> Plan:
        """The K−1 steps that fill every chunk with its owner's (rank r owns ``chunks[r]``)."""
        rank, k = self.rank, self.size
        return Plan(chunks[rank], [Step(chunks[(rank - step - 1) % k]) for step in range(k - 1)])

    def run(self, plan: Plan) -> None:
        """Send the plan's messages: every receive posted first, the sends waited for last.

        Messages larger than SPLIT_BYTES travel in two or more segments of at most
        SEGMENT_BYTES, and each segment is passed on as soon as it has arrived (and been
        added to): the segments of one tensor follow each other round the ring.

        With K = 2 both neighbours are one process, reached over one connection, and
        small messages take turns on it: rank 1 sends its first message once rank 0's has
        arrived. Sent at the same moment from both ends, the two cost as much as two
        sent in turn and more often stall a process for a few ms (see the module
        docstring).
        """
        if not plan.steps:
            return
        element = plan.first.element_size()

        def pieces(tensor: torch.Tensor) -> Sequence[torch.Tensor]:
            """A message whole, or in segments: both ends see its size, and cut it alike."""
            nbytes = tensor.numel() * element
            if nbytes <= SPLIT_BYTES:
                return (tensor,)
            return tensor.tensor_split(max(2, -(-nbytes // SEGMENT_BYTES)))

        if (plan.first.numel() + 1) * element <= SPLIT_BYTES:  # chunks differ by ≤ 1
            return self._run_whole(plan)
        left, right, last = self.left, self.right, len(plan.steps) - 1
        receives = [[dist.irecv(piece, src=left) for piece in pieces(step.receive)]
                    for step in plan.steps]
        first = pieces(plan.first)
        answers = self.size == 2 and self.rank == 1 and len(first) == 1  # see below
        sends = [] if answers else [isend(piece, right) for piece in first]
        for index, (step, requests) in enumerate(zip(plan.steps, receives)):
            received, results = pieces(step.receive), pieces(step.result)
            owns = None if step.add is None else pieces(step.add)
            holds = answers and index == 0
            for piece, request in enumerate(requests):
                request.wait()
                if owns is not None:
                    torch.add(received[piece], owns[piece], out=results[piece])
                if index < last and not holds:
                    sends.append(isend(results[piece], right))
            if holds:  # K = 2: rank 1 answers rank 0's first message, in the same order
                sends += [isend(piece, right)
                          for piece in (*first, *(results if index < last else ()))]
        for request in sends:
            request.wait()

    def _run_whole(self, plan: Plan) -> None:
        """:meth:`run` when every message goes in one piece (the usual case): the same
        messages in the same order, in fewer Python calls (see the module docstring)."""
        left, right, last = self.left, self.right, len(plan.steps) - 1
        receives = [dist.irecv(step.receive, src=left) for step in plan.steps]
        answers = self.size == 2 and self.rank == 1
        sends = [] if answers else [isend(plan.first, right)]
        for index, (step, request) in enumerate(zip(plan.steps, receives)):
            request.wait()
            if step.add is not None:
                torch.add(step.receive, step.add, out=step.into)
            if answers and index == 0:
                sends.append(isend(plan.first, right))
            if index < last:
                sends.append(isend(step.result, right))
        for request in sends:
            request.wait()
