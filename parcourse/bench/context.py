"""Context parallelism measured: step time, bytes sent and activation memory per rank of
the GPT split along the sequence over K = 1, 2, 4 ranks, and the timeline of one ring
attention call (chapter 5, "Long sequences"; :mod:`parcourse.model_parallel.context`).

**Activation memory.** What one block keeps for backward on one rank, measured as in
:mod:`parcourse.bench.transformer_memory` (:class:`parcourse.memory_meter.LiveBytes`: the
storages its operators created and its input, after its output is dropped). With s = S/K
local positions, b windows, width h, a heads, in numbers of e bytes: the LayerNorms' inputs
2·sbh and outputs 2·sbh, the QKV product's output 3·sbh (q, k, v are views of it, and the
ring keeps them), the ring's output sbh and its copy with the heads side by side (W_o's
input) sbh, the GELU's input and output 8·sbh: **17·sbh**, the ring's log-sum-exp a·s·b,
and the LayerNorms' mean and 1/σ 4·sb (:func:`activation_bytes`). All of it ∝ S/K: the ring
keeps no s×s matrix of probabilities (backward recomputes them block by block), where
``gpt.attend`` on one rank keeps a·S²·b numbers of them and the S² mask.

**Bytes.** Per rank and attention call, forward (K − 1) messages of K and V,
2·(K−1)·(S/K)·b·h numbers; backward as many again and K messages of ∂K and ∂V,
2·K·(S/K)·b·h (:func:`parcourse.model_parallel.context.bytes_per_call`); L of each per step.
The all-reduce of the gradients after backward (2·(K−1)/K of the parameters' bytes on a
ring) is not counted here.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as dist

from .. import launch, ring
from ..data_parallel import gradient_sync
from ..memory_meter import LiveBytes
from ..model_parallel import context, context_gpt
from ..models import build_model
from ..training.loop import mean_loss

SIZES = {"batch": 4, "sequence": 64, "width": 64, "heads": 4, "layers": 2,
         "dtype": "float32"}


def describe(sizes: dict = SIZES) -> str:
    return (f"GPT b = {sizes['batch']} windows, S = {sizes['sequence']}, h = {sizes['width']}, "
            f"a = {sizes['heads']}, L = {sizes['layers']}, {sizes['dtype']}")


def activation_bytes(sequence: int, batch: int, width: int, heads: int, ranks: int,
                     element: int = 4) -> float:
    """Bytes one block keeps for backward on one of ``ranks`` (module docstring)."""
    s = sequence // ranks
    return element * (17 * s * batch * width + heads * s * batch + 4 * s * batch)


def _parts(rank: int, ranks: int, sizes: dict, layers: int, recorder=None):
    dtype = getattr(torch, sizes["dtype"])
    model = build_model("gpt", seed=0, dtype=dtype, layers=layers, width=sizes["width"],
                        heads=sizes["heads"], sequence=sizes["sequence"])
    split = context_gpt.parallelize(model, rank, ranks, recorder)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (sizes["batch"], sizes["sequence"] + 1), generator=g)
    return (model, split, context_gpt.local(ids[:, :-1], rank, ranks),
            context_gpt.local(ids[:, 1:], rank, ranks))


def block_memory(rank: int, ranks: int, sizes: dict) -> int:
    """Bytes one block holds after its forward on this rank (its input included)."""
    _, split, _, _ = _parts(rank, ranks, sizes, layers=1)
    x = torch.randn(sizes["batch"], sizes["sequence"] // ranks, sizes["width"],
                    dtype=getattr(torch, sizes["dtype"]),
                    generator=torch.Generator().manual_seed(2), requires_grad=True)
    with LiveBytes(track=[x], created_only=True) as meter:
        y = split[1](x)
        graph = y.grad_fn
        del y
        held = meter.current()
    del graph
    return held


def rank_figures(rank: int, ranks: int, sizes: dict, steps: int) -> dict:
    """This rank's block memory, bytes of one step, median step time and the events of
    one ring attention call (a launch.run worker), on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # one core's time per rank, whatever K (on a busy 2-core CPU
    try:                          # one process's step took 0.9-1.2 s on 2 threads, 26-52 ms on 1)
        return _figures(rank, ranks, sizes, steps)
    finally:
        torch.set_num_threads(threads)


def _figures(rank: int, ranks: int, sizes: dict, steps: int) -> dict:
    model, split, ids, targets = _parts(rank, ranks, sizes, sizes["layers"])
    sync = gradient_sync.GradientAllReduce(model) if ranks > 1 else None
    seconds = []
    for step in range(steps + 1):                   # the first step warms up
        start = time.perf_counter()
        model.zero_grad()
        ring.reset_bytes_sent()
        (mean_loss(split(ids), targets) / ranks).backward()
        sent = ring.bytes_sent()
        if sync is not None:
            sync.finish()
        seconds.append(time.perf_counter() - start)
    return {"memory": block_memory(rank, ranks, sizes), "bytes": sent,
            "seconds": statistics.median(seconds[1:]),
            "events": record_call(rank, ranks, sizes)}


RECORDED = {"batch": 2, "sequence": 1024, "width": 128, "heads": 4, "dtype": "float32"}


def record_call(rank: int, ranks: int, sizes: dict = RECORDED) -> list[tuple]:
    """The time-stamped events of one ring attention call, forward and backward, on this
    rank (:class:`parcourse.model_parallel.context.Recorder`), after one call unrecorded
    (the first allocates) and a barrier (so that the ranks start together). The window is
    longer than the step's so that a step's blocks take about as long as its message."""
    dtype = getattr(torch, sizes["dtype"])
    g = torch.Generator().manual_seed(3)
    s, width = sizes["sequence"] // ranks, sizes["width"]
    qkv = torch.randn(sizes["batch"], s, 3 * width, generator=g, dtype=dtype,
                      requires_grad=True)
    recorder = context.Recorder()
    for record in (None, recorder):
        if ranks > 1:
            dist.barrier()
        context.ring_attend(qkv, sizes["heads"], rank, ranks, record).sum().backward()
    return recorder.events


def measure(ranks_list=(1, 2, 4), sizes: dict = SIZES, steps: int = 5,
            worker=rank_figures) -> list[dict]:
    """One row per K: rank 0's figures, the formulas', and every rank's timeline (and
    whatever else ``worker``, which returns :func:`rank_figures`'s dict, adds: ``extra``,
    one entry per rank)."""
    element = torch.empty(0, dtype=getattr(torch, sizes["dtype"])).element_size()
    rows = []
    for ranks in ranks_list:
        figures = launch.run(worker, ranks, args=(sizes, steps), verbose=False)
        call = context.bytes_per_call(sizes["sequence"], sizes["batch"], sizes["width"],
                                      ranks, element)
        rows.append({"ranks": ranks, "seconds": figures[0]["seconds"],
                     "bytes": figures[0]["bytes"],
                     "bytes_formula": sizes["layers"] * (call["forward"] + call["backward"]),
                     "memory": figures[0]["memory"],
                     "memory_formula": activation_bytes(sizes["sequence"], sizes["batch"],
                                                        sizes["width"], sizes["heads"],
                                                        ranks, element),
                     "events": [f["events"] for f in figures],
                     "extra": [f.get("extra") for f in figures]})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'K':>2} {'step ms':>8} {'sent KiB/rank':>13} {'formula':>8} "
             f"{'block activations KiB':>21} {'formula':>8}"]
    for r in rows:
        lines.append(f"{r['ranks']:>2} {r['seconds'] * 1e3:>8.1f} {r['bytes'] / 1024:>13.1f} "
                     f"{r['bytes_formula'] / 1024:>8.1f} {r['memory'] / 1024:>21.1f} "
                     f"{r['memory_formula'] / 1024:>8.1f}")
    return "\n".join(lines)


COLORS = {"compute": "#1f77b4", "receive": "#2ca02c"}
LANES = {"compute": (-0.3, 0.3), "receive": (0.08, 0.16)}


def plot_timeline(events: list[list[tuple]], ax=None, title: str = ""):
    """A Gantt chart of one ring attention call: per rank a row of its computations and,
    below it, its receives, each from posting to arrival (a send's end is known only when
    it is waited for, after the receive, so sends are not drawn); milliseconds from the
    first event."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.8 * len(events) + 1.2))
    origin = min(start for rank in events for _, _, start, _ in rank)
    for rank, mine in enumerate(events):
        for kind, label, start, end in mine:
            if kind in LANES:
                low, height = LANES[kind]
                ax.broken_barh([((start - origin) * 1e3, (end - start) * 1e3)],
                               (rank + low, height), color=COLORS[kind],
                               edgecolor="white", linewidth=0.5)
    ax.set_yticks(range(len(events)), [f"rank {r}" for r in range(len(events))])
    ax.set_ylim(len(events) - 0.5, -0.5)
    ax.set_xlabel("ms")
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in COLORS.values()],
              labels=["a step's blocks computed", "a receive, posted → arrived"],
              loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=10)
    ax.set_title(title)
    return ax
