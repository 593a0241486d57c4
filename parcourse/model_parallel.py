"""Training with model parallelism: pipelines, data × pipeline grids and tensor
parallelism (chapters 3–5); the strategies ``pipeline-gpipe``, ``pipeline-1f1b``,
``dp-pp`` and ``tensor`` of ``python -m parcourse train``.

Every worker builds the whole model from the same seed and keeps only its part, so the
parts start exactly as the single-device model does; every strategy trains on the same
global batches (:func:`parcourse.data.global_batch`) and returns the unsplit model's
state_dict with plain key names, to compare key by key with ``--strategy single``.

**Rank grid (dp-pp).** W = R·P workers form R replicas of a P-stage pipeline; worker
``rank`` is stage ``rank % P`` of replica ``rank // P``. Replica r trains on shard r of
the global batch; after the backward pass, the workers that hold the same stage
all-reduce (sum) their gradients within their *data-parallel group*
{s, P + s, 2P + s, …}. Micro-batch m of replica r is weighted b_m / B (B: the global
batch), so the sum over micro-batches and replicas is the full batch's gradient.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from . import data as datasets
from . import checkpoint, launch, partition, pipeline, tensor_parallel
from .errors import ConfigError
from .models import build_model

PIPELINE_SCHEDULES = {"pipeline-gpipe": "gpipe", "pipeline-1f1b": "1f1b", "dp-pp": "1f1b"}


def grid(world_size: int, stages: int) -> tuple[int, int]:
    """(replicas, stages) of a data × pipeline grid of ``world_size`` workers."""
    if stages < 1 or world_size % stages:
        raise ConfigError(f"--workers {world_size} does not fit --stages {stages} × replicas: "
                          f"use a multiple of {max(stages, 1)} workers")
    return world_size // stages, stages


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


def pipeline_worker(rank: int, world_size: int, config):
    """One stage of one replica; rank 0 returns the gathered result, the others None."""
    from .train import (TrainResult, _progress, accuracy, check_finite, load_data_and_model,
                        make_optimizer)

    replicas, stages = grid(world_size, config.stages)
    replica, stage = divmod(rank, stages)
    device = launch.device()
    dataset, model = load_data_and_model(config)
    micro_size = config.batch_size // (replicas * config.microbatches)
    example = dataset.train_x[:micro_size]  # one micro-batch: shapes and layer times
    # measured layer times differ from worker to worker: rank 0 decides for everyone
    decision = [partition.partition(model, stages, config.partition, example)
                if rank == 0 else None]
    dist.broadcast_object_list(decision, src=0)
    ranges = decision[0]
    shapes = partition.boundary_shapes(model, ranges, example)
    start, end = ranges[stage]
    part = model[start:end].to(device)
    runner = pipeline.PipelineStage(part, stage, stages,
                                    rank - 1 if stage > 0 else None,
                                    rank + 1 if stage < stages - 1 else None,
                                    shapes[stage], shapes[stage + 1], device, example.dtype)
    groups = [dist.new_group([r * stages + s for r in range(replicas)]) for s in range(stages)]
    actions = pipeline.schedule(PIPELINE_SCHEDULES[config.strategy], stage, stages,
                                config.microbatches)
    trainable = list(part.parameters())
    optimizer = make_optimizer(config.optimizer, trainable, config.lr) if trainable else None
    first_parameter = len(list(model[:start].parameters()))
    losses = torch.zeros(config.steps, dtype=torch.float64)
    first_step = _restore(config, part, optimizer, first_parameter, losses, rank)
    timeline, n = [], len(dataset.train_y)
    bar = _progress(config, enabled=rank == 0, initial=first_step)
    t0 = pipeline.common_clock_origin(device)
    for step in range(first_step, config.steps):
        mine = datasets.shard(datasets.global_batch(n, config.batch_size, step, config.seed),
                              replica, replicas)
        micro = [datasets.shard(mine, m, config.microbatches) for m in range(config.microbatches)]
        part.zero_grad()
        loss, events = runner.run(
            actions, step, t0,
            inputs=[dataset.train_x[i].to(device) for i in micro] if runner.is_first else None,
            targets=[dataset.train_y[i].to(device) for i in micro] if runner.is_last else None,
            weights=[len(i) / config.batch_size for i in micro])
        if runner.is_last:
            check_finite(loss, step, config, rank)
        if trainable:
            if replicas > 1:
                _sum_gradients(part, groups[stage])
            optimizer.step()
        losses[step] = loss
        timeline += events
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            _save(config, part, optimizer, losses, step + 1, rank, world_size, device)
        bar.update(1)
    seconds = time.perf_counter() - t0
    bar.close()
    losses = losses.to(device)
    dist.all_reduce(losses)  # only the last stages hold losses: the sum is the global mean
    losses = losses.cpu()
    report = (replica, {k: v.detach().cpu().clone() for k, v in part.state_dict().items()},
              timeline, runner.peak_in_flight)
    gathered = [None] * world_size if rank == 0 else None
    dist.gather_object(report, gathered, dst=0)
    if rank != 0:
        return None
    state = {}
    for replica_index, part_state, _, _ in gathered:
        if replica_index == 0:
            state.update(part_state)
    full = build_model(config.model, dtype=example.dtype)
    full.load_state_dict(state)
    result = TrainResult(config, state, losses.tolist(), seconds,
                         accuracy(full, dataset.test_x, dataset.test_y, torch.device("cpu")))
    result.timeline = [e for _, _, events, _ in gathered[:stages] for e in events]
    result.peak_in_flight = [peak for _, _, _, peak in gathered[:stages]]
    result.stage_layers = ranges
    return result


def _restore(config, part, optimizer, first_parameter: int, losses: torch.Tensor,
             rank: int) -> int:
    """Load this stage's parameters and optimizer state from a checkpoint of the unsplit
    model (written by any strategy); return the step to continue from (0 if none)."""
    from .train import _resumable

    if not _resumable(config):
        return 0
    saved = checkpoint.load(config.checkpoint)
    part.load_state_dict({key: saved["model"][key] for key in part.state_dict()})
    if optimizer is not None:
        count = len(list(part.parameters()))
        optimizer.load_state_dict(
            checkpoint.split_optimizer_state(saved["optimizer"], first_parameter, count))
    if rank == 0:  # the losses so far, counted once in the final sum over workers
        losses[:saved["next_step"]] = torch.tensor(saved["losses"], dtype=losses.dtype)
    return saved["next_step"]


def _save(config, part, optimizer, losses: torch.Tensor, next_step: int, rank: int,
          world_size: int, device) -> None:
    """Gather every stage's parameters and optimizer state; rank 0 writes them as one
    checkpoint of the unsplit model (replica 0's copy: all replicas are equal)."""
    from dataclasses import asdict

    so_far = losses[:next_step].clone().to(device)  # a copy: the sum must not stay in losses
    dist.all_reduce(so_far)
    stages = config.stages
    mine = ({k: v.detach().cpu().clone() for k, v in part.state_dict().items()},
            optimizer.state_dict() if optimizer is not None else None)
    gathered = [None] * world_size if rank == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    if rank == 0:
        model_state = {k: v for part_state, _ in gathered[:stages] for k, v in part_state.items()}
        checkpoint.save(config.checkpoint, model_state=model_state,
                        optimizer_state=checkpoint.merge_optimizer_states(
                            [opt for _, opt in gathered[:stages]]),
                        next_step=next_step, losses=so_far.cpu().tolist(),
                        config=asdict(config))


def _sum_gradients(module: torch.nn.Module, group) -> None:
    """Sum this stage's gradients over the replicas that hold the same stage."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def tensor_worker(rank: int, world_size: int, config):
    """Megatron tensor parallelism: every worker sees the whole batch and holds 1/K of
    each split layer; rank 0 returns the gathered result."""
    from .train import TrainResult, accuracy, fit, load_data_and_model

    device = launch.device()
    dataset, whole = load_data_and_model(config)
    model = tensor_parallel.parallelize(whole, rank, world_size).to(device)
    def restore(config, model, optimizer, losses, _rank):
        from .train import _resumable

        if not _resumable(config):
            return 0
        saved = checkpoint.load(config.checkpoint)
        model_state, optimizer_state = tensor_parallel.shard_state(saved["model"], model,
                                                                   rank, world_size)
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state(saved["optimizer"]))
        losses[:saved["next_step"]] = torch.tensor(saved["losses"], dtype=losses.dtype)
        return saved["next_step"]

    def save(config, model, optimizer, losses, next_step, *_):
        from dataclasses import asdict

        model_state = tensor_parallel.full_state_dict(model)          # collectives: every
        optimizer_state = tensor_parallel.full_optimizer_state(optimizer, model, world_size)
        if rank == 0:                                                   # worker gathers
            checkpoint.save(config.checkpoint, model_state=model_state,
                            optimizer_state=optimizer_state, next_step=next_step,
                            losses=losses[:next_step].tolist(), config=asdict(config))

    losses, seconds = fit(model, config, dataset, device, show_progress=rank == 0,
                          restore=restore, save=save)
    state = tensor_parallel.full_state_dict(model)
    if rank != 0:
        return None
    full = build_model(config.model, dtype=dataset.train_x.dtype)
    full.load_state_dict(state)
    return TrainResult(config, state, losses, seconds,
                       accuracy(full, dataset.test_x, dataset.test_y, torch.device("cpu")))


def train_pipeline(config):
    """Pipeline strategies (``pipeline-gpipe``, ``pipeline-1f1b``, ``dp-pp``)."""
    return launch.run(pipeline_worker, config.workers, args=(config,), backend=config.backend,
                      timeout=config.timeout, verbose=not config.quiet)[0]


def train_tensor(config):
    """Tensor parallelism over ``config.workers`` workers."""
    return launch.run(tensor_worker, config.workers, args=(config,), backend=config.backend,
                      timeout=config.timeout, verbose=not config.quiet)[0]
