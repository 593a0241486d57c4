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
