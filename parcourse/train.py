"""Training with a choice of strategy: the engine behind ``python -m parcourse train``.

Every strategy trains the same model on the same global batches (see
:func:`parcourse.data.global_batch`), so its final parameters can be compared key by
key with ``strategy="single"`` (chapter 3, "parallelism changes where work runs, not
what is computed"). ``batch_size`` is always the *global* batch ``B``; a data-parallel
strategy with ``K`` workers gives each worker ``B / K`` samples per step.

Strategies:

* ``single`` — one process, the reference.
* ``ddp`` — PyTorch ``DistributedDataParallel`` over ``K`` workers started by
  :func:`parcourse.launch.run` (or by ``torchrun``). Each worker computes the mean loss
  of its ``B/K`` samples; DDP averages the gradients over workers, which equals the
  gradient of the mean loss over all ``B`` samples (chapter 4). Needs ``K | B``.
* ``dp-manual`` and ``dp-bucketed`` — the same algorithm written out in
  :mod:`parcourse.data_parallel` with the all-reduce of :mod:`parcourse.collectives`
  (``allreduce`` picks naive, ring, tree or the backend's own); uneven shards allowed.
* ``horovod`` — Horovod's ``DistributedOptimizer`` (:mod:`parcourse.horovod_dp`), started
  with ``horovod.run`` or under ``horovodrun``; ``fp16_allreduce`` compresses gradients.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import checkpoint, collectives, data_parallel, launch
from . import data as datasets
from .errors import ConfigError, TrainingDiverged
from .models import MODELS, build_model

OPTIMIZERS = ("sgd", "adam")
DATASETS = ("digits", "mnist")
DTYPES = ("float32", "float64")


@dataclass
class TrainConfig:
    """All options of one training run; field ``x_y`` is the command-line ``--x-y``."""

    strategy: str = "single"
    model: str = "simple"
    dataset: str = "digits"
    steps: int = 100
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"
    dtype: str = "float32"          # float64 proves equality with single (parcourse.compare)
    seed: int = 0
    workers: int = 1
    backend: str = "auto"
    allreduce: str = "ring"         # dp-manual, dp-bucketed: which all-reduce
    bucket_kb: float = 1024.0       # dp-bucketed: bucket size in KiB
    fp16_allreduce: bool = False    # horovod: send gradients as float16
    accumulation: int = 1           # single: micro-batches per step (gradient accumulation)
    stages: int = 0                 # pipelines: number of stages (0: --workers, or 2 for dp-pp)
    microbatches: int = 1           # pipelines: micro-batches per step (1: naive layer split)
    partition: str = "parameters"   # pipelines: parameters, time, or cut points such as 3 or 2,5
    checkpoint: str | None = None   # file for checkpoints (see parcourse.checkpoint)
    checkpoint_every: int = 0       # save every N steps (0: never)
    resume: bool = False            # continue from the checkpoint if it exists
    timeout: float = 600.0
    quiet: bool = False


@dataclass
class TrainResult:
    """What a run produced: final parameters (plain key names, on the CPU) and measurements."""

    config: TrainConfig
    state_dict: dict = field(repr=False)
    losses: list = field(repr=False)       # mean loss over the global batch, per step
    seconds: float = 0.0                   # wall time of the training loop
    test_accuracy: float = 0.0
    communication_seconds: float = 0.0     # dp-manual, dp-bucketed: time in all-reduce
    overlap: float = 0.0                   # dp-bucketed: share of it hidden behind backward
    timeline: list = field(default_factory=list, repr=False)  # pipelines: pipeline.Event list
    peak_in_flight: list = field(default_factory=list)       # pipelines: per stage
    stage_layers: list = field(default_factory=list)         # pipelines: (start, end) per stage

    @property
    def samples_per_second(self) -> float:
        return self.config.steps * self.config.batch_size / self.seconds


def validate(config: TrainConfig) -> None:
    """Raise :class:`ConfigError` for the first invalid option."""
    def check(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    check(config.strategy in STRATEGIES,
          f"unknown --strategy {config.strategy!r}: choose one of {', '.join(STRATEGIES)}")
    check(config.model in MODELS,
          f"unknown --model {config.model!r}: choose one of {', '.join(MODELS)}")
    check(config.dataset in DATASETS,
          f"unknown --dataset {config.dataset!r}: choose one of {', '.join(DATASETS)}")
    check(config.optimizer in OPTIMIZERS,
          f"unknown --optimizer {config.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    check(config.dtype in DTYPES,
          f"unknown --dtype {config.dtype!r}: choose one of {', '.join(DTYPES)}")
    check(config.backend in launch.BACKENDS,
          f"unknown --backend {config.backend!r}: choose one of {', '.join(launch.BACKENDS)}")
    check(config.steps >= 1, f"--steps must be at least 1 (got {config.steps})")
    check(config.batch_size >= 1, f"--batch-size must be at least 1 (got {config.batch_size})")
    check(config.lr > 0 and math.isfinite(config.lr),
          f"--lr must be a positive finite number (got {config.lr})")
    check(config.timeout > 0 and math.isfinite(config.timeout),
          f"--timeout must be a positive number of seconds (got {config.timeout})")
    check(config.workers >= 1, f"--workers must be at least 1 (got {config.workers})")
    if config.strategy == "single":
        check(config.workers == 1, f"--strategy single runs on one worker (got --workers "
                                   f"{config.workers}): use a parallel strategy "
                                   f"({', '.join(list(STRATEGIES)[1:])}) for several")
    else:
        k, b = config.workers, config.batch_size
        check(b >= k or config.strategy not in DATA_PARALLEL,
              f"--batch-size {b} is smaller than --workers {k}: each worker "
              f"needs at least one sample, so use --batch-size of at least {k}")
        check(b % k == 0 or config.strategy not in AVERAGING,
              f"--batch-size {b} cannot be split evenly over --workers {k}, which "
              f"{config.strategy} needs: use a multiple of {k}, e.g. {b - b % k or k} or {b - b % k + k}, or "
              f"--strategy dp-manual, which weights uneven shards")
        if config.backend == "nccl":
            try:
                launch.choose_backend(k, "nccl")
            except ValueError as err:
                raise ConfigError(str(err).replace("backend='nccl'", "--backend nccl")
                                  .replace("backend='gloo'", "--backend gloo")) from None
    allreduces = (*collectives.ALGORITHMS, data_parallel.NATIVE)
    check(config.allreduce in allreduces,
          f"unknown --allreduce {config.allreduce!r}: choose one of {', '.join(allreduces)}")
    check(config.bucket_kb > 0, f"--bucket-kb must be positive (got {config.bucket_kb})")
    check(not config.fp16_allreduce or config.strategy == "horovod",
          f"--fp16-allreduce works with --strategy horovod (got --strategy {config.strategy})")
    check(config.accumulation >= 1,
          f"--accumulation must be at least 1 (got {config.accumulation})")
    check(config.accumulation == 1 or config.strategy == "single",
          f"--accumulation works with --strategy single (got --strategy {config.strategy})")
    check(config.checkpoint_every >= 0,
          f"--checkpoint-every must be 0 (never) or more (got {config.checkpoint_every})")
    check(config.checkpoint is not None or not (config.checkpoint_every or config.resume),
          "--checkpoint-every and --resume need --checkpoint FILE: say where checkpoints go")
    _validate_model_parallel(config, check)
    check(config.accumulation <= config.batch_size,
          f"--accumulation {config.accumulation} is larger than --batch-size "
          f"{config.batch_size}: each micro-batch needs at least one sample")


def stages_of(config: TrainConfig) -> int:
    """The number of pipeline stages: ``--stages``, or by default one per worker (two
    for dp-pp)."""
    if config.stages:
        return config.stages
    return 2 if config.strategy == "dp-pp" else config.workers


def _validate_model_parallel(config: TrainConfig, check) -> None:
    from . import model_parallel, partition, tensor_parallel

    pipelined = config.strategy in PIPELINES
    check(config.stages >= 0, f"--stages must be at least 1 (got {config.stages})")
    check(pipelined or not config.stages,
          f"--stages works with the pipeline strategies ({', '.join(PIPELINES)}), "
          f"not --strategy {config.strategy}")
    check(pipelined or config.microbatches == 1,
          f"--microbatches works with the pipeline strategies ({', '.join(PIPELINES)}), "
          f"not --strategy {config.strategy}")
    check(config.strategy != "horovod-elastic" or not (config.checkpoint or config.resume),
          "--checkpoint and --resume do not apply to --strategy horovod-elastic, which "
          "commits its state in memory every 10 steps")
    model = MODELS[config.model]()
    if config.strategy == "tensor":
        tensor_parallel.check_splittable(model, config.workers)
    if not pipelined:
        return
    stages = stages_of(config)
    check(config.strategy == "dp-pp" or stages == config.workers,
          f"--strategy {config.strategy} runs one stage per worker, but --stages is {stages} "
          f"and --workers {config.workers}: make them equal, or use --strategy dp-pp for "
          f"several pipeline replicas")
    partition.check_stages(len(model), stages, f"--model {config.model}")
    replicas, _ = model_parallel.grid(config.workers, stages)
    model_parallel.check_microbatches(config.batch_size, replicas, config.microbatches)
    if config.partition not in partition.METHODS:
        partition.parse_boundaries(config.partition, len(model), stages)


def train(config: TrainConfig) -> TrainResult:
    """Validate ``config`` and train with its strategy."""
    validate(config)
    if _resumable(config):
        problem = checkpoint.compatible(checkpoint.read(config.checkpoint),
                                        asdict(config))
        if problem:
            raise ConfigError(f"--resume cannot continue from {config.checkpoint}: {problem}")
    if config.dataset != "digits":  # a download happens once, here, not in every worker
        datasets.load_dataset(config.dataset, seed=config.seed)
    if config.strategy in PIPELINES and not config.stages:
        config = replace(config, stages=stages_of(config))
    return STRATEGIES[config.strategy](config)


def dtype_of(config: TrainConfig) -> torch.dtype:
    """The torch dtype of a run's parameters, data, optimizer state and messages."""
    return getattr(torch, config.dtype)


def load_data_and_model(config: TrainConfig, device: torch.device | None = None,
                        seed: int | None = None):
    """A worker's data set and a fresh copy of the whole model, both in ``config.dtype``
    (the model on ``device`` when one is given; initial weights from ``seed``, by default
    ``config.seed``)."""
    dtype = dtype_of(config)
    dataset = datasets.load_dataset(config.dataset, seed=config.seed, dtype=dtype)
    model = build_model(config.model, seed=config.seed if seed is None else seed, dtype=dtype)
    return dataset, (model if device is None else model.to(device))


def check_finite(loss: float, step: int, config: TrainConfig, rank: int) -> None:
    """Stop at the first NaN or infinite loss (``step`` counts from 0), naming the rank."""
    if not math.isfinite(loss):
        raise TrainingDiverged(loss, step + 1, config.steps, rank, config.lr)


def _resumable(config: TrainConfig) -> bool:
    return bool(config.resume and config.checkpoint and os.path.exists(config.checkpoint))


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """Plain SGD or Adam with the given learning rate."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    return torch.optim.Adam(params, lr=lr)


def _progress(config: TrainConfig, enabled: bool, initial: int = 0):
    from tqdm.auto import tqdm

    if "_lock" not in vars(tqdm):  # a thread lock, not tqdm's default semaphore: a worker
        tqdm.set_lock(threading.RLock())  # that is stopped then leaks nothing
    return tqdm(total=config.steps, initial=initial, desc=config.strategy, unit="step",
                disable=config.quiet or not enabled, leave=True)


def fit(model: nn.Module, config: TrainConfig, dataset: datasets.Dataset,
        device: torch.device, rank: int = 0, world_size: int = 1, sync=None,
        optimizer: torch.optim.Optimizer | None = None,
        sum_over_workers=dist.all_reduce,
        show_progress: bool | None = None, restore=None, save=None) -> tuple[list, float]:
    """The training loop shared by every strategy, run by each worker on its shard.

    Worker k back-propagates its local mean loss, times B_k/B when ``sync`` (a gradient
    all-reduce of :mod:`parcourse.data_parallel`) sums the gradients afterwards; DDP
    averages them itself. With ``config.accumulation = m`` the (single) worker cuts its
    batch into m micro-batches and back-propagates each one's mean loss times its share
    of the batch: the accumulated gradient is the full batch's. Returns the mean loss over the *global* batch of every step
    (summed over workers once, at the end, with ``sum_over_workers``) and the loop's wall
    time. ``optimizer`` defaults to ``config.optimizer`` over ``model.parameters()``.
    The progress bar shows on rank 0 unless ``show_progress`` says otherwise.
    ``restore`` and ``save`` replace :func:`_restore` and :func:`_save` (same arguments)
    for a model that is not a whole replica (tensor parallelism).
    """
    restore, save = restore or _restore, save or _save
    if optimizer is None:
        optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr)
    n = len(dataset.train_y)
    share = datasets.shard_sizes(config.batch_size, world_size)[rank] / config.batch_size
    losses = torch.zeros(config.steps, dtype=torch.float64)
    first_step = restore(config, getattr(model, "module", model), optimizer, losses, rank)
    bar = _progress(config, enabled=rank == 0 if show_progress is None else show_progress,
                    initial=first_step)
    start = time.perf_counter()
    for step in range(first_step, config.steps):
        indices = datasets.global_batch(n, config.batch_size, step, config.seed)
        mine = datasets.shard(indices, rank, world_size)
        optimizer.zero_grad()  # frees the gradients (set_to_none, the default)
        local_loss = 0.0
        for micro in range(config.accumulation):
            part = datasets.shard(mine, micro, config.accumulation)
            x, y = dataset.train_x[part].to(device), dataset.train_y[part].to(device)
            loss = F.cross_entropy(model(x), y)
            local_loss += loss.item() * len(part) / len(mine)
            if micro == config.accumulation - 1:  # before the backward pass's collectives
                check_finite(_global_loss(local_loss * share, world_size, sum_over_workers,
                                          device), step, config, rank)
            weight = len(part) / len(mine) * (share if sync is not None else 1.0)
            (loss * weight if weight != 1.0 else loss).backward()
        if sync is not None:
            sync.finish()
        optimizer.step()
        losses[step] = local_loss * share
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            save(config, getattr(model, "module", model), optimizer, losses, step + 1,
                  rank, world_size, sum_over_workers)
        bar.update(1)
        if step % 10 == 0 or step == config.steps - 1:
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{local_loss:.4f}",
                            samples_per_s=f"{(step + 1) * config.batch_size / elapsed:,.0f}")
    seconds = time.perf_counter() - start
    bar.close()
    if world_size > 1:
        sum_over_workers(losses)
    return losses.tolist(), seconds


def _global_loss(mine: float, world_size: int, sum_over_workers, device) -> float:
    """The global batch's mean loss from each worker's weighted share: one scalar summed
    over the workers, so that every worker sees a non-finite loss at the same step."""
    if world_size == 1:
        return mine
    total = torch.tensor([mine], dtype=torch.float64, device=device)
    sum_over_workers(total)
    return total.item()


def _restore(config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
             losses: torch.Tensor, rank: int) -> int:
    """Load the checkpoint when resuming; return the step to continue from (0 if none).

    Every worker loads the same file; rank 0 alone keeps the global losses so far, which
    the final sum over workers then leaves unchanged.
    """
    if not _resumable(config):
        return 0
    saved = checkpoint.load(config.checkpoint)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if rank == 0:
        losses[:saved["next_step"]] = torch.tensor(saved["losses"], dtype=losses.dtype)
    return saved["next_step"]


def _save(config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
          losses: torch.Tensor, next_step: int, rank: int, world_size: int,
          sum_over_workers) -> None:
    """Rank 0 writes a checkpoint at a step boundary, with the global losses so far."""
    so_far = losses[:next_step].clone()
    if world_size > 1:
        sum_over_workers(so_far)
    if rank == 0:
        checkpoint.save(config.checkpoint, model_state=model.state_dict(),
                        optimizer_state=optimizer.state_dict(), next_step=next_step,
                        losses=so_far.tolist(), config=asdict(config))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y``."""
    model.eval()
    predictions = model(x.to(device)).argmax(dim=1).cpu()
    model.train()
    return (predictions == y).float().mean().item()


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def train_single(config: TrainConfig) -> TrainResult:
    """The single-device reference: one process, the whole global batch each step."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dataset, model = load_data_and_model(config, device)
    losses, seconds = fit(model, config, dataset, device)
    return TrainResult(config, _cpu_state(model), losses, seconds,
                       accuracy(model, dataset.test_x, dataset.test_y, device))


def _replicate(model: nn.Module, config: TrainConfig, device: torch.device):
    """Wrap a worker's replica for its data-parallel strategy: (module to train, sync)."""
    if config.strategy == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids), None
    data_parallel.broadcast_parameters(model)
    if config.strategy == "dp-manual":
        return model, data_parallel.GradientAllReduce(model, config.allreduce)
    return model, data_parallel.BucketedGradientAllReduce(
        model, int(config.bucket_kb * 1024), config.allreduce)


def data_parallel_worker(rank: int, world_size: int, config: TrainConfig) -> TrainResult | None:
    """One data-parallel worker; rank 0 returns the result, the others ``None``."""
    device = launch.device()
    dataset, model = load_data_and_model(config, device)
    replica, sync = _replicate(model, config, device)
    losses, seconds = fit(replica, config, dataset, device, rank, world_size, sync)
    if rank != 0:
        return None
    return TrainResult(config, _cpu_state(model), losses, seconds,
                       accuracy(model, dataset.test_x, dataset.test_y, device),
                       getattr(sync, "communication_seconds", 0.0),
                       getattr(sync, "overlap", 0.0))


def train_data_parallel(config: TrainConfig) -> TrainResult:
    """Data parallelism over ``config.workers`` workers (ddp, dp-manual or dp-bucketed)."""
    results = launch.run(data_parallel_worker, config.workers, args=(config,),
                         backend=config.backend, timeout=config.timeout,
                         verbose=not config.quiet)
    return results[0]


def train_horovod(config: TrainConfig) -> TrainResult:
    """Data parallelism with Horovod (see :mod:`parcourse.horovod_dp`)."""
    from .horovod_dp import train_horovod as run_horovod

    return run_horovod(config, fp16=config.fp16_allreduce)


def train_horovod_elastic(config: TrainConfig) -> TrainResult:
    """Horovod's elastic data parallelism (see :mod:`parcourse.horovod_elastic`)."""
    from .horovod_elastic import train_elastic

    return train_elastic(config)


def train_pipeline(config: TrainConfig) -> TrainResult:
    """Pipelines and data × pipeline grids (see :mod:`parcourse.model_parallel`)."""
    from .model_parallel import train_pipeline as run

    return run(config)


def train_tensor(config: TrainConfig) -> TrainResult:
    """Megatron tensor parallelism (see :mod:`parcourse.model_parallel`)."""
    from .model_parallel import train_tensor as run

    return run(config)


STRATEGIES = {"single": train_single, "ddp": train_data_parallel,
              "dp-manual": train_data_parallel, "dp-bucketed": train_data_parallel,
              "horovod": train_horovod, "horovod-elastic": train_horovod_elastic,
              "pipeline-gpipe": train_pipeline, "pipeline-1f1b": train_pipeline,
              "dp-pp": train_pipeline, "tensor": train_tensor}
AVERAGING = ("ddp", "horovod")  # they average K local means, so they need equal shards
DATA_PARALLEL = ("ddp", "dp-manual", "dp-bucketed", "horovod", "horovod-elastic")
PIPELINES = ("pipeline-gpipe", "pipeline-1f1b", "dp-pp")
MODEL_PARALLEL = (*PIPELINES, "tensor")
