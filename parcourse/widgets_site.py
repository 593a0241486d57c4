"""The static twin of an interactive figure (:mod:`parcourse.widgets`), for the book's site.

The figure's function is evaluated once for every point of its grid while the book is
built; the results are embedded in the page as JSON, beside one HTML range slider per
numeric parameter and one row of buttons per choice (a schedule, a device), and a few
lines of JavaScript redraw a Plotly chart when a control moves. No kernel and no network:
plotly.js is served by the site itself (``book/_ext/offline_js.py``).
"""

from __future__ import annotations

import hashlib
import html
import itertools
import json
from string import Template
from typing import Any, Sequence

from .figure_data import layout, traces

_figure_numbers = itertools.count()  # two identical figures on one page get distinct ids

_SCRIPT = Template("""(function () {
  var root = document.getElementById("$id");
  var spec = JSON.parse(root.querySelector("script.parcourse-explore-data").textContent);
  var plot = root.querySelector(".parcourse-explore-plot");
  var inputs = Array.prototype.slice.call(root.querySelectorAll("input[type=range]"));
  var groups = Array.prototype.slice.call(root.querySelectorAll(".parcourse-explore-choice"));
  var at = {};
  inputs.forEach(function (input) { at[input.dataset.param] = Number(input.value); });
  groups.forEach(function (group) {
    group.querySelectorAll("button").forEach(function (button) {
      if (button.getAttribute("aria-pressed") === "true") {
        at[group.dataset.param] = Number(button.dataset.index);
      }
    });
  });
  function draw() {
    inputs.forEach(function (input) {
      input.nextElementSibling.textContent = spec.labels[input.dataset.param][at[input.dataset.param]];
    });
    var key = spec.params.map(function (name) { return at[name]; }).join(",");
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
    inputs.forEach(function (input) {
      input.addEventListener("input", function () {
        at[input.dataset.param] = Number(input.value);
        draw();
      });
    });
    groups.forEach(function (group) {
      group.querySelectorAll("button").forEach(function (button) {
        button.addEventListener("click", function () {
          group.querySelectorAll("button").forEach(function (other) {
            other.setAttribute("aria-pressed", other === button ? "true" : "false");
          });
          at[group.dataset.param] = Number(button.dataset.index);
          draw();
        });
      });
    });
    draw();
  }
  if (window.Plotly || document.readyState === "complete") { start(); }
  else { window.addEventListener("load", start); }
})();""")


def categorical(values: Sequence[Any]) -> bool:
    """Whether a parameter's values are choices (names, flags), shown as buttons, rather
    than numbers on a scale, shown as a slider."""
    return any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values)


def _control(name: str, values: list, start: int) -> str:
    """One parameter's control on the site: buttons for choices, a range slider else."""
    label = html.escape(name)
    if categorical(values):
        buttons = "".join(
            f'<button type="button" data-index="{i}" '
            f'aria-pressed="{"true" if i == start else "false"}">{html.escape(str(v))}</button>'
            for i, v in enumerate(values))
        return (f'<span class="parcourse-explore-choice" role="group" data-param="{label}" '
                f'aria-label="{label}">{label} {buttons}</span>')
    return (f'<label style="margin-right:1.5em">{label} '
            f'<input type="range" min="0" max="{len(values) - 1}" step="1" '
            f'value="{start}" data-param="{label}" '
            f'aria-label="{label}" style="vertical-align:middle"> '
            f'<output>{html.escape(str(values[start]))}</output></label>')


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


def static_html(fn, grid: dict[str, list], start: dict[str, int], *, height: int,
                 **labels) -> str:
    """The static twin: ``fn`` on every grid point, embedded with sliders and a script."""
    names = list(grid)
    points = {}
    for index in itertools.product(*(range(len(grid[name])) for name in names)):
        params = {name: grid[name][i] for name, i in zip(names, index)}
        points[",".join(map(str, index))] = traces(fn(**params))
    _check_every_slider_moves(grid, start, points)
    spec = {"params": names, "labels": {name: [str(v) for v in grid[name]] for name in names},
            "points": points, "layout": layout(**labels, points=list(points.values()))}
    payload = (json.dumps(spec, separators=(",", ":"), allow_nan=False)
               .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
    figure_id = "parcourse-explore-" + hashlib.sha1(payload.encode()).hexdigest()[:12]
    figure_id += f"-{next(_figure_numbers)}"
    sliders = "\n".join(_control(name, grid[name], start[name]) for name in names)
    return (f'<div class="parcourse-explore" id="{figure_id}">\n'
            f'<div class="parcourse-explore-controls">\n{sliders}\n</div>\n'
            f'<div class="parcourse-explore-plot" style="width:100%;height:{height}px"></div>\n'
            f'<script type="application/json" class="parcourse-explore-data">{payload}</script>\n'
            f'<script>\n{_SCRIPT.substitute(id=figure_id)}\n</script>\n</div>')
