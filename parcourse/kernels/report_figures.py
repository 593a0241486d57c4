"""The stored GPU reports drawn: chapter 5's figures of measured kernels, one function each.

Each function builds a matplotlib :class:`~matplotlib.figure.Figure` from its arguments
alone (no global pyplot state: a notebook shows it with ``display``, a test reads its
axes). The numbers come from :mod:`parcourse.kernels.report_tables`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from .. import roofline
from . import bench, devices, report_tables


def sweep_figure(report: dict) -> Figure:
    """A report's sweep in two panels: vector add GB/s over size, one line per ``BLOCK``
    (the datasheet bandwidth dotted); float16 matmul TFLOPS over the tile, one line per
    size, with ``torch.matmul`` at that size dashed in the same colour."""
    sweep, sheet = report["bench"]["sweep"], devices.datasheet_for(report["device"])
    fig = Figure(figsize=(7, 8), layout="constrained")
    left, right = fig.subplots(2, 1)
    for block in bench.SWEEP_ADD_BLOCKS:
        cells = [r for r in sweep["vector_add"] if r["block"] == block]
        left.plot([r["n"] for r in cells], [r["gbs"] for r in cells], "o-", ms=3, label=f"BLOCK {block}")
    if sheet is not None:
        left.axhline(sheet.bandwidth / 1e9, color="black", linestyle=":", label="datasheet bandwidth")
    left.set(xscale="log", xlabel="elements n (float32)", ylabel="GB/s (3ne bytes / time)",
             title="vector add: bandwidth by size and BLOCK")
    left.legend(ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    for n in bench.SWEEP_MATMUL_SIZES:
        cells = [r for r in sweep["matmul"] if r["n"] == n and "tflops" in r]
        line, = right.plot([r["block"] for r in cells], [r["tflops"] for r in cells], "o-", label=f"n = {n}")
        cublas = next(r for r in sweep["torch_matmul"] if r["n"] == n)["tflops"]
        right.axhline(cublas, color=line.get_color(), linestyle="--", linewidth=0.8)
    right.set_xscale("log", base=2)
    right.set(yscale="log", xlabel="square tile BLOCK_M = BLOCK_N", ylabel="TFLOPS (2n³ / time)",
              title="float16 matmul by tile (dashed: torch.matmul)")
    right.set_xticks(bench.SWEEP_MATMUL_BLOCKS, [str(b) for b in bench.SWEEP_MATMUL_BLOCKS], minor=False)
    right.xaxis.set_minor_locator(NullLocator())
    right.legend(ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    fig.suptitle(f"{report['device']}, {report['date'][:10]}")
    return fig


def roofline_figure(report: dict) -> Figure:
    """A report's Triton kernels on its roofline: the datasheet's roofs (fp32 solid,
    fp16 tensor cores dashed), the measured roof dotted
    (:func:`report_tables.measured_roof`), one point per benchmark row."""
    rows, sheet = report["bench"]["rows"], devices.datasheet_for(report["device"])
    roof = report_tables.measured_roof(report)
    xs = np.logspace(-2, 4, 200)
    fig = Figure(figsize=(7, 8), layout="constrained")
    ax = fig.subplots()
    if sheet is not None:
        for peak, name in ((sheet.fp16_flops, "fp16 tensor cores"), (sheet.fp32_flops, "fp32")):
            ax.plot(xs, roofline.attainable(xs, peak, sheet.bandwidth) / 1e12, color="black",
                    linestyle="-" if name == "fp32" else "--", linewidth=1,
                    label=f"datasheet roof, {name}")
    ax.plot(xs, roofline.attainable(xs, roof.fp16_flops, roof.bandwidth) / 1e12, color="gray", linestyle=":",
            label="measured roof: best vector add, torch.matmul fp16")
    for r in rows:
        ax.plot(r["intensity"], r["triton_tflops"], "o", label=f"Triton {r['kernel']} {r['size']} {r['dtype']}")
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity I (FLOP/byte, compulsory traffic)",
           ylabel="TFLOPS", title=f"Roofline of the {report['device']} ({report['date'][:10]}),\n"
                                  f"Triton kernels on it")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.11))
    return fig


def attention_roofline_figure(points: list[dict], sheet: devices.Datasheet,
                              measured: Sequence[tuple[str, list[dict]]] = ()) -> Figure:
    """Attention on a datasheet's fp16 roofline: ``points`` as
    :func:`parcourse.kernels.attention_costs.roofline_points` returns them, each at its
    bound; ``measured``, ``(device, points)`` pairs with the points of
    :func:`report_tables.attention_points`, as stars."""
    xs = np.logspace(0, 3.5, 100)
    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.subplots()
    ax.plot(xs, roofline.attainable(xs, sheet.fp16_flops, sheet.bandwidth) / 1e12, color="black",
            label=f"{sheet.name} datasheet: fp16 tensor cores, HBM3")
    for p in points:
        ax.plot(p["intensity"], p["bound"] / 1e12, "o", label=p["name"])
    for device, stars in measured:
        for p in stars:
            ax.plot(p["intensity"], p["tflops"], "*", ms=10, label=f"measured, {device}")
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP/byte, tiles from memory)",
           ylabel="TFLOPS")
    ax.legend(fontsize=10)
    return fig
