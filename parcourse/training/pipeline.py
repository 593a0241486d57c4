"""Pipelines, data × pipeline grids and the 3-D grid (chapters 3–5): ``pipeline-gpipe``,
``pipeline-1f1b``, ``pipeline-interleaved``, ``pipeline-zb-h1``, ``dp-pp`` and
``dp-pp-tp``.

Every worker builds the whole model from the same seed and keeps only its stage, so the
parts start exactly as the single-device model does. Worker ``rank`` is stage s of
replica r in the grid :class:`parcourse.grid.Grid` (R replicas × P stages). Replica r
trains on shard r of the global batch, cut into M micro-batches; micro-batch m is
weighted b_m / B (B: the global batch), so the sum over micro-batches and replicas is the
full batch's gradient. After the backward pass, a weight that two stages hold (the GPT's
token table: embeddings on the first stage, head on the last) has its two gradients summed
between those stages of each replica (Megatron-LM's "embedding group"), then the workers
that hold the same stage all-reduce (sum) their gradients within their data-parallel group.

``dp-pp-tp`` splits each stage of the GPT over T tensor ranks as ``--strategy tensor``
splits the whole model (:mod:`parcourse.model_parallel.tensor_gpt`): worker ``rank`` is
tensor rank t of stage s of replica r (:class:`~parcourse.grid.Grid`, R = K/(P·T)). Tensor
rank t of stage s talks to tensor rank t of stages s ± 1 only; every tensor rank of a
stage sends the same activation (with ``--sequence-parallel``, its 1/T of the positions).
The tied table's gradients are summed between the first and last stage of each (replica,
tensor rank), the data-parallel sums run within each (stage, tensor rank)'s group, and
with sequence parallelism the sequence region's gradients are summed over the stage's
tensor group first.
The schedules and the stage that runs them are :mod:`parcourse.model_parallel.pipeline`.

For the GPT the messages between stages are (micro-batch, T, width) activations in
``--dtype`` and their gradients; the token ids (int64) enter the first stage directly.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from .. import data as datasets
from .. import launch
from ..errors import ConfigError
from ..grid import Grid
from ..model_parallel import partition, pipeline, schedules, tensor_gpt
from ..model_parallel.messages import RECEIVES
from ..models import build_model, sizes_of
from .adapters import Stages, TensorStages
from .config import TrainConfig
from .loop import make_optimizer
from .registry import PIPELINED, Strategy, register
from .worker import (batch_of, dtype_of, held_on_every_rank, load_data_and_model, result,
                     train_worker)



@dataclass(frozen=True)
class Pipeline:
    """What distinguishes the pipeline strategies."""
    schedule: str        # a name of parcourse.model_parallel.schedules.SCHEDULES
    replicated: bool     # several replicas of the pipeline (then 2 stages by default)
    summary: str
    tensor: bool = False  # each stage split over --tensor ranks (the GPT only)


PIPELINES = {
    "pipeline-gpipe": Pipeline("gpipe", False, "GPipe: all forwards, then all backwards"),
    "pipeline-1f1b": Pipeline("1f1b", False, "1F1B: one forward, one backward (PipeDream-Flush)"),
    "pipeline-interleaved": Pipeline("interleaved", False,
                                     "interleaved 1F1B: --chunks model chunks per stage"),
    "pipeline-zb-h1": Pipeline("zb-h1", False,
                               "ZB-H1: backward split into input and weight gradients, the "
                               "weight gradients moved into the bubble"),
    "dp-pp": Pipeline("1f1b", True, "replicas × 1F1B pipeline stages"),
    "dp-pp-tp": Pipeline("1f1b", True, "the 3-D grid: replicas × 1F1B stages × Megatron "
                         "tensor ranks (--stages P --tensor T)", tensor=True),
}
DEFAULT_CHUNKS = 2  # pipeline-interleaved without --chunks
DEFAULT_TENSOR = 2  # dp-pp-tp without --tensor


def check_microbatches(batch_size: int, replicas: int, microbatches: int) -> None:
    """Each replica's share of the batch must split into equal micro-batches."""
    if microbatches < 1:
        raise ConfigError(f"--microbatches must be at least 1 (got {microbatches})")
    if batch_size % (replicas * microbatches):
        parts = replicas * microbatches
        raise ConfigError(
            f"--batch-size {batch_size} cannot be cut into {parts} equal micro-batches "
            f"({replicas} replica(s) × --microbatches {microbatches}): use a multiple of "
            f"{parts}, e.g. {max(parts, batch_size - batch_size % parts)}")


def _sum_gradients(module: torch.nn.Module, group) -> None:
    """Sum this stage's gradients over the replicas that hold the same stage."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def tied_groups(grid: Grid, ties: list[tuple[int, str, int, str]]) -> dict:
    """``{(replica, tensor rank, tie): process group}`` of the two stages of each replica
    (and tensor rank) that hold one tied weight
    (:func:`parcourse.model_parallel.partition.tied_across_stages`). Every worker calls
    this, in the same order (``torch.distributed.new_group`` needs it)."""
    return {(r, t, i): dist.new_group([grid.rank(r, a, t), grid.rank(r, b, t)])
            for r in range(grid.replicas) for t in range(grid.tensor)
            for i, (a, _, b, _) in enumerate(ties)}


def _sum_tied(part: torch.nn.Module, where, ties, groups) -> None:
    """Sum the gradients of the tied weights this stage holds with the other stage's."""
    for i, (a, name_a, b, name_b) in enumerate(ties):
        if where.stage in (a, b):
            weight = part.get_parameter(name_a if where.stage == a else name_b)
            dist.all_reduce(weight.grad, group=groups[where.replica, where.tensor, i])


def chunks_of(config: TrainConfig) -> int:
    """``--chunks``: V model chunks per stage (0: 2 for pipeline-interleaved, else 1)."""
    if config.chunks:
        return config.chunks
    return DEFAULT_CHUNKS if PIPELINES[config.strategy].schedule == "interleaved" else 1


class PipelineWorker:
    """What one worker holds and does as stage s of replica r: its chunks of the model,
    the stage runner, the optimizer over its parameters, and :meth:`step`.

    Every worker of the grid builds one at the same time (it creates process groups);
    several can live in the same processes, which is how :mod:`parcourse.bench.pipeline`
    runs the schedules side by side.
    """

    def __init__(self, config: TrainConfig, rank: int, world_size: int, dataset, model,
                 t0: float):
        grid = Grid.of(world_size, stages=config.stages, tensor=tensor_of(config))
        where, device = grid.position(rank), launch.device()
        tensor_groups = grid.tensor_groups()
        self.tensor_group = tensor_groups[where.replica, where.stage]
        name, chunks = PIPELINES[config.strategy].schedule, chunks_of(config)
        micro_size = config.batch_size // (grid.replicas * config.microbatches)
        example = dataset.train_x[:micro_size]  # one micro-batch: shapes and layer times
        # measured layer times differ from worker to worker: rank 0 decides for everyone;
        # virtual stage v = c·P + s is chunk c of stage s
        decision = [partition.partition(model, grid.stages * chunks, config.partition, example)
                    if rank == 0 else None]
        dist.broadcast_object_list(decision, src=0)
        self.ranges = ranges = decision[0]
        shapes = partition.boundary_shapes(model, ranges, example)
        modules = [model[slice(*ranges[c * grid.stages + where.stage])].to(device)
                   for c in range(chunks)]
        if grid.tensor > 1:  # each chunk's blocks split by heads and columns
            modules = [tensor_gpt.parallelize(m, where.tensor, grid.tensor, self.tensor_group,
                                              config.sequence_parallel) for m in modules]
            if config.sequence_parallel:  # between stages: this rank's 1/T of the positions
                shapes = [shapes[0], *(torch.Size((n, s // grid.tensor, *rest))
                                       for n, s, *rest in shapes[1:-1]), shapes[-1]]
        # this stage's layers under their own names: its state, parameters and optimizer
        self.part = type(model)(OrderedDict((k, m) for module in modules
                                            for k, m in module.named_children()))
        self.runner = pipeline.PipelineStage(
            modules, where.stage, grid.stages, grid.pipeline_ranks(where.replica, where.tensor),
            shapes,
            device, dtype_of(config), split_backward=name in schedules.SPLIT_BACKWARD,
            receives=config.receives)
        self.groups = grid.data_parallel_groups()
        self.ties = [(a % grid.stages, name_a, b % grid.stages, name_b)
                     for a, name_a, b, name_b in partition.tied_across_stages(model, ranges)
                     if a % grid.stages != b % grid.stages]
        self.tied = tied_groups(grid, self.ties)
        self.actions = schedules.schedule(name, where.stage, grid.stages, config.microbatches,
                                          chunks)
        named = list(self.part.named_parameters())
        self.trainable = [p for _, p in named]
        self.optimizer = (make_optimizer(config.optimizer, self.trainable, config.lr)
                          if self.trainable else None)
        # each parameter's number in the unsplit model: the same object (a tied weight is
        # registered under another name on the last stage) or, split, the same name
        number = {key: i for i, (name, p) in enumerate(model.named_parameters())
                  for key in (id(p), name)}
        indices = [number.get(id(p), number.get(name)) for name, p in named]
        holders = grid.pipeline_ranks(0)
        self.adapter = (Stages(self.part, self.optimizer, indices, holders, rank, world_size)
                        if grid.tensor == 1 else
                        TensorStages(self.part, self.optimizer, indices, holders, rank,
                                     world_size, where.tensor, grid.tensor, self.tensor_group))
        self.modules = modules
        self.config, self.dataset, self.grid, self.where = config, dataset, grid, where
        self.device, self.t0, self.timeline = device, t0, []

    def step(self, step: int) -> float:
        """One training step: the schedule, the tied and data-parallel gradient sums, the
        optimizer; returns the last stage's share of the global mean loss (0 elsewhere)."""
        config, dataset, grid, where = self.config, self.dataset, self.grid, self.where
        mine = datasets.shard(batch_of(dataset, config, step), where.replica, grid.replicas)
        micro = [datasets.shard(mine, m, config.microbatches)
                 for m in range(config.microbatches)]
        first, last = where.stage == 0, where.stage == grid.stages - 1
        self.part.zero_grad()
        loss, events = self.runner.run(
            self.actions, step, self.t0,
            inputs=[dataset.train_x[i].to(self.device) for i in micro] if first else None,
            targets=[dataset.train_y[i].to(self.device) for i in micro] if last else None,
            weights=[len(i) / config.batch_size for i in micro])
        if self.trainable:
            if config.sequence_parallel:
                for module in self.modules:
                    module.sum_sequence_gradients()
            _sum_tied(self.part, where, self.ties, self.tied)
            if grid.replicas > 1:
                _sum_gradients(self.part, self.groups[where.stage, where.tensor])
            self.optimizer.step()
        self.timeline.extend(events)
        return loss if where.tensor == 0 else 0.0  # a stage's tensor ranks share one loss


def pipeline_worker(rank: int, world_size: int, config: TrainConfig):
    """One stage of one replica; rank 0 returns the gathered result, the others None."""
    dataset, model = load_data_and_model(config)
    worker = PipelineWorker(config, rank, world_size, dataset, model,
                            pipeline.common_clock_origin(launch.device()))
    losses, _ = train_worker(config, worker.step, worker.adapter, rank=rank,
                             world_size=world_size, device=worker.device)
    seconds = time.perf_counter() - worker.t0  # on the clock of the timeline's events
    held = held_on_every_rank(worker.part, worker.optimizer, world_size)
    full = worker.adapter.full()
    gathered = [None] * world_size if rank == 0 else None
    dist.gather_object((worker.timeline, worker.runner.peak_in_flight,
                        worker.runner.messages),
                       gathered, dst=0)
    if rank != 0:
        return None
    stages = [gathered[r] for r in worker.grid.pipeline_ranks(0)]  # replica 0, tensor rank 0
    return result(config, full[0], losses, seconds, dataset,
                  timeline=[e for events, _, _ in stages for e in events],
                  peak_in_flight=[peak for _, peak, _ in stages],
                  messages=[e for _, _, log in stages for e in log],
                  stage_layers=worker.ranges, held=held)


def train_pipeline(config: TrainConfig):
    """Run ``config.workers`` pipeline workers; rank 0's result."""
    return launch.run(pipeline_worker, config.workers, args=(config,), backend=config.backend,
                      timeout=config.timeout, verbose=not config.quiet)[0]


def stages_of(config: TrainConfig) -> int:
    """``--stages``, or by default one per worker (two for a replicated pipeline)."""
    return config.stages or (2 if PIPELINES[config.strategy].replicated else config.workers)


def tensor_of(config: TrainConfig) -> int:
    """``--tensor``, or by default 2 for the 3-D grid (1: no tensor split)."""
    if not PIPELINES[config.strategy].tensor:
        return 1
    return config.tensor or DEFAULT_TENSOR


def _prepare(config: TrainConfig) -> TrainConfig:
    return replace(config, stages=stages_of(config),
                   tensor=tensor_of(config) if PIPELINES[config.strategy].tensor else 0)


def layers_of(config: TrainConfig) -> str:
    """How the check messages name the model's layers."""
    if config.model == "gpt":
        return f"--model gpt (the embeddings, --layers {config.layers} blocks and the head)"
    return f"--model {config.model}"


def _check(config: TrainConfig) -> None:
    model = build_model(config.model, **sizes_of(config.model, config))
    stages = stages_of(config)
    if not PIPELINES[config.strategy].replicated and stages != config.workers:
        raise ConfigError(f"--strategy {config.strategy} runs one stage per worker, but "
                          f"--stages is {stages} and --workers {config.workers}: make them "
                          f"equal, or use --strategy dp-pp for several pipeline replicas")
    partition.check_stages(len(model), stages, layers_of(config))
    if config.receives not in RECEIVES:
        raise ConfigError(f"unknown --receives {config.receives!r}: choose one of "
                          f"{', '.join(RECEIVES)}")
    chunks = chunks_of(config)
    if stages * chunks > len(model):
        raise ConfigError(f"--stages {stages} × --chunks {chunks} = {stages * chunks} model "
                          f"chunks is more than the {len(model)} layers of {layers_of(config)}: "
                          f"each chunk needs at least one layer, so use --chunks "
                          f"{len(model) // stages} or fewer")
    if config.tensor < 0:
        raise ConfigError(f"--tensor must be at least 1 (got {config.tensor})")
    grid = Grid.of(config.workers, stages=stages, tensor=tensor_of(config))
    if PIPELINES[config.strategy].tensor:
        tensor_gpt.check_splittable(config.width, config.heads, config.sequence, grid.tensor,
                                    config.sequence_parallel, "--tensor", config.strategy)
    check_microbatches(config.batch_size, grid.replicas, config.microbatches)
    schedules.check_schedule(PIPELINES[config.strategy].schedule, stages, config.microbatches,
                             chunks)
    if config.partition not in partition.METHODS:
        partition.parse_boundaries(config.partition, len(model), stages * chunks,
                                   "--stages × --chunks" if chunks > 1 else "--stages")


for _name, _pipeline in PIPELINES.items():
    register(Strategy(_name, train_pipeline, _pipeline.summary,
                      options=("stages", "microbatches", "partition", "receives",
                               *(("chunks",) if _pipeline.schedule == "interleaved" else ()),
                               *(("tensor", "sequence_parallel") if _pipeline.tensor else ())),
                      batch=PIPELINED, family="pipeline", check=_check, prepare=_prepare,
                      models=("gpt",) if _pipeline.tensor else None))
