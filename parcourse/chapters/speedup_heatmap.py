"""Chapter 3's speed-up map drawn: measured speed-ups as a heat map, the model's S = 1 line.

:func:`speedup_figure` draws a :class:`parcourse.chapters.scaling.SpeedupMap` in two
panels, K workers against one process with all the cores (``machine``) and against one
worker alone (``worker``, one device). Each cell shows its measured speed-up
T_1 / T_K, coloured on a logarithmic scale centred on 1 (blue: the K workers are
faster); the black line is the model's boundary S = 1
(:func:`parcourse.chapters.scaling.predicted_speedup`), or a note where the model puts
the whole map on one side of it.
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from . import scaling

TICKS = (0.125, 0.25, 0.5, 1, 2, 4, 8)


def cell_edges(values) -> np.ndarray:
    """The edges of the cells around grid points on a log axis: halfway (geometrically)
    between neighbours, and as far beyond the first and last points."""
    v = np.log(np.asarray(values, dtype=float))
    if v.size < 2:
        raise ValueError(f"need at least two grid points, got {list(values)}")
    middle = (v[1:] + v[:-1]) / 2
    return np.exp(np.concatenate([[v[0] - (middle[0] - v[0])], middle, [v[-1] + (v[-1] - middle[-1])]]))


def panels(speedup_map: scaling.SpeedupMap, cores: int, c_machine: float,
           c_device: float) -> list[dict]:
    """The two panels: ``name`` (the baseline), ``title``, the model's ``c_single`` and
    ``c_worker``, and the ``measured`` speed-ups, an array [batch, hidden]."""
    workers = speedup_map.workers
    return [{"name": "machine", "title": f"{workers} workers vs one process\nwith all {cores} cores",
             "c_single": c_machine, "c_worker": c_device, "measured": speedup_map.speedup("machine")},
            {"name": "worker", "title": f"{workers} workers vs one worker alone\n(one device)",
             "c_single": c_device, "c_worker": c_device, "measured": speedup_map.speedup("worker")}]


def colour_span(measured) -> float:
    """How far from 1 the colour scale reaches, both ways: the largest measured factor
    (speed-up or slow-down), at least 2 and at most 8."""
    return min(8.0, max(2.0, *(max(s.max(), 1 / s.min()) for s in measured)))


def speedup_figure(speedup_map: scaling.SpeedupMap, *, c_machine: float, c_device: float,
                   alpha: float, beta: float, cores: int, title: str = "") -> Figure:
    """The map's two panels (:func:`panels`) side by side, with one colour bar; ``alpha``
    and ``beta`` are the α–β model's, ``title`` goes above both panels (small)."""
    hx, bx = cell_edges(speedup_map.hiddens), cell_edges(speedup_map.batches)
    h_fine, b_fine = np.geomspace(hx[0], hx[-1], 200), np.geomspace(bx[0], bx[-1], 200)
    p_fine = scaling.parameter_count(h_fine[None, :])
    shown = panels(speedup_map, cores, c_machine, c_device)
    span = colour_span([p["measured"] for p in shown])
    norm = LogNorm(vmin=1 / span, vmax=span, clip=True)

    fig = Figure(figsize=(7, 4.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, panel in zip(axes, shown):
        measured = panel["measured"]
        mesh = ax.pcolormesh(hx, bx, measured, cmap="RdBu", norm=norm)
        for i, b in enumerate(speedup_map.batches):
            for j, h in enumerate(speedup_map.hiddens):
                dark = abs(np.log(measured[i, j])) > 0.6 * np.log(span)  # white text on deep colours
                ax.text(h, b, f"{measured[i, j]:.2f}", ha="center", va="center", fontsize=10,
                        color="white" if dark else "black")
        predicted = scaling.predicted_speedup(b_fine[:, None], p_fine, panel["c_single"], speedup_map.workers,
                                              alpha, beta, c_worker=panel["c_worker"])
        if predicted.min() < 1 < predicted.max():
            ax.contour(h_fine, b_fine, predicted, levels=[1.0], colors="black", linewidths=2)
            ax.plot([], [], "k-", linewidth=2, label="model: S = 1")
            ax.legend(loc="lower right", fontsize=10)
        else:
            side = "below" if predicted.max() <= 1 else "above"
            ax.text(0.5, 0.02, f"model: S {side} 1 everywhere here", transform=ax.transAxes,
                    ha="center", va="bottom", fontsize=10,
                    bbox=dict(facecolor="white", alpha=0.8, edgecolor="none"))
        ax.set(xscale="log", yscale="log", xlabel="hidden width h (784 → h → h → 10)", title=panel["title"])
        ax.set_xticks(speedup_map.hiddens, [str(h) for h in speedup_map.hiddens])
        ax.set_yticks(speedup_map.batches, [str(b) for b in speedup_map.batches])
        ax.minorticks_off()
    axes[0].set_ylabel("global batch B")
    bar = fig.colorbar(mesh, ax=axes, label="measured speedup T_1 / T_K (blue: K workers faster)")
    ticks = [t for t in TICKS if 1 / span <= t <= span]
    bar.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
    bar.minorticks_off()
    fig.suptitle(title, fontsize=10)
    return fig
