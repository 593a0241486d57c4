"""One computation, two fronts: a live ipywidgets control and a precomputed web figure.

Every interactive figure of the book is one function of its parameters (K workers, B
batch size, devices, stages, micro-batches, sizes…). :func:`explore` takes that function
and a grid of parameter values and shows it in one of two ways:

* **live** (Jupyter, Colab, Kaggle): one ipywidgets ``SelectionSlider`` per parameter,
  over the grid's values (``ToggleButtons`` for a choice: names, flags); moving a control
  calls the function with the controls' values and redraws the plot with matplotlib.
* **static** (the book's HTML site, :mod:`parcourse.widgets_site`): the function is
  evaluated once for every point of the grid (the Cartesian product of the value lists)
  while the book is built and embedded in the page, with a slider per number, a row of
  buttons per choice and a script that redraws a Plotly chart (plotly.js served by the
  site itself, ``book/_ext/offline_js.py``).

What a figure is — named series, axes — is :mod:`parcourse.figure_data`, shared by both.

The mode is chosen by the environment variable ``PARCOURSE_FIGURES``: ``static`` gives
the static twin, anything else (or unset) the live control. The book's Sphinx extension
``book/_ext/offline_js.py`` sets it to ``static`` for the notebooks it executes, so
``jupyter-book build`` needs nothing more.

Chapter 2 is the first user: Amdahl's and Gustafson's laws over the parallel fraction
``p`` and the largest worker count.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping, Sequence

from IPython.display import HTML, display

from .figure_data import COLORS, DASHES, MODES, Curves, Series  # noqa: F401 (the API)
from .figure_data import traces as _curves
from .widgets_site import categorical, static_html  # noqa: F401 (the API)

ENV_VAR = "PARCOURSE_FIGURES"
MAX_POINTS = 500  # grid points evaluated for one static figure (each is embedded in the page)


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
        display(HTML(static_html(fn, grid, start, height=height, **labels)))
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


# --- the live control: ipywidgets sliders, matplotlib --------------------------------

def _live_control(fn, grid: dict[str, list], start: dict[str, int], **labels):
    """Sliders over the grid's values whose every move calls ``fn`` and redraws."""
    import ipywidgets as widgets

    sliders = {name: (widgets.ToggleButtons if categorical(values) else widgets.SelectionSlider)(
        options=[(str(v), v) for v in values], value=values[start[name]], description=name,
        **({} if categorical(values) else {"continuous_update": False}),
        style={"description_width": "initial"})
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
    ax.legend(fontsize=10)
    display(fig)
    plt.close(fig)
