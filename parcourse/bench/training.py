"""Training throughput of the data-parallel strategies, side by side (chapter 5).

``python -m parcourse bench dp`` trains the same model with each strategy on K workers
and prints samples/s relative to PyTorch DDP, measured in one run, with the strategies
interleaved over ``rounds`` so that a noisy machine disturbs them alike; each strategy's
best round counts. Start-up (spawning processes, loading data) is excluded: the time is
that of the training loop.
"""

from __future__ import annotations

from dataclasses import replace

from .. import tables
from ..training import TrainConfig, train

DEFAULT_STRATEGIES = ("ddp", "dp-manual", "dp-bucketed")


def compare_strategies(strategies=DEFAULT_STRATEGIES, rounds: int = 3,
                       base: TrainConfig | None = None) -> list[dict]:
    """One row per strategy: best samples/s, ratio to the first strategy, communication."""
    base = base or TrainConfig(workers=2, steps=200, batch_size=256)
    best: dict = {}
    for _ in range(rounds):
        for strategy in strategies:
            result = train(replace(base, strategy=strategy, quiet=True))
            if strategy not in best or result.seconds < best[strategy].seconds:
                best[strategy] = result
    reference = best[strategies[0]].samples_per_second
    return [{"strategy": s, "samples_per_s": best[s].samples_per_second,
             "vs_" + strategies[0]: best[s].samples_per_second / reference,
             "communication_share": best[s].communication_seconds / best[s].seconds,
             "overlap": best[s].overlap} for s in strategies]


def cells(rows: list[dict]) -> tuple[tuple, list[list[str]]]:
    """:func:`compare_strategies` as a header and rows of cells: samples/s, the ratio to the
    first strategy, the share of the loop in all-reduce and the share of that hidden behind
    backward ("–" where the strategy does not time them: DDP's all-reduce runs inside its
    C++ Reducer)."""
    first = next(key for key in rows[0] if key.startswith("vs_"))
    header = ("strategy", "samples/s", f"vs {first[3:]}", "all-reduce share", "overlap")
    return header, [[row["strategy"], f"{row['samples_per_s']:,.0f}", f"{row[first]:.2f}×",
                     f"{row['communication_share']:.0%}" if row["communication_share"] else "–",
                     f"{row['overlap']:.0%}" if row["overlap"] else "–"] for row in rows]


def format_rows(rows: list[dict]) -> str:
    """:func:`cells` as a text table, for a terminal."""
    return tables.text(*cells(rows))
