"""Tables of results, for a terminal and for the book's pages (every chapter).

A table is a header and rows of cells (strings). :func:`text` lines the columns up for a
terminal (numbers right-aligned, text left); :func:`markdown` writes a Markdown table,
which a notebook shows as a real table (``IPython.display.Markdown``) and the book's
site renders as HTML: a reader gets columns, not a block of printed characters.
"""

from __future__ import annotations

import re
from typing import Sequence

_NUMBER = re.compile(r"^[−+-]?[\d,.]+(?:\s?[%×a-zA-Zµ/]*)?$")


def _numeric(cell: str) -> bool:
    return bool(_NUMBER.match(cell.strip()))


def _escape(cell: str) -> str:
    return str(cell).replace("|", "\\|").replace("\n", " ")


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; a column whose cells are all numbers is right-aligned."""
    columns = len(header)
    for row in rows:
        if len(row) != columns:
            raise ValueError(f"a row has {len(row)} cells, the header {columns}: {row!r}")
    align = ["---:" if rows and all(_numeric(str(r[i])) for r in rows) else "---"
             for i in range(columns)]
    lines = ["| " + " | ".join(_escape(h) for h in header) + " |",
             "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def text(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The same table for a terminal: columns padded, numbers right-aligned."""
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    right = [bool(rows) and all(_numeric(str(r[i])) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) if r else c.ljust(w)
                               for c, w, r in zip(row, widths, right)).rstrip()
                     for row in cells)
