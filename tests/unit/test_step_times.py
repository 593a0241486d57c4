"""parcourse.chapters.step_times: chapter 3's first experiment, timed, on synthetic runs."""

from types import SimpleNamespace

import pytest

from parcourse.chapters import scaling, step_times

STEPS, BATCH, WORKERS = 10, 512, 2


def run(seconds, communication=0.0):
    return SimpleNamespace(seconds=seconds, communication_seconds=communication,
                           samples_per_second=STEPS * BATCH / seconds)


RESULTS = {"single": run(1.0), "ddp": run(2.0), "dp-manual": run(1.5, communication=0.5)}


def test_step_rows_set_each_strategy_against_the_single_process():
    rows = step_times.step_rows(RESULTS, STEPS, WORKERS)
    assert [r["name"] for r in rows] == ["single", "ddp", "dp-manual"]
    assert [r["where"] for r in rows] == ["1 process", "2 workers", "2 workers"]
    assert [r["seconds_per_step"] for r in rows] == [0.1, 0.2, 0.15]
    assert [r["speed_vs_single"] for r in rows] == pytest.approx([1.0, 0.5, 2 / 3])
    assert rows[0]["samples_per_second"] == 5120


def test_step_cells_are_the_rows_with_units_in_the_header():
    assert step_times.STEP_HEADER == ("strategy", "where", "ms per step", "samples/s", "speed vs single")
    assert step_times.step_cells(RESULTS, STEPS, WORKERS) == [
        ["single", "1 process", "100", "5,120", "1.00×"],
        ["ddp", "2 workers", "200", "2,560", "0.50×"],
        ["dp-manual", "2 workers", "150", "3,413", "0.67×"]]


def test_report_splits_dp_manuals_step_and_sets_its_all_reduce_against_the_model():
    lines = step_times.format_report(RESULTS, steps=STEPS, batch=BATCH, workers=WORKERS, parameters=55_050,
                                     alpha=1e-4, beta=1e-9, benchmark_seconds=2e-4, backend="gloo")
    assert lines[0].endswith("; SimpleModel, P = 55,050 parameters, global batch 512, 10 steps")
    assert lines[1:5] == ["strategy       where  ms per step  samples/s  speed vs single",
                          "single     1 process          100      5,120            1.00×",
                          "ddp        2 workers          200      2,560            0.50×",
                          "dp-manual  2 workers          150      3,413            0.67×"]
    assert lines[5] == ""
    notes = step_times.report_notes(RESULTS, steps=STEPS, batch=BATCH, workers=WORKERS, parameters=55_050,
                                    alpha=1e-4, beta=1e-9, benchmark_seconds=2e-4, backend="gloo")
    assert lines[6:] == notes
    assert notes[0].startswith("dp-manual, per step: all-reduce 50.00 ms; forward, backward and update of 256 "
                               "samples") and notes[0].endswith(": 100.00 ms")
    model = 1e3 * scaling.allreduce_seconds(55_050, 2, 1e-4, 1e-9)
    assert notes[2] == (f"ring all-reduce of 220 kB on 2 workers: α–β model {model:.2f} ms; "
                        f"benchmark above, 256 KiB: 0.20 ms; in training: 50.00 ms")
