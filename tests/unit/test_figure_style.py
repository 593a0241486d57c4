"""One figure style for the book: every matplotlib figure fits the page's column without
being shrunk, and no text in it is set below 10 pt.

The book's column is 688 CSS px, 7.2 in at 96 px per inch. A figure W inches wide is
drawn at W × 100 px (matplotlib's 100 dpi) and shown at most 688 px wide, so its text
appears at its point size × 688 / (W × 100) × 100/72 px: a figure of 7 in keeps a 10 pt
label at 10 pt on the page, a figure of 11 in shrinks it to 6.4 pt. matplotlib's default
text is 10 pt (ticks, labels, legends; titles 12): what the book's code may not do is
ask for less, or for a wider figure. The browser test checks the rendered result (no
figure image shrunk by more than 4 % at 1280 px).
"""

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_WIDTH = 7.2          # inches: the column at 96 px per inch
MIN_POINTS = 10
SMALL = {"xx-small", "x-small", "small", "smaller"}


def _sources():
    for path in sorted((ROOT / "parcourse").rglob("*.py")):
        yield path.relative_to(ROOT), path.read_text()
    for path in sorted((ROOT / "book").rglob("*.ipynb")):
        if "_build" in path.parts:
            continue
        cells = json.loads(path.read_text())["cells"]
        for i, cell in enumerate(cells):
            if cell["cell_type"] == "code":
                code = "".join(cell["source"])
                # IPython magics and shell lines are not Python
                code = "\n".join(line[:len(line) - len(line.lstrip())] + "pass"
                                 if line.lstrip().startswith(("%", "!")) else line
                                 for line in code.splitlines())
                yield f"{path.relative_to(ROOT)} cell {i}", code


def _width(node):
    """The first element of a figsize tuple, when it is a number (or min(a, …) of them)."""
    if isinstance(node, ast.Tuple) and node.elts:
        first = node.elts[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, (int, float)):
            return float(first.value)
        if isinstance(first, ast.Call) and getattr(first.func, "id", "") == "min":
            numbers = [a.value for a in first.args if isinstance(a, ast.Constant)]
            return float(min(numbers)) if numbers else None
    return None


def _violations(code: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(code)):
        if not isinstance(node, ast.Call):
            continue
        for keyword in node.keywords:
            if keyword.arg == "figsize":
                width = _width(keyword.value)
                if width is None or width > MAX_WIDTH:
                    found.append(f"figsize={ast.unparse(keyword.value)} (line {node.lineno}): "
                                 f"at most {MAX_WIDTH} in wide, a number")
            if keyword.arg in ("fontsize", "size", "labelsize") and isinstance(
                    keyword.value, ast.Constant):
                value = keyword.value.value
                small = value in SMALL if isinstance(value, str) else (
                    keyword.arg != "size" and value < MIN_POINTS)
                if small:
                    found.append(f"{keyword.arg}={value!r} (line {node.lineno}): at least "
                                 f"{MIN_POINTS} pt")
        name = getattr(node.func, "attr", "")
        if name in ("set_fontsize", "set_size") and node.args and isinstance(
                node.args[0], ast.Constant) and isinstance(node.args[0].value, (int, float)) \
                and node.args[0].value < MIN_POINTS:
            found.append(f"{name}({node.args[0].value}) (line {node.lineno}): at least "
                         f"{MIN_POINTS} pt")
        if name == "set_size_inches" and node.args:
            first = node.args[0]
            if not (isinstance(first, ast.Constant) and first.value <= MAX_WIDTH):
                found.append(f"set_size_inches (line {node.lineno}): at most {MAX_WIDTH} in")
    return found


@pytest.mark.parametrize("where, code", list(_sources()), ids=lambda v: str(v)[:80])
def test_figures_fit_the_column_and_text_is_10pt_or_more(where, code):
    found = _violations(code)
    assert found == [], f"{where}: {found}"


def test_the_check_finds_what_it_should():
    assert _violations("plt.subplots(figsize=(11, 4))")
    assert _violations("ax.text(0, 0, 'a', fontsize=8)")
    assert _violations("ax.legend(fontsize='small')")
    assert _violations("ax.tick_params(labelsize=7)")
    assert _violations("ax.title.set_fontsize(9)")
    assert not _violations("plt.subplots(figsize=(7, 4)); ax.text(0, 0, 'a', fontsize=10)")
    assert not _violations("torch.randint(10, size=8)")        # not a font


# A figure drawn from timings (a recorded timeline, step or pass times, a benchmark's rows)
# shows a property of the machine it ran on, so it names that machine: env.describe() (or
# the page's MACHINE, or a stored GPU report's machine_line) in the cell that draws it. A
# cell whose figure is no measurement (a prediction, an ideal timeline, exact counts) says
# so in a comment, "# not measured: why".
DRAWS = ("plt.subplots(", "plt.figure(", "explore(", "timeline.plot(", "plot_timeline(")
TIMED = ("timeline", "events", "seconds", "step_ms", "samples_per_second", "measure(",
         "compare_strategies(", "bench_")
NAMES_MACHINE = ("describe()", "MACHINE", "machine_line(")


def _notebook_cells():
    for path in sorted((ROOT / "book").rglob("*.ipynb")):
        if "_build" in path.parts:
            continue
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] == "code":
                yield f"{path.relative_to(ROOT)} cell {i}", "".join(cell["source"])


def test_every_figure_drawn_from_timings_names_its_machine():
    unnamed = [where for where, code in _notebook_cells()
               if any(d in code for d in DRAWS) and any(t in code for t in TIMED)
               and not any(n in code for n in NAMES_MACHINE) and "# not measured:" not in code]
    assert unnamed == [], f"timed figures that do not name their machine: {unnamed}"
