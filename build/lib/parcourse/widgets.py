"""One computation, two fronts: a live ipywidgets control and a precomputed web figure.

Every interactive figure of the book is one function of its parameters (K workers, B
batch size, devices, stages, micro-batches, sizes…). :func:`explore` takes that function
and a grid of parameter values and shows it in one of two ways:

* **live** (Jupyter, Colab, Kaggle): one ipywidgets ``SelectionSlider`` per parameter,
  over the grid's values; moving a slider calls the function with the sliders' values
  and redraws the plot with matplotlib.
* **static** (the book's HTML site): the function is evaluated once for every point of
  the grid (the Cartesian product of the value lists) while the book is built; the
  results are embedded in the page as JSON, next to one HTML range slider per
  parameter and a few lines of JavaScript that redraw a Plotly chart when a slider
  moves. No kernel and no network: plotly.js is served by the site itself (see
  ``book/_ext/offline_js.py``, which copies it from the ``plotly`` package at build time).

The mode is chosen by the environment variable ``PARCOURSE_FIGURES``: ``static`` gives
the static twin, anything else (or unset) the live control. The book's Sphinx extension
``book/_ext/offline_js.py`` sets it to ``static`` for the notebooks it executes, so
``jupyter-book build`` needs nothing more.

Chapter 2 is the first user: Amdahl's and Gustafson's laws over the parallel fraction
``p`` and the largest worker count.
"""

from __future__ import annotations

import hashlib
import html
import itertools
import json
import math
import os
from dataclasses import dataclass
from string import Template
from typing import Any, Callable, Mapping, Sequence, Tuple, Union

from IPython.display import HTML, display

ENV_VAR = "PARCOURSE_FIGURES"
MAX_POINTS = 500  # grid points evaluated for one static figure (each is embedded in the page)
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",  # matplotlib's tab10, so
          "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]  # both fronts match
MODES = ("lines", "markers", "lines+markers")
DASHES = {"solid": "-", "dash": "--", "dot": ":"}  # Plotly's name → matplotlib's


@dataclass
class Series:
    """One curve of a figure: ``x`` and ``y`` values, drawn as ``mode`` with ``dash``.

    ``mode`` is ``"lines"``, ``"markers"`` or ``"lines+markers"``; ``dash`` is
    ``"solid"``, ``"dash"`` or ``"dot"`` (Plotly's names; matplotlib gets the same look);
    ``width`` is the line width in pixels (thick segments draw bars, e.g. a Gantt chart).
    """
    x: Sequence[float]
    y: Sequence[float]
    mode: str = "lines"
    dash: str = "solid"
    width: float = 2.0


Curves = Mapping[str, Union[Series, Tuple[Sequence[float], Sequence[float]]]]


def explore(fn: Callable[..., Curves], grid: Mapping[str, Sequence[Any]], *, title: str,
            x_label: str, y_label: str, log_x: bool | int = False, log_y: bool | int = False,
            initial: Mapping[str, Any] | None = None, height: int = 420,
            y_ticks: Mapping[float, str] | None = None, static: bool | None = None) -> None:
    """Show ``fn`` over ``grid``: live sliders in a kernel, a precomputed figure on the site.

    ``fn(**params)`` returns the figure for one point of the grid, a dict ``{series name:
    Series(x, y)}`` (a plain ``(x, y)`` pair is a solid line). ``grid`` maps each
    parameter name to the list of values its slider offers, e.g. ``{"K": [1, 2, 4],
    "B": [32, 64]}``; the sliders start at ``initial`` (default: each list's first
    value). ``log_x=True`` draws a logarithmic x axis, ``log_x=2`` one with a tick at
    every power of two (1, 2, 4, …: worker counts); ``log_y`` likewise. ``y_ticks`` maps
    y values to the labels shown there instead of numbers (e.g. ``{0: "stage 0", -1:
    "stage 1"}``); only those inside the plotted range appear.

    ``static`` picks the front; ``None`` reads ``PARCOURSE_FIGURES`` (``static`` → the
    precomputed figure, otherwise live sliders, which call ``fn`` only for the values
    they show). The static figure evaluates ``fn`` once per point of the Cartesian
    product; a grid of more than :data:`MAX_POINTS` points raises ``ValueError`` in
    both modes, so what works live also builds.
    """
    grid = _check_grid(grid)
    start = _initial_point(grid, initial)
    if static is None:
        static = os.environ.get(ENV_VAR, "").strip().lower() == "static"
    labels = dict(title=title, x_label=x_label, y_label=y_label, log_x=log_x, log_y=log_y,
                  y_ticks=dict(y_ticks) if y_ticks else None)
    if static:
        display(HTML(_static_html(fn, grid, start, height=height, **labels)))
    else:
        display(_live_control(fn, grid, start, **labels))


def _check_grid(grid: Mapping[str, Sequence[Any]]) -> dict[str, list]:
    if not grid:
        raise ValueError("the grid is empty: give at least one parameter, e.g. {'K': [1, 2, 4]}")
    checked = {}
    for name, values in grid.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"parameter names must be Python identifiers, got {name!r}")
        values = list(values)
        if not values:
            raise ValueError(f"parameter {name!r} has no values")
        checked[name] = values
    size = math.prod(len(values) for values in checked.values())
    if size > MAX_POINTS:
        shape = " × ".join(f"{len(v)} {name}" for name, v in checked.items())
        raise ValueError(f"the grid has {size} points ({shape}), more than the {MAX_POINTS} "
                         "a figure embeds in its page: offer fewer values per parameter")
    return checked


def _initial_point(grid: dict[str, list], initial: Mapping[str, Any] | None) -> dict[str, int]:
    """The index of each slider's starting value in its list."""
    initial = dict(initial or {})
    unknown = set(initial) - set(grid)
    if unknown:
        raise ValueError(f"initial names parameters that are not in the grid: {sorted(unknown)}")
    start = {}
    for name, values in grid.items():
        value = initial.get(name, values[0])
        if value not in values:
            raise ValueError(f"initial value {value!r} of {name!r} is not one of {values}")
        start[name] = values.index(value)
    return start


def _curves(result: Curves) -> list[dict]:
    """``fn``'s result as a list of JSON-ready traces, checked."""
    if not isinstance(result, Mapping) or not result:
        raise ValueError(f"fn must return a non-empty dict of series name → Series(x, y), "
                         f"got {result!r}")
    traces = []
    for name, series in result.items():
        if not isinstance(series, Series):
            if not isinstance(series, (tuple, list)) or len(series) != 2:
                raise ValueError(f"series {name!r} must be Series(x, y) or an (x, y) pair")
            series = Series(*series)
        if series.mode not in MODES or series.dash not in DASHES:
            raise ValueError(f"series {name!r}: mode must be one of {list(MODES)} and dash "
                             f"one of {list(DASHES)}, got {series.mode!r}, {series.dash!r}")
        x, y = [_number(v) for v in series.x], [_number(v) for v in series.y]
        if len(x) != len(y):
            raise ValueError(f"series {name!r} has {len(x)} x values but {len(y)} y values")
        traces.append({"name": str(name), "x": x, "y": y, "mode": series.mode,
                       "dash": series.dash, "width": series.width})
    return traces


def _number(value) -> float | None:
    """A float rounded to 6 significant digits; NaN and ±inf become null (a gap)."""
    value = float(value)
    return float(f"{value:.6g}") if math.isfinite(value) else None


def _axis(label: str, log: bool | int) -> dict:
    axis = {"title": {"text": label}, "type": "log" if log else "linear"}
    if log == 2:  # a tick at every power of two (True == 1, a plain log axis)
        axis.update(dtick=math.log10(2), exponentformat="none")
    return axis


def _layout(title, x_label, y_label, log_x, log_y, y_ticks=None) -> dict:
    yaxis = _axis(y_label, log_y)
    if y_ticks:
        yaxis.update(tickmode="array", tickvals=list(y_ticks), ticktext=list(y_ticks.values()),
                     zeroline=False)  # labelled rows: no line through the row at 0
    return {"title": {"text": title}, "colorway": COLORS, "hovermode": "closest",
            "xaxis": _axis(x_label, log_x), "yaxis": yaxis,
            "margin": {"t": 50, "r": 20},
            "legend": {"orientation": "h", "yanchor": "top", "y": -0.2, "font": {"size": 11}}}


# --- the static twin: precomputed data, HTML sliders, Plotly --------------------------

_figure_numbers = itertools.count()  # two identical figures on one page get distinct ids

_SCRIPT = Template("""(function () {
  var root = document.getElementById("$id");
  var spec = JSON.parse(root.querySelector("script.parcourse-explore-data").textContent);
  var plot = root.querySelector(".parcourse-explore-plot");
  var inputs = Array.prototype.slice.call(root.querySelectorAll("input[type=range]"));
  function draw() {
    var key = inputs.map(function (input) {
      var i = Number(input.value);
      input.nextElementSibling.textContent = spec.labels[input.dataset.param][i];
      return i;
    }).join(",");
    var traces = spec.points[key].map(function (s) {
      return {type: "scatter", name: s.name, x: s.x, y: s.y, mode: s.mode,
              line: {dash: s.dash, width: s.width}};
    });
    var layout = JSON.parse(JSON.stringify(spec.layout));  // Plotly writes into it
    window.Plotly.react(plot, traces, layout, {responsive: true, displaylogo: false});
  }
  function start() {
    if (!window.Plotly) {
      plot.textContent = "This figure needs plotly.js, which the book's site serves.";
      return;
    }
    inputs.forEach(function (input) { input.addEventListener("input", draw); });
    draw();
  }
  if (window.Plotly || document.readyState === "complete") { start(); }
  else { window.addEventListener("load", start); }
})();""")


def _check_every_slider_moves(grid: dict[str, list], start: dict[str, int],
                              points: dict[str, list]) -> None:
    """A reader's first move of any slider (one step, from the initial point) must redraw
    the figure: a slider that changes nothing there reads as a broken figure."""
    at = [start[name] for name in grid]
    for i, name in enumerate(grid):
        if len(grid[name]) < 2:
            continue
        moved = list(at)
        moved[i] += -1 if at[i] == len(grid[name]) - 1 else 1
        if points[",".join(map(str, moved))] == points[",".join(map(str, at))]:
            where = ", ".join(f"{n}={grid[n][j]!r}" for n, j in zip(grid, at))
            raise ValueError(f"slider {name!r} does not change the figure at the initial "
                             f"point ({where}): drop it, or start where it matters")


def _static_html(fn, grid: dict[str, list], start: dict[str, int], *, height: int,
                 **labels) -> str:
    """The static twin: ``fn`` on every grid point, embedded with sliders and a script."""
    names = list(grid)
    points = {}
    for index in itertools.product(*(range(len(grid[name])) for name in names)):
        params = {name: grid[name][i] for name, i in zip(names, index)}
        points[",".join(map(str, index))] = _curves(fn(**params))
    _check_every_slider_moves(grid, start, points)
    spec = {"params": names, "labels": {name: [str(v) for v in grid[name]] for name in names},
            "points": points, "layout": _layout(**labels)}
    payload = (json.dumps(spec, separators=(",", ":"), allow_nan=False)
               .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
    figure_id = "parcourse-explore-" + hashlib.sha1(payload.encode()).hexdigest()[:12]
    figure_id += f"-{next(_figure_numbers)}"
    sliders = "\n".join(
        f'<label style="margin-right:1.5em">{html.escape(name)} '
        f'<input type="range" min="0" max="{len(grid[name]) - 1}" step="1" '
        f'value="{start[name]}" data-param="{html.escape(name)}" '
        f'aria-label="{html.escape(name)}" style="vertical-align:middle"> '
        f'<output>{html.escape(str(grid[name][start[name]]))}</output></label>'
        for name in names)
    return (f'<div class="parcourse-explore" id="{figure_id}">\n'
            f'<div class="parcourse-explore-controls">\n{sliders}\n</div>\n'
            f'<div class="parcourse-explore-plot" style="width:100%;height:{height}px"></div>\n'
            f'<script type="application/json" class="parcourse-explore-data">{payload}</script>\n'
            f'<script>\n{_SCRIPT.substitute(id=figure_id)}\n</script>\n</div>')


# --- the live control: ipywidgets sliders, matplotlib --------------------------------

def _live_control(fn, grid: dict[str, list], start: dict[str, int], **labels):
    """Sliders over the grid's values whose every move calls ``fn`` and redraws."""
    import ipywidgets as widgets

    sliders = {name: widgets.SelectionSlider(
        options=[(str(v), v) for v in values], value=values[start[name]], description=name,
        continuous_update=False, style={"description_width": "initial"})
        for name, values in grid.items()}
    out = widgets.Output()

    def redraw(_change=None):
        traces = _curves(fn(**{name: s.value for name, s in sliders.items()}))
        with out:
            out.clear_output(wait=True)
            _show_matplotlib(traces, **labels)

    for slider in sliders.values():
        slider.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox(list(sliders.values())), out])


def _show_matplotlib(traces: list[dict], *, title, x_label, y_label, log_x, log_y,
                     y_ticks=None) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, t in enumerate(traces):
        x = [math.nan if v is None else v for v in t["x"]]
        y = [math.nan if v is None else v for v in t["y"]]
        ax.plot(x, y, marker="o" if "markers" in t["mode"] else None,
                linestyle=DASHES[t["dash"]] if "lines" in t["mode"] else "none",
                color=COLORS[i % len(COLORS)], label=t["name"],
                linewidth=t["width"] * 0.75)  # pixels → points
    ax.set(title=title, xlabel=x_label, ylabel=y_label)
    for log, axis, set_scale in ((log_x, ax.xaxis, ax.set_xscale),
                                 (log_y, ax.yaxis, ax.set_yscale)):
        if log:
            set_scale("log", base=2 if log == 2 else 10)
            if log == 2:
                axis.set_major_formatter(ScalarFormatter())
    if y_ticks:
        shown = ax.get_ylim()  # ticks outside the data must not widen the axis
        inside = {v: text for v, text in y_ticks.items() if min(shown) <= v <= max(shown)}
        ax.set_yticks(list(inside), list(inside.values()))
        ax.set_ylim(shown)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    display(fig)
    plt.close(fig)
