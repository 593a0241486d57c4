"""parcourse.tables: one table, for a terminal and for the book's pages."""

import pytest

from parcourse import tables

HEADER = ("strategy", "step ms", "error")
ROWS = [("ddp", "14.2", "-28%"), ("zero3 | gathered", "9.5", "+3%")]


def test_markdown_is_a_table_with_numbers_right_aligned_and_pipes_escaped():
    assert tables.markdown(HEADER, ROWS).splitlines() == [
        "| strategy | step ms | error |",
        "|---|---:|---:|",
        "| ddp | 14.2 | -28% |",
        "| zero3 \\| gathered | 9.5 | +3% |"]


def test_text_lines_the_columns_up():
    assert tables.text(HEADER, ROWS).splitlines() == [
        "strategy          step ms  error",
        "ddp                  14.2   -28%",
        "zero3 | gathered      9.5    +3%"]


def test_a_row_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="a row has 2 cells, the header 3"):
        tables.markdown(HEADER, [("ddp", "1")])


def test_exponents_are_numbers_and_an_empty_cell_does_not_decide_the_alignment():
    rows = [("ddp", "3.2e-07", "–"), ("single", "–", "–"), ("zero3", "1.0e+02", "x")]
    assert tables.markdown(("strategy", "max |Δ|", "note"), rows).splitlines()[1] == "|---|---:|---|"
    assert tables.text(("strategy", "max |Δ|", "note"), rows).splitlines() == [
        "strategy  max |Δ|  note",
        "ddp       3.2e-07  –",
        "single          –  –",
        "zero3     1.0e+02  x"]


@pytest.mark.parametrize("value, shown", [(0.0012345, "0.00123"), (1.2345, "1.23"), (9.996, "10.0"),
                                          (123.45, "123"), (12345.6, "12,300"), (-0.5, "-0.500"),
                                          (0, "0"), (float("nan"), "–"), (None, "–")])
def test_significant_keeps_three_digits_without_an_exponent(value, shown):
    assert tables.significant(value) == shown


def test_a_number_and_its_unit_stay_together_on_the_page_only():
    rows = [("ring", "256 KiB", "14 ms"), ("gloo", "2 MiB", "a slow run")]
    assert tables.markdown(("algorithm", "size", "note"), rows).splitlines()[2:] == [
        "| ring | 256\u00a0KiB | 14\u00a0ms |", "| gloo | 2\u00a0MiB | a slow run |"]
    assert "256 KiB" in tables.text(("algorithm", "size", "note"), rows)
