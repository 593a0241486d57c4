"""The tiled matmul on a device's roofline: the curves of chapter 5's widget.

A device is one of :func:`device_choices`: this CPU as measured (anything with
``bandwidth`` and ``peak_flops``, e.g. :class:`parcourse.roofline.CpuRoofline`; float32),
a datasheet (H100 SXM: fp16 tensor cores; T4: its FP32 peak, since Triton's ``tl.dot``
has no tensor-core path below compute capability 8.0), or a stored GPU report (its
measured roof, :func:`report_tables.measured_roof`). :func:`roofline_curves` places the
matmul of size ``n`` in ``BLOCK × BLOCK`` tiles on that roof (the tiling traffic model;
padded edge tiles do work nobody uses), the three memory-bound kernels beside it, and,
where a stored sweep ran that configuration, the measured point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import roofline, widgets
from . import devices, fused_softmax, layernorm, report_tables, tiled_matmul, vecadd

CPU = "this CPU"
DATASHEET_ROOFS = {"H100 SXM (datasheet)": ("H100 SXM", "fp16_flops"),
                   "T4 (datasheet)": ("T4", "fp32_flops")}


@dataclass(frozen=True)
class DeviceRoof:
    """A device's roof for the widget: bytes/s, FLOP/s, and the bytes of one element."""
    bandwidth: float
    peak_flops: float
    itemsize: int


def device_choices(reports: list[dict] | None = None) -> list[str]:
    """The devices the widget offers: this CPU, two datasheets, each stored report."""
    return [CPU, *DATASHEET_ROOFS, *(report_tables.label(r) for r in report_tables.with_bench(reports))]


def roof_of(device: str, cpu, reports: list[dict] | None = None) -> DeviceRoof:
    """The :class:`DeviceRoof` of a name from :func:`device_choices`; ``cpu`` is this
    CPU's measurement. Raises ``KeyError`` for a name that is none of them."""
    if device == CPU:
        return DeviceRoof(cpu.bandwidth, cpu.peak_flops, 4)
    if device in DATASHEET_ROOFS:
        name, peak = DATASHEET_ROOFS[device]
        sheet = devices.DATASHEETS[name]
        return DeviceRoof(sheet.bandwidth, getattr(sheet, peak), 2)
    report = report_tables.find(device, reports)
    if report is None:
        raise KeyError(f"no device {device!r}; choose one of {device_choices(reports)}")
    roof = report_tables.measured_roof(report)
    return DeviceRoof(roof.bandwidth, roof.fp16_flops, 2)


def matmul_intensity(n: int, block: int, itemsize: int) -> float:
    """FLOP per byte of the ``n³`` matmul in ``block × block`` tiles (tiling traffic)."""
    return tiled_matmul.flops(n, n, n) / tiled_matmul.tiled_bytes_moved(n, n, n, itemsize, block, block)


def useful_fraction(n: int, block: int) -> float:
    """The share of the padded ``⌈n/BLOCK⌉·BLOCK`` square of tiles that is the matrix."""
    return n * n / (math.ceil(n / block) * block) ** 2


def roofline_curves(n: int, block: int, device: str, cpu,
                    reports: list[dict] | None = None) -> dict[str, widgets.Series]:
    """The widget's figure at one point: the roofline (GFLOP/s over FLOP/byte), the
    matmul's modelled point (attainable × :func:`useful_fraction`), the measured point of
    a stored sweep if it has this ``n`` and ``block``, and vector add, softmax and layer
    norm at their intensities."""
    roof = roof_of(device, cpu, reports)
    s = roof.itemsize

    def attainable(intensity):
        return roofline.attainable(intensity, roof.peak_flops, roof.bandwidth)

    xs = np.logspace(-2, 4, 60)
    curves = {"roofline": widgets.Series(xs, attainable(xs) / 1e9)}
    intensity = matmul_intensity(n, block, s)
    curves[f"matmul n={n}, BLOCK={block}"] = widgets.Series(
        [intensity], [attainable(intensity) * useful_fraction(n, block) / 1e9], mode="markers")
    measured = report_tables.sweep_tflops(report_tables.find(device, reports), n, block)
    if measured is not None:
        curves["measured: Triton matmul, this n and BLOCK"] = widgets.Series(
            [intensity], [measured * 1e3], mode="markers")
    for name, kernel in (("vector add", vecadd.flops(1) / vecadd.bytes_moved(1, s)),
                         ("softmax", fused_softmax.flops(1, 1) / fused_softmax.bytes_moved(1, 1, s)),
                         ("layer norm", layernorm.flops(1, 1) / (2 * s))):
        curves[name] = widgets.Series([kernel], [attainable(kernel) / 1e9], mode="markers")
    return curves
