"""What a figure of the book is, on both fronts of :mod:`parcourse.widgets`: named series
of (x, y) points, and the axes they are drawn on (Plotly's layout; matplotlib reads the
same).

:class:`Series` is one curve; :func:`traces` checks a function's figure and turns it into
JSON-ready traces (numbers to 6 significant digits, NaN and ±inf as gaps); :func:`layout`
is the Plotly layout of a figure's title, axis labels and log axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence, Tuple, Union

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


def traces(result: Curves) -> list[dict]:
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


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def tick_label(value: float) -> str:
    """A log axis's tick as a reader reads it: 0.5, 20, 5000; 10⁶ and 2·10⁶ beyond."""
    exponent = math.floor(math.log10(value) + 1e-9)
    if -3 <= exponent < 4:
        return f"{value:g}"
    mantissa = round(value / 10 ** exponent, 6)
    power = "10" + str(exponent).translate(_SUPERSCRIPT)
    return power if mantissa == 1 else f"{mantissa:g}·{power}"


def log_ticks(low: float, high: float) -> list[float]:
    """Ticks of a decimal log axis from ``low`` to ``high`` (> 0): 1, 2 and 5 of every
    decade over at most three decades, every power of ten beyond."""
    first, last = math.floor(math.log10(low) + 1e-9), math.ceil(math.log10(high) - 1e-9)
    steps = (1, 2, 5) if last - first <= 3 else (1,)
    ticks = [float(f"{m * 10.0 ** e:.6g}") for e in range(first, last + 1) for m in steps]
    inside = [t for t in ticks if low * (1 - 1e-9) <= t <= high * (1 + 1e-9)]
    return inside if len(inside) >= 2 else ticks


def _axis(label: str, log: bool | int, values=()) -> dict:
    axis = {"title": {"text": label}, "type": "log" if log else "linear"}
    if log == 2:  # a tick at every power of two (True == 1, a plain log axis)
        axis.update(dtick=math.log10(2), exponentformat="none")
    elif log:  # Plotly labels 0.5 on a short log axis "5": give it every tick and its text
        positive = [v for v in values if v is not None and v > 0]
        if positive:
            ticks = log_ticks(min(positive), max(positive))
            axis.update(tickmode="array", tickvals=ticks, ticktext=list(map(tick_label, ticks)))
    return axis


def _values(points, key: str) -> list[float]:
    return [v for frame in points for trace in frame for v in trace[key]]


def layout(title, x_label, y_label, log_x, log_y, y_ticks=None, points=()) -> dict:
    """The Plotly layout; ``points`` (every frame's traces) place a log axis's ticks."""
    yaxis = _axis(y_label, log_y, _values(points, "y") if log_y else ())
    if y_ticks:
        yaxis.update(tickmode="array", tickvals=list(y_ticks), ticktext=list(y_ticks.values()),
                     zeroline=False)  # labelled rows: no line through the row at 0
    return {"title": {"text": title}, "colorway": COLORS, "hovermode": "closest",
            "xaxis": _axis(x_label, log_x, _values(points, "x") if log_x else ()),
            "yaxis": yaxis,
            "margin": {"t": 50, "r": 20},
            "legend": {"orientation": "h", "yanchor": "top", "y": -0.2, "font": {"size": 11}}}
