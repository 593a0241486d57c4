"""``python -m parcourse bench experts``: expert parallelism of the mixture-of-experts GPT
measured (chapter 5, "Many experts: expert parallelism").

One global batch of windows, K = 1, 2, 4 ranks (:mod:`parcourse.model_parallel.experts`):
each rank runs forward and backward of its shard and sums the replicated gradients, as
``--strategy expert`` does in a step, and reports

* its routing (each token's experts, which were kept), tokens per expert, dropped ones;
* who sent how many rows to whom, per MoE layer (the dispatch matrix);
* the bytes its all-to-alls sent, measured by counting, against the formula
  Σ_layers [2·(S_r + R_r)·d·b + (E − E/K)·8] of the recorded matrix, and against the
  estimate for uniform routing without drops, L·[4·k·n_r·T·(K − 1)/K·d·b + (E − E/K)·8];
* its parameter bytes: experts L·(E/K)·(8d² + 5d)·b, falling as 1/K, and the replicated
  rest, the same on every rank;
* its step time (median over the repeats), with the loss, the logits and the gradients
  of the first step, under the unsplit model's names (to compare with :func:`reference`).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as dist

from .. import data as datasets
from .. import launch
from ..model_parallel import experts as expert_parallel
from ..models import build_model
from ..moe import layers
from ..training.loop import replica_loss

SIZES = dict(layers=2, width=32, heads=2, sequence=32, experts=4, top_k=2, capacity_factor=1.0)
BATCH = 16


def batch(sizes: dict = SIZES, batch_size: int = BATCH, seed: int = 0):
    """Step 0's global batch of windows of the text: ids (B, T) and next ids (B, T)."""
    dataset = datasets.load_dataset("text", seed=seed, sequence=sizes["sequence"])
    chosen = datasets.global_batch(len(dataset.train_y), batch_size, 0, seed)
    return dataset.train_x[chosen], dataset.train_y[chosen]


def _model(sizes: dict, dtype: torch.dtype, seed: int):
    return build_model("gpt", seed=seed, dtype=dtype, **sizes)


def _routings(model) -> list[dict]:
    return [{"experts": m.routing.experts, "kept": m.routing.kept,
             "tokens": m.routing.tokens_per_expert(m.num_experts),
             "dropped": m.routing.dropped} for m in layers(model)]


def reference(sizes: dict = SIZES, batch_size: int = BATCH, dtype=torch.float64,
              seed: int = 0) -> dict:
    """The single-device step: loss, logits, gradients (by name) and routing per layer."""
    model = _model(sizes, dtype, seed)
    x, y = batch(sizes, batch_size, seed)
    logits = model(x)
    model.zero_grad()
    loss = replica_loss(model, x, y, 1, 1.0)
    return {"loss": loss, "logits": logits.detach(), "routing": _routings(model),
            "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}


def expert_step_worker(rank: int, world_size: int, sizes: dict, batch_size: int,
                       dtype_name: str, repeats: int, seed: int = 0) -> dict:
    """One rank of an expert-parallel step (forward, backward, replicated gradients summed),
    ``repeats`` times on the same batch; what it measured."""
    dtype = getattr(torch, dtype_name)
    model = expert_parallel.parallelize(_model(sizes, dtype, seed), rank, world_size)
    x, y = batch(sizes, batch_size, seed)
    mine = datasets.shard(torch.arange(batch_size), rank, world_size)
    x, y = x[mine], y[mine]
    share = len(mine) / batch_size
    times, first = [], None
    for _ in range(repeats):
        model.zero_grad()
        expert_parallel.reset_bytes_sent()
        dist.barrier()
        begin = time.perf_counter()
        loss = replica_loss(model, x, y, 1, share)
        expert_parallel.sum_replicated_gradients(model)
        times.append(time.perf_counter() - begin)
        if first is None:
            sent_bytes = expert_parallel.bytes_sent()
            with torch.no_grad():
                logits = model(x)
            local = layers(model)[0].local
            first = {"loss": loss * share, "logits": logits, "routing": _routings(model),
                     "grads": {expert_parallel.global_name(n, rank, local): p.grad.clone()
                               for n, p in model.named_parameters()}}
    sent = [m.sent for m in layers(model)]                     # (K,) per layer, this rank
    matrices = []
    for row in sent:
        rows = [torch.zeros_like(row) for _ in range(world_size)]
        dist.all_gather(rows, row)
        matrices.append(torch.stack(rows))                     # [from rank, to rank]
    e, k = sizes["experts"], sizes["top_k"]
    d, b, t, n = sizes["width"], torch.finfo(dtype).bits // 8, sizes["sequence"], len(mine)
    counts = (e - e // world_size) * 8
    expert_bytes = sum(p.numel() * p.element_size() for name, p in model.named_parameters()
                       if expert_parallel.is_expert(name))
    return {**first, "rank": rank, "ranks": world_size, "windows": n,
            "dispatch": matrices, "bytes_sent": sent_bytes,
            "bytes_formula": sum(expert_parallel.layer_bytes(m, rank, d, b) + counts
                                 for m in matrices),
            "bytes_uniform": sizes["layers"] * (4 * k * n * t * (world_size - 1) / world_size
                                                * d * b + counts),
            "expert_bytes": expert_bytes,
            "expert_bytes_formula": sizes["layers"] * (e // world_size) * (8 * d * d + 5 * d) * b,
            "replicated_bytes": sum(p.numel() * p.element_size()
                                    for name, p in model.named_parameters()
                                    if not expert_parallel.is_expert(name)),
            "step_seconds": statistics.median(times)}


def measure(ranks: int, sizes: dict = SIZES, batch_size: int = BATCH, dtype: str = "float64",
            repeats: int = 3, seed: int = 0, timeout: float = 300) -> list[dict]:
    """:func:`expert_step_worker` on ``ranks`` workers: every rank's report, in rank order."""
    return launch.run(expert_step_worker, ranks,
                      args=(sizes, batch_size, dtype, repeats, seed), timeout=timeout)


def format_table(reports: dict[int, list[dict]]) -> str:
    """One row per K: step time, bytes per rank (measured, formula, uniform estimate),
    parameter MiB per rank, dropped assignments and tokens per expert."""
    lines = [f"{'K':>2} {'step ms':>8} {'sent/rank KiB':>13} {'formula':>8} {'uniform':>8} "
             f"{'experts KiB':>11} {'rest KiB':>9} {'dropped':>7}  tokens per expert"]
    for k, ranks in reports.items():
        r0 = ranks[0]
        tokens = sum(torch.stack([layer["tokens"] for layer in r["routing"]]) for r in ranks)
        dropped = sum(layer["dropped"] for r in ranks for layer in r["routing"])
        lines.append(f"{k:>2} {1e3 * max(r['step_seconds'] for r in ranks):>8.1f} "
                     f"{max(r['bytes_sent'] for r in ranks) / 1024:>13.1f} "
                     f"{max(r['bytes_formula'] for r in ranks) / 1024:>8.1f} "
                     f"{max(r['bytes_uniform'] for r in ranks) / 1024:>8.1f} "
                     f"{r0['expert_bytes'] / 1024:>11.1f} {r0['replicated_bytes'] / 1024:>9.1f} "
                     f"{dropped:>7}  {tokens.tolist()}")
    return "\n".join(lines)


def run(workers: list[int] | None = None, repeats: int = 3) -> dict[int, list[dict]]:
    """``bench experts``: print the table for K in ``workers`` (default 1, 2, 4)."""
    s = SIZES
    print(f"mixture-of-experts GPT: L={s['layers']} d={s['width']} E={s['experts']} "
          f"k={s['top_k']} c={s['capacity_factor']}, batch {BATCH} windows of "
          f"{s['sequence']} tokens, float64, forward + backward + replicated all-reduce; "
          f"bytes: the experts' all-to-alls per rank per step (the largest rank)")
    reports = {k: measure(k, repeats=repeats) for k in (workers or [1, 2, 4])}
    print(format_table(reports))
    return reports
