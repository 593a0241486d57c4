"""``python -m parcourse bench …``: the benchmarks' command line (chapters 3, 5).

Each benchmark prints tables and ratios measured side by side in one run, and asserts
nothing; invalid options exit with code 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from ..errors import ConfigError
from ..training import TrainConfig, validate


def _fail(message: str):
    print(message, file=sys.stderr)
    sys.exit(2)


def add_parser(commands) -> None:
    """The ``bench`` sub-command and its options."""
    b = commands.add_parser("bench", help="benchmarks that print tables",
                            description="Benchmarks: they print tables and ratios measured "
                                        "side by side in one run; nothing is asserted.")
    b.add_argument("what", choices=("allreduce", "dp", "memory", "pipeline", "kernels", "gpt",
                                    "transformer", "context", "experts"),
                   help="allreduce: bus bandwidth of each all-reduce, reduce-scatter and "
                        "all-gather against gloo's; "
                        "dp: training throughput of the data-parallel strategies against DDP; "
                        "memory: what each rank holds under DDP and ZeRO, measured against "
                        "the formula, with step times and bytes sent; "
                        "pipeline: step time, bubble and idle-time accounting of the naive "
                        "split, GPipe, 1F1B, interleaved 1F1B and ZB-H1 on the GPT; "
                        "kernels: the Triton kernels (GPU) or the torch ops (CPU) against "
                        "the device's roofline; "
                        "gpt: tokens/s and model FLOPs utilization of the GPT under each "
                        "strategy; transformer: bytes moved and activation memory per rank "
                        "under tensor and sequence parallelism, against the formulas; "
                        "context: step time, bytes sent and activation memory per rank of "
                        "ring attention against K; "
                        "experts: step time, all-to-all bytes and parameter memory per rank "
                        "of expert parallelism, K = 1, 2, 4")
    b.add_argument("--workers", type=int, nargs="+", default=None, metavar="K",
                   help="numbers of workers (default: allreduce 2 4, dp 2, gpt 2, "
                        "transformer 2 4, context 1 2 4)")
    b.add_argument("--strategies", nargs="+", default=None, metavar="NAME",
                   help="dp: the strategies to compare, the first is the reference "
                        "(default: ddp dp-manual dp-bucketed); memory: ddp zero1 zero2 zero3; "
                        "gpt: ddp fsdp tensor (after single; tensor also with "
                        "--sequence-parallel)")
    b.add_argument("--max-mb", type=float, default=64, metavar="MB",
                   help="allreduce: largest message in MiB (default: %(default)s)")
    b.add_argument("--partition", default="parameters", metavar="HOW",
                   help="pipeline: where to cut the model, as in train (default: %(default)s)")
    b.add_argument("--schedules", nargs="+", default=None, metavar="NAME",
                   help="pipeline: the schedules to compare (default: gpipe 1f1b interleaved "
                        "zb-h1; the naive split always runs)")
    b.add_argument("--receives", nargs="+", default=["step"], metavar="WHEN",
                   help="pipeline: when the stages post their receives, one variant each: "
                        "step, ahead or needed, as train --receives (default: step)")
    b.add_argument("--repeats", type=int, default=3, metavar="R",
                   help="pipeline: rounds in which every variant runs in turn; each row is "
                        "the median over them (default: %(default)s)")
    b.add_argument("--torch-reference", action="store_true",
                   help="pipeline: also time torch.distributed.pipelining's 1F1B, "
                        "interleaved and zero-bubble schedules on the same model")
    b.add_argument("--horovod", action="store_true",
                   help="allreduce: include Horovod's all-reduce")
    b.add_argument("--steps", type=int, default=None,
                   help="dp, pipeline, gpt, context: steps per run (default: dp 200, "
                        "pipeline 6 per round, gpt 20, context 5)")
    b.add_argument("--microbatches", type=int, nargs="+", default=None, metavar="M",
                   help="pipeline: numbers of micro-batches (default: 4 8; and the naive "
                        "split, M = 1)")
    b.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="dp, memory, pipeline, gpt: global batch (default: dp and memory 256, "
                        "pipeline 64, gpt 16)")
    b.add_argument("--model", default=None, metavar="NAME",
                   help="dp, pipeline: model to train (default: dp simple, pipeline gpt)")
    b.add_argument("--quick", action="store_true", help="kernels: small sizes (a smoke test)")
    b.add_argument("--json", metavar="FILE", help="kernels: also write every figure as JSON")


def run(args: argparse.Namespace) -> int:
    from .. import env, launch
    from . import allreduce as bench_allreduce
    from . import pipeline as bench_pipeline
    from . import training as bench_training

    print(f"# {env.describe()}")
    if args.what == "kernels":
        return _bench_kernels(args)
    if args.what == "context":
        return _bench_context(args)
    if args.what in ("gpt", "transformer"):
        return _bench_transformer(args)
    if args.what == "experts":
        from . import experts as bench_experts

        bench_experts.run(args.workers)
        return 0
    if args.what != "pipeline":   # the pipeline's default batch is its workload's own
        args.batch_size = args.batch_size or 256
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
        names = tuple(args.schedules or bench_pipeline.STRATEGIES)
        unknown = [n for n in names if n not in bench_pipeline.STRATEGIES]
        if unknown:
            _fail(f"python -m parcourse bench: error: bench pipeline compares "
                  f"{', '.join(bench_pipeline.STRATEGIES)}, not {', '.join(unknown)}")
        if args.repeats < 1:
            _fail(f"python -m parcourse bench: error: --repeats must be at least 1 "
                  f"(got {args.repeats})")
        microbatches = tuple(args.microbatches or bench_pipeline.DEFAULT_MICROBATCHES)
        for k in args.workers or (2,):
            base = bench_pipeline.default_config(k, args.steps or 6, args.batch_size or 64,
                                                 args.model or "gpt", args.partition)
            try:
                bench_pipeline.variants(base, microbatches, names, tuple(args.receives))
            except ConfigError as err:
                _fail(f"python -m parcourse bench: error: {err}")
            sizes = (f" ({base.layers} blocks, width {base.width}, {base.sequence} tokens)"
                     if base.model == "gpt" else "")
            print(f"# P = {k} stages, {base.model} model{sizes} cut by {base.partition}, "
                  f"global batch {base.batch_size}, {args.repeats} rounds of {base.steps} "
                  f"steps per variant in turn (the first step of each left out); "
                  f"{launch.threads_per_worker(k)} thread(s) per worker")
            print(bench_pipeline.format_rows(bench_pipeline.measure(
                base, microbatches, names, tuple(args.receives), args.repeats,
                args.torch_reference)))
    elif args.what == "memory":
        from . import memory as bench_memory

        variants = tuple(args.strategies or bench_memory.VARIANTS)
        unknown = [v for v in variants if v not in bench_memory.BUILDERS]
        if unknown:
            _fail(f"python -m parcourse bench: error: bench memory measures "
                  f"{', '.join(bench_memory.BUILDERS)}, not {', '.join(unknown)}")
        for k in args.workers or (2, 4):
            print(f"# K = {k}, {args.model or 'complex'} model, Adam, float32, global batch "
                  f"{args.batch_size or 256}; held = formula (KiB) at the optimizer step, rank 0")
            print(bench_memory.format_table(bench_memory.measure(
                k, args.model or "complex", batch_size=args.batch_size or 256,
                variants=variants)))
    else:
        strategies = tuple(args.strategies or bench_training.DEFAULT_STRATEGIES)
        for k in args.workers or (2,):
            base = TrainConfig(strategy=strategies[0], workers=k, steps=args.steps or 200,
                               batch_size=args.batch_size or 256,
                               model=args.model or "simple")
            try:
                for strategy in strategies:
                    validate(replace(base, strategy=strategy))
            except ConfigError as err:
                _fail(f"python -m parcourse bench: error: {err}")
            print(f"# K = {k}, {base.model} model, global batch {base.batch_size}, "
                  f"{base.steps} steps, best of 3 interleaved rounds")
            print(bench_training.format_rows(bench_training.compare_strategies(
                strategies, base=base)))
    return 0


def _bench_transformer(args: argparse.Namespace) -> int:
    """bench gpt (throughput and MFU) and bench transformer (traffic and memory)."""
    if args.what == "transformer":
        from . import transformer_memory

        for k in args.workers or (2, 4):
            figures = transformer_memory.measure(k)
            print(f"# T = {k} tensor ranks; {transformer_memory.describe()}; bytes of one "
                  f"training step, rank 0")
            print(transformer_memory.format_traffic(transformer_memory.traffic(k, figures=figures)))
            print("# activations one block keeps for backward, rank 0")
            print(transformer_memory.format_memory(transformer_memory.memory(k, figures=figures)))
        return 0
    from . import gpt as bench_gpt

    base = TrainConfig(model="gpt", steps=args.steps or 20, batch_size=args.batch_size or 16)
    runs = bench_gpt.runs_of(tuple(args.strategies or bench_gpt.DEFAULT_STRATEGIES),
                             tuple(args.workers or (2,)))
    try:
        for strategy, workers, sequence_parallel in runs:
            validate(replace(base, strategy=strategy, workers=workers,
                             sequence_parallel=sequence_parallel))
    except ConfigError as err:
        _fail(f"python -m parcourse bench: error: {err}")
    per_token = bench_gpt.model_flops.gpt_flops_per_token(base.layers, base.width, base.heads,
                                                          base.sequence)
    print(f"# GPT L = {base.layers}, d = {base.width}, H = {base.heads}, s = {base.sequence}, "
          f"global batch {base.batch_size} windows, {base.steps} steps, {base.dtype}; model "
          f"FLOPs per token 6N + 12·L·d·s = {per_token:,}")
    print(bench_gpt.format_rows(bench_gpt.compare(runs, base)))
    return 0


def _bench_context(args: argparse.Namespace) -> int:
    """bench context: ring attention's step time, bytes and memory per rank against K."""
    from . import context as bench_context
    from . import transformer_memory

    sizes = bench_context.SIZES
    print(f"# context parallelism, {bench_context.describe()}; rank 0, one thread per "
          f"rank: median of {args.steps or 5} forward + backward steps (and the gradient "
          f"all-reduce), bytes sent by the ring attention of one step, activations one "
          f"block keeps")
    print(bench_context.format_table(bench_context.measure(tuple(args.workers or (1, 2, 4)),
                                                           steps=args.steps or 5)))
    single = transformer_memory.block_memory(0, 1, dict(sizes), "single")
    print(f"# one process with gpt.attend (the S×S probabilities and mask kept): "
          f"{single / 1024:.1f} KiB per block")
    return 0


def _bench_kernels(args: argparse.Namespace) -> int:
    from ..kernels import bench as bench_kernels
    from ..kernels import bench_report

    result = bench_kernels.run(quick=args.quick)
    print(bench_report.format_report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0
