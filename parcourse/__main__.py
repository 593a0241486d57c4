"""Command line: ``python -m parcourse train --strategy ... --workers K ...``.

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
from dataclasses import fields, replace

from . import launch
from .errors import ConfigError, MissingDependencyError, TrainingDiverged
from .models import MODELS
from .training import DATASETS, DTYPES, OPTIMIZERS, REGISTRY, TrainConfig, train, validate
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
    t.add_argument("--dataset", default=defaults.dataset, metavar="NAME",
                   help=f"{', '.join(DATASETS)}; digits works offline (default: %(default)s)")
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
    t.add_argument("--microbatches", type=int, default=defaults.microbatches, metavar="M",
                   help=f"{option_help('microbatches')}: micro-batches per step; 1 is the "
                        f"naive layer split (default: %(default)s)")
    t.add_argument("--partition", default=defaults.partition, metavar="HOW",
                   help=f"{option_help('partition')}: where to cut the model: 'parameters' "
                        f"(balance parameter counts), 'time' (balance measured layer times) "
                        f"or cut points such as 3 or 2,5 (default: %(default)s)")
    t.add_argument("--fp16-allreduce", action="store_true",
                   help=f"{option_help('fp16_allreduce')}: compress gradients to float16 on "
                        f"the wire")
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
    b = commands.add_parser("bench", help="benchmarks that print tables",
                            description="Benchmarks: they print tables and ratios measured "
                                        "side by side in one run; nothing is asserted.")
    b.add_argument("what", choices=("allreduce", "dp", "pipeline", "kernels"),
                   help="allreduce: bus bandwidth of each all-reduce, reduce-scatter and "
                        "all-gather against gloo's; "
                        "dp: training throughput of the data-parallel strategies against DDP; "
                        "pipeline: step time and bubble of the naive split, GPipe and 1F1B; "
                        "kernels: the Triton kernels (GPU) or the torch ops (CPU) against "
                        "the device's roofline")
    b.add_argument("--workers", type=int, nargs="+", default=None, metavar="K",
                   help="numbers of workers (default: allreduce 2 4, dp 2)")
    b.add_argument("--max-mb", type=float, default=64, metavar="MB",
                   help="allreduce: largest message in MiB (default: %(default)s)")
    b.add_argument("--partition", default="time", metavar="HOW",
                   help="pipeline: where to cut the model, as in train (default: %(default)s)")
    b.add_argument("--horovod", action="store_true",
                   help="allreduce: include Horovod's all-reduce")
    b.add_argument("--steps", type=int, default=None,
                   help="dp, pipeline: steps per run (default: dp 200, pipeline 12)")
    b.add_argument("--microbatches", type=int, nargs="+", default=None, metavar="M",
                   help="pipeline: numbers of micro-batches (default: 1 2 4 8)")
    b.add_argument("--batch-size", type=int, default=256, metavar="B",
                   help="dp: global batch (default: %(default)s)")
    b.add_argument("--model", default=None, metavar="NAME",
                   help="dp, pipeline: model to train (default: dp simple, pipeline complex)")
    b.add_argument("--quick", action="store_true", help="kernels: small sizes (a smoke test)")
    b.add_argument("--json", metavar="FILE", help="kernels: also write every figure as JSON")
    return parser


def bench_command(args: argparse.Namespace) -> int:
    from . import env
    from .bench import allreduce as bench_allreduce
    from .bench import pipeline as bench_pipeline
    from .bench import training as bench_training

    print(f"# {env.describe()}")
    if args.what == "kernels":
        return _bench_kernels(args)
    if args.what == "allreduce":
        largest = int(args.max_mb * (1 << 20))
        sizes = [s for s in bench_allreduce.DEFAULT_SIZES if s <= largest]
        ab = bench_allreduce.measure_alpha_beta()
        print(f"# point-to-point fit (ping-pong between 2 processes): {ab}")
        print(f"# memory copy bandwidth (the ceiling on one machine): "
              f"{bench_allreduce.memcpy_bandwidth() / 1e9:.2f} GB/s")
        rows = bench_allreduce.run_allreduce_benchmark(
            tuple(args.workers or (2, 4)), sizes, horovod=args.horovod,
            collective_names=bench_allreduce.COLLECTIVE_NAMES)
        print(bench_allreduce.format_table(rows))
    elif args.what == "pipeline":
        for k in args.workers or (2,):
            base = bench_pipeline.default_config(k, args.steps or 12, args.batch_size,
                                                 args.model or "complex", args.partition)
            for m in args.microbatches or bench_pipeline.DEFAULT_MICROBATCHES:
                try:
                    validate(replace(base, strategy="pipeline-gpipe", microbatches=m))
                except ConfigError as err:
                    _fail(f"python -m parcourse bench: error: {err}")
            print(f"# P = {k} stages, {base.model} model cut by {base.partition}, global "
                  f"batch {base.batch_size}, {base.steps} steps (the first left out)")
            print(bench_pipeline.format_rows(bench_pipeline.measure(
                base, tuple(args.microbatches or bench_pipeline.DEFAULT_MICROBATCHES))))
    else:
        for k in args.workers or (2,):
            base = TrainConfig(strategy="ddp", workers=k, steps=args.steps or 200,
                               batch_size=args.batch_size, model=args.model or "simple")
            try:
                validate(base)
            except ConfigError as err:
                _fail(f"python -m parcourse bench: error: {err}")
            print(f"# K = {k}, {base.model} model, global batch {base.batch_size}, "
                  f"{base.steps} steps, best of 3 interleaved rounds")
            print(bench_training.format_rows(bench_training.compare_strategies(base=base)))
    return 0


def _bench_kernels(args: argparse.Namespace) -> int:
    from .kernels import bench as bench_kernels

    result = bench_kernels.run(quick=args.quick)
    print(bench_kernels.format_report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def train_command(args: argparse.Namespace) -> int:
    rank, launched = _launcher_rank_and_size()
    workers = launched if args.workers is None else args.workers
    options = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
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
                       "config": vars(config)}, f, indent=1)
    if not config.quiet:
        workers = result.config.workers  # horovod-elastic: the workers left at the end
        print(f"{config.strategy} on {workers} worker{'s' if workers > 1 else ''}: "
              f"final loss {result.losses[-1]:.4f}, test accuracy {result.test_accuracy:.1%}, "
              f"{result.samples_per_second:,.0f} samples/s"
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
    return {"train": train_command, "bench": bench_command}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
