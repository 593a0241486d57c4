"""Tables of results as cells for their headers: the planner's validation (chapter 4,
"Checked against measurement": the states and peak in one table, the step times with the
prediction's compute and communication in the other) and the transformer block's traffic and
memory (the transformers page)."""

from parcourse.planner.validate import (MEMORY_HEADER, TIME_HEADER, format_validation,
                                        memory_cells, time_cells)

STATES = {"parameters": 1024, "gradients": 1024, "optimizer state": 2048}
TERMS = {"compute": 0.006, "bubble": 0.002, "pipeline": 0.001, "tensor": 0.0, "data": 0.0005,
         "loss": 0.0005, "step": 0.010}


def row(strategy, held, formula, peak=None, predicted_peak=None, exact=True):
    return {"strategy": strategy, "model": "complex", "workers": 2, "held": held,
            "formula": formula, "exact": exact, "peak": peak, "predicted_peak": predicted_peak,
            "measured_s": 0.0125, "predicted_s": 0.010, "terms": TERMS, "error": -0.2,
            "errors": [-0.3, -0.2, 0.05], "method": "8 steps (after 2)"}


ROWS = [row("zero1", [STATES, STATES], STATES, peak=8192, predicted_peak=8200),
        row("pipeline-1f1b", [STATES, {**STATES, "gradients": 0}], STATES),
        row("ddp", None, None)]


def test_the_memory_table_has_the_runs_that_counted_their_tensors():
    assert memory_cells(ROWS) == [
        ["zero1", "complex", "2", "= 4.0 / 4.0", "4.0", "8.0", "8.0"],
        ["pipeline-1f1b", "complex", "2", "= 4.0 / 3.0", "4.0", "—", "—"]]
    assert all(len(c) == len(MEMORY_HEADER) for c in memory_cells(ROWS))


def test_the_time_table_splits_the_prediction_into_compute_and_communication():
    assert time_cells(ROWS)[0] == ["zero1", "complex", "2", "12.5", "10.0", "8.0", "2.0",
                                   "-20%", "-30%…+5%"]
    assert [c[0] for c in time_cells(ROWS)] == ["zero1", "pipeline-1f1b", "ddp"]
    assert all(len(c) == len(TIME_HEADER) for c in time_cells(ROWS))


def test_a_count_that_differs_from_the_prediction_is_marked():
    cells = memory_cells([row("zero2", [STATES, STATES], {**STATES, "gradients": 0},
                              exact=False)])
    assert cells[0][3:5] == ["≠ 4.0 / 4.0", "3.0"]


def test_the_terminal_shows_both_tables_and_how_they_were_measured():
    text = format_validation(ROWS)
    assert text.index("states KiB") < text.index("compute + bubble")
    assert text.rstrip().endswith("step: 8 steps (after 2)")


def test_the_transformer_tables_close_each_mode_with_its_total():
    from parcourse.bench import transformer_memory as tm

    traffic = [{"mode": "tensor", "collective": "all-reduce", "calls": 4, "bytes": 2048,
                "ring_bytes_per_rank": 1024, "formula_total": 2048},
               {"mode": "tensor", "collective": "all-gather", "calls": 2, "bytes": 1024,
                "ring_bytes_per_rank": 1024, "formula_total": 2048}]
    assert tm.traffic_cells(traffic) == [
        ["tensor", "all-reduce", "4", "2.0", "1.0"], ["tensor", "all-gather", "2", "1.0", "1.0"],
        ["tensor", "total (formula 2.0)", "", "", "2.0"]]
    memory = [{"mode": "sequence", "ranks": 2, "measured": 3072, "formula": 3072,
               "paper": 4096, "paper_16_bit": 2048}]
    assert tm.memory_cells(memory) == [["sequence", "2", "3.0", "3.0", "4.0", "2.0"]]
    assert len(tm.MEMORY_HEADER) == 6 and len(tm.TRAFFIC_HEADER) == 5
