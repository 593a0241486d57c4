"""Tables of results, for a terminal and for the book's pages (every chapter).

A table is a header and rows of cells (strings). :func:`text` lines the columns up for a
terminal (numbers right-aligned, text left); :func:`markdown` writes a Markdown table,
which a notebook shows as a real table (``IPython.display.Markdown``) and the book's
site renders as HTML: a reader gets columns, not a block of printed characters.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

_NUMBER = re.compile(r"^[−+-]?[\d,.]+(?:e[−+-]?\d+)?(?:\s?[%×a-zA-Zµ/]*)?$")
_NONE = {"–", "—", "-", ""}  # a cell with no value: it does not decide a column's alignment


def _numeric(cell: str) -> bool:
    return bool(_NUMBER.match(cell.strip()))


def _numeric_column(rows: Sequence[Sequence[str]], i: int) -> bool:
    """Whether column ``i`` holds numbers: at least one, and nothing else but empty cells."""
    cells = [str(r[i]).strip() for r in rows]
    values = [c for c in cells if c not in _NONE]
    return bool(values) and all(_numeric(c) for c in values)


def significant(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits, without an exponent and with thousands
    separated: 0.00123, 1.23, 123, 12,300; "–" for NaN and None."""
    if value is None or value != value:
        return "–"
    if value == 0 or abs(value) == float("inf"):
        return f"{value:g}"
    rounded = float(f"{value:.{digits - 1}e}")      # 9.996 → 10.0: count from the rounded
    decimals = max(digits - 1 - math.floor(math.log10(abs(rounded))), 0)
    return f"{rounded:,.{decimals}f}"


def _escape(cell: str) -> str:
    """A cell as Markdown: pipes escaped, on one line, and a number kept on one line with
    its unit ("256 KiB", "14 ms": a no-break space), so that a narrow column does not
    split them."""
    cell = str(cell).replace("|", "\\|").replace("\n", " ")
    return cell.replace(" ", "\u00a0") if _numeric(cell) else cell


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; a column whose cells are all numbers (1.5, 12,300, 3.2e-07,
    "14 ms", "+3%"; an empty cell, "–", does not count) is right-aligned."""
    columns = len(header)
    for row in rows:
        if len(row) != columns:
            raise ValueError(f"a row has {len(row)} cells, the header {columns}: {row!r}")
    align = ["---:" if _numeric_column(rows, i) else "---" for i in range(columns)]
    lines = ["| " + " | ".join(_escape(h) for h in header) + " |",
             "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def text(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The same table for a terminal: columns padded, numbers right-aligned."""
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    right = [_numeric_column(rows, i) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) if r else c.ljust(w)
                               for c, w, r in zip(row, widths, right)).rstrip()
                     for row in cells)
