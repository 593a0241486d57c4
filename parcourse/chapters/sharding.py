"""Chapter 5, "When the model does not fit": the programs behind the page.

* :func:`zero3_timeline` — a real ZeRO-3 run on K workers, recorded: when each block's
  all-gather, forward, backward and reduce-scatter ran on each rank, so the page can show
  the gathers of the next block overlapping the current block's compute.
* :func:`ledger_per_rank` — the ledger of one rank for a GPT-sized model as K grows, for
  the page's widget: training state (:mod:`parcourse.data_parallel.zero_ledger`) plus
  activations (Korthikanti et al., 2022).
* :func:`fp16_underflow` — the gradients of a real training run, and how many of them
  fp16 flushes to zero without and with loss scaling.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .. import data as datasets
from .. import launch
from ..data_parallel.zero import Zero
from ..data_parallel.zero_ledger import ideal_bytes_per_parameter
from ..mixed_precision import underflow_fraction
from ..models import build_model
from ..widgets import Series

LANES = {"all-gather": "communication", "reduce-scatter": "communication",
         "forward": "compute", "backward": "compute"}


def _timeline_worker(rank: int, world_size: int, model_name: str, batch_size: int,
                     steps: int, seed: int) -> list[tuple]:
    dataset = datasets.load_dataset("digits", seed=seed)
    model = build_model(model_name, seed=seed)
    engine = Zero(model, 3, lambda shards: torch.optim.Adam(shards, lr=1e-3), rank,
                  world_size, record=True)
    try:
        for step in range(steps):
            engine.events.clear()
            batch = datasets.global_batch(len(dataset.train_y), batch_size, step, seed)
            mine = datasets.shard(batch, rank, world_size)
            torch.distributed.barrier()
            begin = time.perf_counter()
            engine.zero_grad()
            share = len(mine) / batch_size
            (F.cross_entropy(model(dataset.train_x[mine]), dataset.train_y[mine]) * share
             ).backward()
            engine.step()
        return [(kind, block, start - begin, end - begin)
                for kind, block, start, end in engine.events]
    finally:
        engine.close()


def zero3_timeline(workers: int = 2, model_name: str = "complex", batch_size: int = 64,
                   steps: int = 4, seed: int = 0) -> list[list[tuple]]:
    """Per rank, the last step's events ``(kind, block, start s, end s)`` of a ZeRO-3 run
    (the first steps warm up); time 0 is the step's start on that rank."""
    return launch.run(_timeline_worker, workers, args=(model_name, batch_size, steps, seed),
                      verbose=False)


def overlap_share(events: list[tuple]) -> float:
    """Fraction of the all-gather time that ran while a forward or backward computed."""
    compute = [(s, e) for kind, _, s, e in events if LANES[kind] == "compute"]
    gathers = [(s, e) for kind, _, s, e in events if kind == "all-gather"]
    total = sum(e - s for s, e in gathers)
    hidden = sum(max(0.0, min(e, ce) - max(s, cs)) for s, e in gathers for cs, ce in compute)
    return hidden / total if total else 0.0


def plot_timeline(per_rank: list[list[tuple]], ax=None):
    """A Gantt chart: for each rank, a compute lane and a communication lane."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 1.2 + 0.9 * len(per_rank)))[1]
    colors = {"forward": "#1f77b4", "backward": "#ff7f0e", "all-gather": "#2ca02c",
              "reduce-scatter": "#d62728"}
    labels = []
    for rank, events in enumerate(per_rank):
        for lane_index, lane in enumerate(("compute", "communication")):
            y = len(labels)
            labels.append(f"rank {rank} {lane}")
            for kind, block, start, end in events:
                if LANES[kind] == lane:
                    ax.broken_barh([(start * 1e3, (end - start) * 1e3)], (y - 0.4, 0.8),
                                   color=colors[kind])
                    ax.text((start + end) / 2 * 1e3, y, str(block), ha="center",
                            va="center", fontsize=10, color="white")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("time within the step (ms)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    ax.legend(handles, list(colors), ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.35),
              frameon=False)
    return ax


# A GPT's shape: parameters Ψ ≈ 12·L·h², activations per layer per token (16-bit,
# Korthikanti et al., 2022, Table 2, no tensor parallelism): 34·h + 5·a·s bytes, and
# with full recomputation only the layer's input, 2·h bytes.
GPTS = {"1.3B": (24, 2048, 16), "7B": (32, 4096, 32), "70B": (80, 8192, 64)}
SEQUENCE, MICRO_BATCH = 2048, 1
WORKERS = [1, 2, 4, 8, 16, 32, 64]
STAGE_NAMES = {0: "DDP", 1: "ZeRO-1", 2: "ZeRO-2", 3: "ZeRO-3"}


def ledger_per_rank(model: str = "7B", precision: str = "mixed", recompute: str = "off"
                    ) -> dict[str, Series]:
    """GB per rank against K for DDP and ZeRO-1/2/3: state plus activations."""
    layers, hidden, heads = GPTS[model]
    psi = 12 * layers * hidden ** 2
    per_token = 2 * hidden if recompute == "on" else 34 * hidden + 5 * heads * SEQUENCE
    activations = layers * SEQUENCE * MICRO_BATCH * per_token
    curves = {}
    for stage, name in STAGE_NAMES.items():
        totals = [(sum(ideal_bytes_per_parameter(stage, k, precision == "mixed").values())
                   * psi + activations) / 1e9 for k in WORKERS]
        curves[name] = Series(WORKERS, totals, mode="lines+markers")
    curves["H100 memory (80 GB)"] = Series(WORKERS, [80.0] * len(WORKERS), dash="dash")
    return curves


def fp16_underflow(steps: int = 200, seed: int = 0, scales=(1.0, 2.0 ** 8, 2.0 ** 16)
                   ) -> dict[float, float]:
    """Train the MLP in float32 for ``steps`` steps; of its last gradients, the fraction
    that fp16 rounds to zero at each loss scale."""
    dataset = datasets.load_dataset("digits", seed=seed)
    model = build_model("simple", seed=seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(steps):
        batch = datasets.global_batch(len(dataset.train_y), 64, step, seed)
        optimizer.zero_grad()
        F.cross_entropy(model(dataset.train_x[batch]), dataset.train_y[batch]).backward()
        optimizer.step()
    grads = [p.grad for p in model.parameters()]
    return {scale: underflow_fraction(grads, scale) for scale in scales}
