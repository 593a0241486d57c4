"""Chapter 3's picture of the ring all-reduce, read from the package's own ring plans.

:class:`parcourse.ring.Ring` builds, for each rank, the messages of a reduce-scatter and
of an all-gather (:class:`parcourse.ring.Plan`). :func:`schedule` asks it for every rank
of a K-rank ring — without processes: a plan is a list of which chunk is sent and which
is added, step by step — and :func:`plot` draws the table, so the figure cannot differ
from the code that runs.
"""

from __future__ import annotations

import torch

from ..ring import Ring


def _ring(rank: int, size: int) -> Ring:
    ring = Ring.__new__(Ring)  # its place in the ring, without a process group
    ring.rank, ring.size = rank, size
    ring.right, ring.left = (rank + 1) % size, (rank - 1) % size
    return ring


def schedule(k: int) -> list[list[tuple[str, int, int]]]:
    """``table[r][s] = (phase, chunk, contributions)``: what rank r sends right at step s
    of the all-reduce (2K − 2 steps: K − 1 of reduce-scatter "RS", then K − 1 of
    all-gather "AG"), which chunk, and how many ranks' copies its sum holds (K for a
    finished chunk)."""
    table = []
    for rank in range(k):
        chunks = [torch.zeros(1) for _ in range(k)]
        number = {id(c): i for i, c in enumerate(chunks)}
        ring = _ring(rank, k)
        reduce = ring.reduce_scatter(chunks, chunks[rank])
        row = [("RS", number[id(reduce.first)], 1)]
        for step, done in enumerate(reduce.steps[:-1], start=2):  # each step's sum, sent on
            row.append(("RS", number[id(done.add)], step))
        gather = ring.all_gather(chunks)
        row.append(("AG", number[id(gather.first)], k))
        row += [("AG", number[id(step.receive)], k) for step in gather.steps[:-1]]
        table.append(row)
    return table


def plot(k: int = 4):
    """The schedule as a grid: rows are ranks, columns steps; each cell the chunk the rank
    sends to its right neighbour, shaded by how many ranks' copies its sum holds."""
    import matplotlib.pyplot as plt

    table = schedule(k)
    steps = len(table[0])
    fig, ax = plt.subplots(figsize=(min(7.0, 1.1 * steps + 1.5), 0.55 * k + 1.3))
    for rank, row in enumerate(table):
        for step, (phase, chunk, held) in enumerate(row):
            shade = plt.cm.Blues(0.25 + 0.6 * held / k) if phase == "RS" else plt.cm.Greens(0.55)
            ax.add_patch(plt.Rectangle((step, k - 1 - rank), 0.94, 0.9, color=shade))
            label = f"c{chunk}" + (f" ({held}/{k})" if phase == "RS" else " ✓")
            ax.text(step + 0.47, k - 0.55 - rank, label, ha="center", va="center", fontsize=10)
    ax.set_xticks([s + 0.47 for s in range(steps)],
                  [f"RS {s + 1}" if s < k - 1 else f"AG {s - k + 2}" for s in range(steps)])
    ax.set_yticks([k - 0.55 - r for r in range(k)], [f"rank {r}" for r in range(k)])
    ax.set_xlim(0, steps)
    ax.set_ylim(0, k)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(f"ring all-reduce, K = {k}: the chunk each rank sends to its right",
                 fontsize=10)
    fig.tight_layout()
    return fig
