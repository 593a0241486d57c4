"""The pipeline benchmark's worker: every variant in the same processes, in turn
(chapter 5; used by :mod:`parcourse.bench.pipeline`).

Each variant (schedule, M, V, how receives are posted) is a
:class:`parcourse.training.pipeline.PipelineWorker`, built once in the same worker
processes; then ``repeats`` rounds run ``steps`` training steps of each variant in turn.
A slower moment of a shared machine therefore slows one round of every variant, not all
the rounds of one, and the median over rounds compares them fairly. The reference rows
time ``torch.distributed.pipelining``'s own schedules on the same model, cut the same way,
in the same rounds (their step only: forward and backward, no optimizer).
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .. import launch
from ..model_parallel import partition, pipeline
from ..training.config import TrainConfig
from ..training.pipeline import PipelineWorker, chunks_of
from ..training.worker import batch_of, load_data_and_model

TORCH_SCHEDULES = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B",
                   "interleaved": "ScheduleInterleaved1F1B",
                   "zero-bubble": "ScheduleInterleavedZeroBubble"}


def _mean_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten())


class TorchReference:
    """torch.distributed.pipelining's schedule ``name`` with M micro-batches and V chunks
    per stage on this worker's chunks of the model (cut as :class:`PipelineWorker` cuts)."""

    def __init__(self, config: TrainConfig, name: str, chunks: int, rank: int,
                 world_size: int, dataset, model):
        import torch.distributed.pipelining as pipelining

        micro = config.batch_size // config.microbatches
        ranges = [None]
        if rank == 0:
            ranges = [partition.partition(model, world_size * chunks, config.partition,
                                          dataset.train_x[:micro])]
        dist.broadcast_object_list(ranges, src=0)
        ranges = ranges[0]
        virtual = [c * world_size + rank for c in range(chunks)]
        stages = [pipelining.PipelineStage(model[slice(*ranges[v])], v, world_size * chunks,
                                           launch.device()) for v in virtual]
        schedule = getattr(pipelining, TORCH_SCHEDULES[name])
        self.runner = schedule(stages if chunks > 1 else stages[0], config.microbatches,
                               loss_fn=_mean_loss)
        self.first, self.last = 0 in virtual, world_size * chunks - 1 in virtual
        self.config, self.dataset, self.model = config, dataset, model
        self.seconds: list[tuple[int, float]] = []

    def step(self, step: int) -> None:
        batch = batch_of(self.dataset, self.config, step)
        x, y = self.dataset.train_x[batch], self.dataset.train_y[batch]
        self.model.zero_grad()
        dist.barrier()
        start = time.perf_counter()
        kwargs = {"target": y, "losses": []} if self.last else {}
        if self.first:
            self.runner.step(x, **kwargs)
        else:
            self.runner.step(**kwargs)
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        self.seconds.append((step, elapsed.item()))


def bench_worker(rank: int, world_size: int, configs: list[TrainConfig],
                 references: list[tuple[TrainConfig, str, int]], repeats: int, steps: int):
    """Run every variant and reference ``repeats`` times ``steps`` steps, in turn; rank 0
    returns, per variant, its timeline, peaks in flight, cut and boundary shapes, and per
    reference its step times."""
    t0 = pipeline.common_clock_origin(launch.device())
    variants = []
    for config in configs:
        dataset, model = load_data_and_model(config)
        variants.append(PipelineWorker(config, rank, world_size, dataset, model, t0))
    timed = []
    for config, name, chunks in references:
        dataset, model = load_data_and_model(config)
        timed.append(TorchReference(config, name, chunks, rank, world_size, dataset, model))
    for round_ in range(repeats):
        for run in variants + timed:
            for step in range(round_ * steps, (round_ + 1) * steps):
                run.step(step)
    mine = ([(v.timeline, v.runner.peak_in_flight, v.runner.messages) for v in variants],
            [r.seconds for r in timed])
    gathered = [None] * world_size if rank == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    if rank != 0:
        return None
    return {"variants": [{"timeline": [e for g in gathered for e in g[0][i][0]],
                          "peak_in_flight": [g[0][i][1] for g in gathered],
                          "messages": [e for g in gathered for e in g[0][i][2]],
                          "stage_layers": v.ranges, "shapes": v.runner.shapes,
                          "chunks": chunks_of(v.config)}
                         for i, v in enumerate(variants)],
            "references": [gathered[0][1][i] for i in range(len(timed))]}
