"""Command line: ``python -m parcourse train --strategy ... --workers K ...``; ``bench``;
``plan`` (the planner of chapter 4, :mod:`parcourse.planner.command`).

Runs standalone (it starts its own workers) and unchanged under an external launcher:
``torchrun --standalone --nproc-per-node K -m parcourse train --strategy ddp ...`` or
``horovodrun -np K -H localhost:K --gloo python -m parcourse train --strategy horovod``,
where ``--workers`` defaults to the launcher's number of processes. Only rank 0 prints
and saves. Invalid options exit with code 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields

from . import launch
from .errors import ConfigError, MissingDependencyError, TrainingDiverged
from .models import MODELS
from .training import DATASETS, DTYPES, OPTIMIZERS, REGISTRY, TrainConfig, train
from .bench import command as bench_command
from .bench import gpt as bench_gpt
from .planner import command as plan_command
from .training.registry import option_help


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str):
        _fail(f"{self.prog}: error: {message} (see --help)")


def _launcher_rank_and_size() -> tuple[int, int]:
    """This process's rank and the number of processes, as torchrun or horovodrun set them."""
    for rank, size in (("RANK", "WORLD_SIZE"), ("HOROVOD_RANK", "HOROVOD_SIZE")):
        if rank in os.environ and size in os.environ:
            return int(os.environ[rank]), int(os.environ[size])
    return 0, 1


def _fail(message: str):
    if _launcher_rank_and_size()[0] == 0:
        print(message, file=sys.stderr)
    sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    parser = _Parser(prog="python -m parcourse",
                     description="Companion code of 'Parallel Computing in AI: from CPU to GPU'.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = commands.add_parser(
        "train", help="train a model with a parallel strategy",
        description="Train the book's models with a parallel strategy. --batch-size is the "
                    "global batch: K workers get --batch-size / K samples each per step, so "
                    "every strategy computes the same thing as --strategy single.")
    t.add_argument("--strategy", default=defaults.strategy, metavar="NAME",
                   help=f"how to parallelise: {', '.join(REGISTRY)} (default: %(default)s)")
    t.add_argument("--model", default=defaults.model, metavar="NAME",
                   help=f"{', '.join(MODELS)} (default: %(default)s)")
    t.add_argument("--dataset", default=None, metavar="NAME",
                   help=f"{', '.join(DATASETS)}; digits and text work offline; text (bytes "
                        f"of Python's docstrings) is the GPT's (default: digits, or text for "
                        f"--model gpt)")
    for option, what in (("layers", "transformer blocks"), ("width", "channels per token, "
                         "a multiple of --heads"), ("heads", "attention heads"),
                         ("sequence", "tokens per window (the context)")):
        t.add_argument(f"--{option}", type=int, default=getattr(defaults, option), metavar="N",
                       help=f"--model gpt: {what} (default: %(default)s)")
    t.add_argument("--experts", type=int, default=defaults.experts, metavar="E",
                   help="--model gpt: experts of each block's mixture-of-experts MLP; 0 keeps "
                        "the dense MLP (default: %(default)s)")
    t.add_argument("--top-k", type=int, default=defaults.top_k, metavar="K",
                   help="--experts: the experts each token goes to (default: %(default)s)")
    t.add_argument("--capacity-factor", type=float, default=defaults.capacity_factor,
                   metavar="C", help="--experts: each expert takes at most ⌈C·k·T/E⌉ tokens "
                   "of a window; the rest skip it (default: %(default)s)")
    t.add_argument("--steps", type=int, default=defaults.steps,
                   help="optimizer steps (default: %(default)s)")
    t.add_argument("--batch-size", type=int, default=defaults.batch_size, metavar="B",
                   help="global batch size, split over the workers (default: %(default)s)")
    t.add_argument("--lr", type=float, default=defaults.lr,
                   help="learning rate (default: %(default)s)")
    t.add_argument("--optimizer", default=defaults.optimizer, metavar="NAME",
                   help=f"{', '.join(OPTIMIZERS)} (default: %(default)s)")
    t.add_argument("--dtype", default=defaults.dtype, metavar="NAME",
                   help=f"{', '.join(DTYPES)}: the dtype of parameters, data, optimizer state "
                        f"and messages; float64 makes every strategy equal to single to "
                        f"1e-10 on any machine (default: %(default)s)")
    t.add_argument("--precision", default=None, metavar="NAME",
                   help=f"{option_help('precision')}: fp64 (the same as --dtype float64), "
                        f"fp32, or bf16 / fp16: products in 16 bits, float32 master weights "
                        f"(fp16 with dynamic loss scaling) (default: fp32, or --dtype's)")
    t.add_argument("--seed", type=int, default=defaults.seed,
                   help="seed of the initial weights and of the batch order (default: %(default)s)")
    t.add_argument("--workers", type=int, default=None, metavar="K",
                   help="number of workers (default: 1, or the number of processes that "
                        "torchrun or horovodrun started)")
    t.add_argument("--backend", default=defaults.backend, metavar="NAME",
                   help=f"{', '.join(launch.BACKENDS)}: auto takes nccl with one GPU per "
                        f"worker, else gloo on CPU (default: %(default)s)")
    t.add_argument("--allreduce", default=defaults.allreduce, metavar="NAME",
                   help=f"{option_help('allreduce')}: naive, ring, tree (parcourse.collectives) "
                        f"or native (the backend's own, gloo or NCCL) (default: %(default)s)")
    t.add_argument("--bucket-kb", type=float, default=defaults.bucket_kb, metavar="KIB",
                   help=f"{option_help('bucket_kb')}: gradient bucket size in KiB "
                        f"(default: %(default)s)")
    t.add_argument("--accumulation", type=int, default=defaults.accumulation, metavar="M",
                   help=f"{option_help('accumulation')}: accumulate gradients over M "
                        f"micro-batches per step (default: %(default)s)")
    t.add_argument("--stages", type=int, default=defaults.stages, metavar="P",
                   help=f"{option_help('stages')}: stages per pipeline (default: one per "
                        f"worker; dp-pp: 2, with --workers / P replicas)")
    t.add_argument("--tensor", type=int, default=defaults.tensor, metavar="T",
                   help=f"{option_help('tensor')}: tensor ranks per stage, which split each "
                        f"block by heads and columns; --workers / (P·T) replicas (default: 2)")
    t.add_argument("--microbatches", type=int, default=defaults.microbatches, metavar="M",
                   help=f"{option_help('microbatches')}: micro-batches per step; 1 is the "
                        f"naive layer split (default: %(default)s)")
    t.add_argument("--chunks", type=int, default=defaults.chunks, metavar="V",
                   help=f"{option_help('chunks')}: model chunks per stage; the model is cut "
                        f"into stages × V chunks and stage s holds chunks s, s + P, … "
                        f"(default: 2)")
    t.add_argument("--partition", default=defaults.partition, metavar="HOW",
                   help=f"{option_help('partition')}: where to cut the model: 'parameters' "
                        f"(balance parameter counts), 'time' (balance measured layer times) "
                        f"or cut points such as 3 or 2,5 (default: %(default)s)")
    t.add_argument("--receives", default=defaults.receives, metavar="WHEN",
                   help=f"{option_help('receives')}: when a stage posts the receives of its "
                        f"activations and gradients: step (all at the start of the step), "
                        f"ahead (the next one of each direction) or needed (when it needs "
                        f"the message: slower, since gloo moves a message once its receive "
                        f"is posted) (default: %(default)s)")
    t.add_argument("--fp16-allreduce", action="store_true",
                   help=f"{option_help('fp16_allreduce')}: compress gradients to float16 on "
                        f"the wire")
    t.add_argument("--recompute", action="store_true",
                   help=f"{option_help('recompute')}: recompute each block's activations "
                        f"in backward instead of keeping them (less memory, about one more "
                        f"forward pass of time)")
    t.add_argument("--no-reshard-after-forward", dest="reshard_after_forward",
                   action="store_false",
                   help=f"{option_help('reshard_after_forward')}: keep each layer's gathered "
                        f"parameters from forward to backward instead of gathering them "
                        f"again (less traffic, more memory)")
    t.add_argument("--sequence-parallel", action="store_true",
                   help=f"{option_help('sequence_parallel')}, --model gpt: split the "
                        f"LayerNorm and residual activations along the sequence too: "
                        f"all-gather and reduce-scatter instead of all-reduce, 1/K of the "
                        f"activations (Korthikanti et al., 2022)")
    t.add_argument("--attention", default=defaults.attention, metavar="KERNEL",
                   help="--model gpt: compute the heads' attention with torch (the scores "
                        "kept, S × S per head) or triton (FlashAttention-2 on a CUDA GPU; "
                        "on a CPU in Triton's interpreter, slowly) (default: %(default)s)")
    t.add_argument("--timeout", type=float, default=defaults.timeout, metavar="SECONDS",
                   help="stop the workers if they have not finished by then (default: %(default)s)")
    t.add_argument("--save", metavar="FILE",
                   help="save the final state_dict (plain key names) with torch.save")
    t.add_argument("--metrics", metavar="FILE",
                   help="write the per-step losses and timings as JSON")
    t.add_argument("--checkpoint", metavar="FILE",
                   help="where checkpoints go (written atomically: a crash mid-write "
                        "leaves the previous one intact)")
    t.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                   help="save a checkpoint every N steps (default: never)")
    t.add_argument("--resume", action="store_true",
                   help="continue from --checkpoint if it exists (else start at step 0); "
                        "safe to pass on every start, e.g. under torchrun --max-restarts")
    t.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    bench_command.add_parser(commands)
    h = commands.add_parser(
        "install-horovod", help="build Horovod 0.28.1 from source for this PyTorch (C++17 "
                                "patch, Gloo), a few minutes",
        description="Build Horovod 0.28.1 from its pinned source release, patched to C++17 "
                    "for PyTorch >= 2.1, with Gloo, into this Python environment (or the one "
                    "of --python). On Colab or Kaggle: run it in a cell, then restart the "
                    "runtime.")
    h.add_argument("--python", default=sys.executable, metavar="PATH",
                   help="the Python whose environment gets Horovod (default: this one)")
    plan_command.add_parser(commands)
    return parser


PRECISION_CHOICES = ("fp64", "fp32", "bf16", "fp16")


def _precision(precision: str | None, dtype: str) -> dict:
    """--precision as TrainConfig's ``dtype`` (master weights) and ``precision`` (products)."""
    if precision is None:
        return {"precision": "full"}
    if precision not in PRECISION_CHOICES:
        _fail(f"python -m parcourse train: error: unknown --precision {precision!r}: choose "
              f"one of {', '.join(PRECISION_CHOICES)}")
    wanted = {"fp64": "float64", "fp32": "float32"}.get(precision, "float32")
    if dtype != TrainConfig().dtype and dtype != wanted:
        _fail(f"python -m parcourse train: error: --precision {precision} and --dtype {dtype} "
              f"disagree: give one of them")
    return {"dtype": wanted, "precision": "full" if precision in ("fp64", "fp32") else precision}


def train_command(args: argparse.Namespace) -> int:
    rank, launched = _launcher_rank_and_size()
    workers = launched if args.workers is None else args.workers
    options = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    options.update(_precision(args.precision, args.dtype))
    config = TrainConfig(**{**options, "workers": workers})
    if config.strategy in REGISTRY and not REGISTRY[config.strategy].parallel and launched > 1:
        _fail(f"python -m parcourse train: error: --strategy {config.strategy} runs on one "
              f"worker, but {launched} processes were started: use a parallel strategy")
    try:
        for option in ("save", "metrics"):
            _check_writable(getattr(args, option), f"--{option}")
        result = train(config)
    except (ConfigError, MissingDependencyError) as err:
        _fail(f"python -m parcourse train: error: {err}")
    except TrainingDiverged as err:
        if rank == 0:
            print(f"python -m parcourse train: failed: {err}", file=sys.stderr)
        return 1
    except (launch.WorkerError, launch.WorkerTimeout) as err:
        print(f"python -m parcourse train: failed: {err}", file=sys.stderr)
        return 1
    if result is None:  # not rank 0 (for horovod-elastic: not rank 0 at the end)
        return 0
    if args.save:
        import torch

        torch.save(result.state_dict, args.save)
    if args.metrics:
        with open(args.metrics, "w") as f:
            json.dump({"losses": result.losses, "seconds": result.seconds,
                       "samples_per_second": result.samples_per_second,
                       "test_accuracy": result.test_accuracy,
                       "communication_seconds": result.communication_seconds,
                       "overlap": result.overlap,
                       **({"throughput": bench_gpt.throughput(result)}
                          if config.model == "gpt" else {}),
                       "config": vars(config)}, f, indent=1)
    if not config.quiet:
        workers = result.config.workers  # horovod-elastic: the workers left at the end
        print(f"{config.strategy} on {workers} worker{'s' if workers > 1 else ''}: "
              f"final loss {result.losses[-1]:.4f}, test accuracy {result.test_accuracy:.1%}, "
              f"{result.samples_per_second:,.0f} samples/s"
              + (bench_gpt.summary(result) if config.model == "gpt" else "")
              + (f"; parameters saved to {args.save}" if args.save else ""))
    return 0


def _check_writable(path: str | None, option: str) -> None:
    """Refuse, before training, a file that could not be written at the end."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError(f"{option} {path} is a folder: name a file in it")
    if not os.path.isdir(folder):
        raise ConfigError(f"{option} {path}: the folder {folder} does not exist: create it "
                          f"first or save elsewhere")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"{option} {path}: the folder {folder} is not writable: save "
                          f"elsewhere")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "install-horovod":
        from .horovod_install import install

        return install(args.python)
    return {"train": train_command, "bench": bench_command.run,
            "plan": plan_command.run}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
