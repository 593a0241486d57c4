"""The strategy registry: each strategy declared once, in its own module (chapter 5).

A :class:`Strategy` says what runs it, which of the strategy-specific options it takes
(:data:`SPECIFIC`), how it splits the global batch, and its own checks. From these
declarations come the option checks ("``--X`` works with …"), the help text of each
option, and :func:`train`, which asks the declaration instead of comparing names.
Adding a strategy is one module that calls :func:`register`, imported by
``parcourse/training/__init__.py``.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from .. import checkpoint, collectives, launch, mixed_precision, moe
from .. import data as datasets
from ..data_parallel import gradient_sync
from ..errors import ConfigError
from .. import recompute as recomputation
from ..models import MODELS, SIZES, build_model, sizes_of
from .config import ATTENTIONS, DATASETS, DTYPES, MODEL_DATASETS, OPTIMIZERS, TrainConfig, TrainResult

# Options that only some strategies take; every other field of TrainConfig applies to all.
SPECIFIC = ("allreduce", "bucket_kb", "fp16_allreduce", "accumulation", "stages", "tensor",
            "microbatches", "chunks", "partition", "receives", "recompute", "precision",
            "reshard_after_forward", "sequence_parallel")
# Of those, the ones that tune how a strategy runs, not what it computes: a strategy that
# does not take them ignores them, so that one configuration serves several strategies
# (the book's comparisons do this). Setting any other specific option for a strategy that
# does not take it is an error ("--stages works with the pipeline strategies ...").
TUNING = ("allreduce", "bucket_kb", "partition", "receives")
# How a strategy splits the global batch of B samples over K workers.
EQUAL = "equal shards"          # averages K local means: needs K | B
WEIGHTED = "weighted shards"    # weights shard k by B_k / B: any B ≥ K
WHOLE = "the whole batch"       # every worker sees the whole batch (one worker, or tensor)
PIPELINED = "micro-batches"     # replicas' shards, cut into micro-batches
MOE_OPTIONS = ("experts", "top_k", "capacity_factor")   # the GPT's mixture (parcourse.moe)


@dataclass(frozen=True)
class Strategy:
    """A strategy's declaration: the engine asks it, never its name."""

    name: str
    run: Callable[[TrainConfig], TrainResult]   # trains config.workers workers; rank 0's result
    summary: str                                # one line for the README and --help
    options: tuple[str, ...] = ()               # the SPECIFIC options it takes
    batch: str = WEIGHTED                       # how it splits the global batch
    parallel: bool = True                       # False: exactly one worker
    family: str = ""                            # e.g. "pipeline": named in messages
    check: Callable[[TrainConfig], None] | None = None       # its own validation
    prepare: Callable[[TrainConfig], TrainConfig] | None = None  # fills its defaults
    models: tuple[str, ...] | None = None       # the models it trains (None: all of MODELS)
    experts: bool = False                       # trains a GPT with --experts (parcourse.moe)


REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    """Add ``strategy`` to :data:`REGISTRY` (each name once)."""
    if strategy.name in REGISTRY:
        raise ValueError(f"strategy {strategy.name!r} is declared twice")
    unknown = set(strategy.options) - set(SPECIFIC)
    if unknown:
        raise ValueError(f"strategy {strategy.name!r} declares unknown options {sorted(unknown)}")
    REGISTRY[strategy.name] = strategy
    return strategy


def takers(option: str) -> list[str]:
    """The strategies that take the specific ``option``, in registration order."""
    return [s.name for s in REGISTRY.values() if option in s.options]


def _family(names: list[str]) -> str:
    """The family whose members are exactly ``names`` ("pipeline"), or ""."""
    families = {REGISTRY[n].family for n in names}
    if len(families) == 1 and len(names) > 1:
        family = families.pop()
        if family and names == [n for n, s in REGISTRY.items() if s.family == family]:
            return family
    return ""


def option_help(option: str) -> str:
    """The start of an option's help text: the strategies that take it."""
    names = takers(option)
    family = _family(names)
    return f"{family} strategies ({', '.join(names)})" if family else ", ".join(names)


def _flag(option: str) -> str:
    """The command-line flag that changes ``option``: ``--x-y``, or ``--no-x-y`` for a
    switch that is on by default."""
    name = option.replace("_", "-")
    return f"--no-{name}" if getattr(TrainConfig(), option) is True else f"--{name}"


def _check_options(config: TrainConfig, check) -> None:
    """Each specific option left at its default, or taken by the chosen strategy."""
    defaults, strategy = TrainConfig(), REGISTRY[config.strategy]
    for option in SPECIFIC:
        if (option in TUNING or option in strategy.options
                or getattr(config, option) == getattr(defaults, option)):
            continue
        names = takers(option)
        family = _family(names)
        if family:
            check(False, f"{_flag(option)} works with the {family} strategies "
                         f"({', '.join(names)}), not --strategy {config.strategy}")
        listed = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
        check(False, f"{_flag(option)} works with --strategy {listed} "
                     f"(got --strategy {config.strategy})")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(config: TrainConfig) -> None:
    """Raise :class:`ConfigError` for the first invalid option: the generic checks, those
    generated from the declarations, then the strategy's own."""
    check = _check
    check(config.strategy in REGISTRY,
          f"unknown --strategy {config.strategy!r}: choose one of {', '.join(REGISTRY)}")
    for option, choices in (("model", MODELS), ("dataset", DATASETS),
                            ("optimizer", OPTIMIZERS), ("dtype", DTYPES),
                            ("precision", mixed_precision.PRECISIONS),
                            ("attention", ATTENTIONS),
                            ("backend", launch.BACKENDS)):
        value = getattr(config, option)
        check(value in choices,
              f"unknown --{option} {value!r}: choose one of {', '.join(choices)}")
    _check_model(config, check)
    check(config.steps >= 1, f"--steps must be at least 1 (got {config.steps})")
    check(config.batch_size >= 1, f"--batch-size must be at least 1 (got {config.batch_size})")
    check(config.lr > 0 and math.isfinite(config.lr),
          f"--lr must be a positive finite number (got {config.lr})")
    check(config.timeout > 0 and math.isfinite(config.timeout),
          f"--timeout must be a positive number of seconds (got {config.timeout})")
    check(config.workers >= 1, f"--workers must be at least 1 (got {config.workers})")
    strategy = REGISTRY[config.strategy]
    if not strategy.parallel:
        parallel = [n for n, s in REGISTRY.items() if s.parallel]
        check(config.workers == 1, f"--strategy {config.strategy} runs on one worker (got "
                                   f"--workers {config.workers}): use a parallel strategy "
                                   f"({', '.join(parallel)}) for several")
    else:
        _check_shards(config, strategy, check)
    allreduces = (*collectives.ALGORITHMS, gradient_sync.NATIVE)
    check(config.allreduce in allreduces,
          f"unknown --allreduce {config.allreduce!r}: choose one of {', '.join(allreduces)}")
    check(config.bucket_kb > 0, f"--bucket-kb must be positive (got {config.bucket_kb})")
    check(config.accumulation >= 1,
          f"--accumulation must be at least 1 (got {config.accumulation})")
    check(config.stages >= 0, f"--stages must be at least 1 (got {config.stages})")
    _check_options(config, check)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check(mixed_precision.unsupported(config.precision, device) is None,
          mixed_precision.unsupported(config.precision, device) or "")
    check(config.precision == "full" or config.dtype == "float32",
          f"--precision {config.precision} keeps float32 master weights: it does not combine "
          f"with --dtype {config.dtype}")
    if config.recompute:
        try:
            recomputation.blocks(build_model(config.model, **sizes_of(config.model, config)))
        except ValueError as err:
            check(False, f"--recompute needs a model made of blocks: {err}")
    check(config.checkpoint_every >= 0,
          f"--checkpoint-every must be 0 (never) or more (got {config.checkpoint_every})")
    check(config.checkpoint is not None or not (config.checkpoint_every or config.resume),
          "--checkpoint-every and --resume need --checkpoint FILE: say where checkpoints go")
    if strategy.check is not None:
        strategy.check(config)


def _check_model(config: TrainConfig, check) -> None:
    """The model's data set, its size options (and no other model's), and the strategy
    trains it."""
    model, defaults = config.model, TrainConfig()
    datasets_of = MODEL_DATASETS[model]
    check(config.dataset in datasets_of,
          f"--model {model} trains on --dataset {' or '.join(datasets_of)} "
          f"(got --dataset {config.dataset})")
    for option in dict.fromkeys(o for options in SIZES.values() for o in options):
        value = getattr(config, option)
        if option not in SIZES.get(model, ()):
            users = [name for name, options in SIZES.items() if option in options]
            check(value == getattr(defaults, option),
                  f"--{option.replace('_', '-')} works with --model {' or '.join(users)} "
                  f"(got --model {model})")
        if option not in MOE_OPTIONS:
            check(value >= 1, f"--{option} must be at least 1 (got {value})")
    problem = moe.check(config.experts, config.top_k, config.capacity_factor, defaults)
    check(problem is None, problem or "")
    if config.experts and not REGISTRY[config.strategy].experts:
        names = [n for n, s in REGISTRY.items() if s.experts]
        check(False, f"--experts works with --strategy {', '.join(names[:-1])} or "
                     f"{names[-1]} (got --strategy {config.strategy})")
    if "heads" in SIZES.get(model, ()):
        check(config.width % config.heads == 0,
              f"--width {config.width} is not divisible by --heads {config.heads}: each head "
              f"takes --width / --heads channels")
    if config.attention != defaults.attention:
        check(model == "gpt", f"--attention works with --model gpt (got --model {model})")
        from ..kernels import flash_attention

        problem = flash_attention.unsupported(config.width, config.heads, config.dtype)
        check(problem is None, problem or "")
    if config.dataset == "text":
        longest = datasets.text_max_sequence()
        check(config.sequence <= longest,
              f"--sequence {config.sequence} is longer than the text's test part allows: "
              f"use at most {longest}")
    strategy = REGISTRY[config.strategy]
    if strategy.models is not None and model not in strategy.models:
        check(False, f"--strategy {config.strategy} trains --model "
                     f"{' or '.join(strategy.models)} only (got --model {model})")


def _check_shards(config: TrainConfig, strategy: Strategy, check) -> None:
    k, b = config.workers, config.batch_size
    if strategy.batch in (EQUAL, WEIGHTED):
        check(b >= k, f"--batch-size {b} is smaller than --workers {k}: each worker "
                      f"needs at least one sample, so use --batch-size of at least {k}")
    if strategy.batch == EQUAL:
        check(b % k == 0,
              f"--batch-size {b} cannot be split evenly over --workers {k}, which "
              f"{config.strategy} needs: use a multiple of {k}, e.g. {b - b % k or k} or "
              f"{b - b % k + k}, or --strategy dp-manual, which weights uneven shards")
    if config.backend == "nccl":
        try:
            launch.choose_backend(k, "nccl")
        except ValueError as err:
            raise ConfigError(str(err).replace("backend='nccl'", "--backend nccl")
                              .replace("backend='gloo'", "--backend gloo")) from None


def train(config: TrainConfig) -> TrainResult:
    """Validate ``config`` and train with its strategy; rank 0's result."""
    validate(config)
    if resumable(config):
        problem = checkpoint.compatible(checkpoint.read(config.checkpoint), asdict(config))
        if problem:
            raise ConfigError(f"--resume cannot continue from {config.checkpoint}: {problem}")
    if config.dataset == "mnist":  # a download happens once, here, not in every worker
        datasets.load_dataset(config.dataset, seed=config.seed)
    strategy = REGISTRY[config.strategy]
    if strategy.prepare is not None:
        config = strategy.prepare(config)
    return strategy.run(config)


def resumable(config: TrainConfig) -> bool:
    """True when the run continues from an existing checkpoint."""
    return bool(config.resume and config.checkpoint and os.path.exists(config.checkpoint))
