"""The strategies' throughput table (parcourse.bench.training), from made-up rows."""

from parcourse.bench import training as bench_training

ROWS = [{"strategy": "ddp", "samples_per_s": 51234.5, "vs_ddp": 1.0, "communication_share": 0.0,
         "overlap": 0.0},
        {"strategy": "dp-bucketed", "samples_per_s": 40987.2, "vs_ddp": 0.8, "communication_share": 0.25,
         "overlap": 0.625}]


def test_cells_carry_units_and_a_dash_where_nothing_was_timed():
    header, cells = bench_training.cells(ROWS)
    assert header == ("strategy", "samples/s", "vs ddp", "all-reduce share", "overlap")
    assert cells == [["ddp", "51,234", "1.00×", "–", "–"],
                     ["dp-bucketed", "40,987", "0.80×", "25%", "62%"]]
    assert bench_training.format_rows(ROWS).splitlines() == [
        "strategy     samples/s  vs ddp  all-reduce share  overlap",
        "ddp             51,234   1.00×                 –        –",
        "dp-bucketed     40,987   0.80×               25%      62%"]
