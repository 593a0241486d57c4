"""``python -m parcourse plan``: the planner on the command line (chapter 4)."""

from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError
from .hardware import PROFILE_NAMES, profile
from .models import BOOK_MODELS, book_shape, gpt_shape
from .search import format_plan, plan

PROG = "python -m parcourse plan"


def add_parser(commands) -> None:
    p = commands.add_parser(
        "plan", help="rank data × tensor × pipeline configurations by predicted memory and time",
        description="Predict memory per rank and step time of every data × tensor × pipeline "
                    "grid (with ZeRO stages, bf16/fp32, recomputation, micro-batches) for a "
                    "model on a hardware profile; drop what does not fit, rank the rest. "
                    "Every figure is a prediction (chapter 4).")
    p.add_argument("--model", default="gpt", metavar="NAME",
                   help=f"one of the book's models ({', '.join(BOOK_MODELS)}) or 'shape' for "
                        f"a GPT-shaped model of the sizes given (default: %(default)s)")
    for name, helptext in (("layers", "transformer layers"), ("width", "model width d"),
                           ("heads", "attention heads"), ("sequence", "tokens per sample"),
                           ("vocab", "vocabulary (a shape only; the book's GPT has 256)"),
                           ("parameters", "parameter count (a shape only; default "
                                          "12·L·d² + V·d + ...)")):
        p.add_argument(f"--{name}", type=int, default=None, metavar="N", help=helptext)
    p.add_argument("--batch-size", type=int, default=512, metavar="B",
                   help="global batch in samples (default: %(default)s)")
    p.add_argument("--hardware", default="8xh100-ib", metavar="NAME",
                   help=f"one of {', '.join(PROFILE_NAMES)} (default: %(default)s)")
    p.add_argument("--devices", type=int, default=None, metavar="K",
                   help="devices in all (default: one node of the profile)")
    p.add_argument("--tensor", type=int, default=None, metavar="T", help="fix T")
    p.add_argument("--pipeline", type=int, default=None, metavar="P", help="fix P")
    p.add_argument("--top", type=int, default=10, metavar="N", help="rows to print")


def _model(args):
    if args.model == "shape":
        missing = [n for n in ("layers", "width", "heads", "sequence") if getattr(args, n) is None]
        if missing:
            raise ConfigError(f"--model shape needs --{missing[0]}: give --layers, --width, "
                              f"--heads and --sequence")
        return gpt_shape(args.layers, args.width, args.heads, args.sequence,
                         args.vocab or 50257, args.parameters)
    if args.model in ("simple", "complex") and any(
            getattr(args, n) is not None for n in ("layers", "width", "heads", "sequence")):
        raise ConfigError(f"the {args.model} model has fixed sizes: leave out --layers, "
                          f"--width, --heads and --sequence, or use --model shape")
    if args.model == "gpt" and args.vocab is not None:
        raise ConfigError("the book's gpt has a vocabulary of 256 bytes: use --model shape "
                          "for another --vocab")
    if args.model not in BOOK_MODELS:
        raise ConfigError(f"unknown model {args.model!r}: choose one of "
                          f"{', '.join(BOOK_MODELS)} or shape")
    return book_shape(args.model, **({n: getattr(args, n) for n in
                                      ("layers", "width", "heads", "sequence")}
                                     if args.model == "gpt" else {}))


def run(args: argparse.Namespace) -> int:
    try:
        hw = profile(args.hardware, args.devices)
        model = _model(args)
        ranked = plan(model, hw, args.batch_size, args.tensor, args.pipeline)
    except ConfigError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(f"{model.name}: {model.parameters:,} parameters, batch {args.batch_size}")
    print(format_plan(ranked, hw, args.top))
    return 0
