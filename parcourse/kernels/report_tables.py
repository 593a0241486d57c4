"""The stored GPU reports as tables: what chapter 5 reads from them, in one place.

A report (:func:`parcourse.kernels.devices.stored_reports`) holds the benchmark's
``rows`` (one per kernel, size and dtype), and on a GPU its ``sweep`` (vector add over
sizes and ``BLOCK``; the float16 matmul over sizes and square tiles; ``torch.matmul`` at
the same sizes) and its ``attention`` rows. The functions here turn these into the
numbers the chapter shows: a report's *measured roof* (its best vector add and its
fastest float16 ``torch.matmul``), each row against that roof, the sweep's findings and
the tiling model next to them; each table as a header and cells, which the page shows
with :func:`parcourse.tables.markdown` and a terminal with :func:`parcourse.tables.text`. :mod:`parcourse.kernels.report_figures` draws them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import roofline, tables
from . import attention_costs, bench, devices, tiled_matmul, vecadd


def label(report: dict) -> str:
    """How the chapter names a stored report: ``"<device> (<date>)"``."""
    return f"{report['device']} ({report['date'][:10]})"


def with_bench(reports: list[dict] | None = None) -> list[dict]:
    """The reports (default: the stored ones) that hold a benchmark."""
    return [r for r in (devices.stored_reports() if reports is None else reports) if "bench" in r]


def find(name: str, reports: list[dict] | None = None) -> dict | None:
    """The report whose :func:`label` is ``name``, or ``None``."""
    return next((r for r in with_bench(reports) if label(r) == name), None)


def machine_line(report: dict) -> str:
    """The report's file, device, driver, CUDA, torch, Triton and date, in one line."""
    return (f"{report['file']}: {report['device']} (compute capability {report['compute_capability']}), "
            f"driver {report['driver']}, CUDA {report['cuda']}, torch {report['torch']}, "
            f"Triton {report['triton']}, {report['date']}")


@dataclass(frozen=True)
class Roof:
    """A measured roof: bytes/s of the best vector add, FLOP/s of the fastest float16
    ``torch.matmul`` of a report (tensor cores, through cuBLAS)."""
    bandwidth: float
    fp16_flops: float


def measured_roof(report: dict) -> Roof:
    """The roof a report measured: :class:`Roof` from its benchmark rows."""
    rows = report["bench"]["rows"]
    return Roof(max(r["triton_gbs"] for r in rows if r["kernel"] == "vector_add") * 1e9,
                max(r["torch_tflops"] for r in rows
                    if r["kernel"] == "matmul" and r["dtype"] == "float16") * 1e12)


def sweep_tflops(report: dict | None, n: int, block: int) -> float | None:
    """TFLOPS of the Triton matmul at size ``n`` and tile ``block`` in a report's sweep;
    ``None`` where the report has no sweep or that configuration did not run."""
    sweep = report and report["bench"].get("sweep")
    row = sweep and next((r for r in sweep["matmul"] if r["n"] == n and r["block"] == block), None)
    return row.get("tflops") if row else None


def roofline_rows(report: dict) -> list[dict]:
    """Each benchmark row of a report against its measured roof: ``kernel``, ``size``,
    ``dtype``, ``intensity`` (FLOP/byte), ``tflops`` (Triton's) and ``roof_fraction``,
    the share of the roof at that intensity (float16 under the measured float16 peak,
    float32 under the datasheet's FP32 peak; NaN without a datasheet)."""
    roof, sheet = measured_roof(report), devices.datasheet_for(report["device"])
    table = []
    for r in report["bench"]["rows"]:
        peak = roof.fp16_flops if r["dtype"] == "float16" else (sheet.fp32_flops if sheet else math.nan)
        fraction = (r["triton_tflops"] * 1e12 / roofline.attainable(r["intensity"], peak, roof.bandwidth)
                    if peak > 0 else math.nan)
        table.append({"kernel": r["kernel"], "size": r["size"], "dtype": r["dtype"],
                      "intensity": r["intensity"], "tflops": r["triton_tflops"], "roof_fraction": fraction})
    return table


ROOFLINE_HEADER = ("kernel", "size", "dtype", "I (FLOP/B)", "TFLOPS", "of roof (measured)")


def roofline_cells(report: dict) -> list[list[str]]:
    """:func:`roofline_rows` as cells for :data:`ROOFLINE_HEADER`."""
    return [[r["kernel"], r["size"], r["dtype"], tables.significant(r["intensity"]),
             tables.significant(r["tflops"]),
             "–" if math.isnan(r["roof_fraction"]) else f"{r['roof_fraction']:.0%}"]
            for r in roofline_rows(report)]


def roof_lines(report: dict, cpu) -> list[str]:
    """The measured roof against the datasheet and against ``cpu`` (anything with
    ``bandwidth`` and ``peak_flops``, e.g. a :class:`parcourse.roofline.CpuRoofline`)."""
    roof, sheet = measured_roof(report), devices.datasheet_for(report["device"])
    return [f"measured roof: {roof.bandwidth / 1e12:.2f} TB/s"
            + (f" ({roof.bandwidth / sheet.bandwidth:.0%} of the datasheet)" if sheet else "")
            + f", torch.matmul float16 {roof.fp16_flops / 1e12:.0f} TFLOPS"
            + (f" ({roof.fp16_flops / sheet.fp16_flops:.0%} of the dense datasheet peak)" if sheet else ""),
            f"against this CPU: bandwidth × {roof.bandwidth / cpu.bandwidth:.0f}; float16 matmul on "
            f"tensor cores against the CPU's float32 matmul × {roof.fp16_flops / cpu.peak_flops:.0f}"]


def format_roofline(report: dict, cpu) -> list[str]:
    """:func:`roofline_cells` as a text table, then :func:`roof_lines`."""
    return tables.text(ROOFLINE_HEADER, roofline_cells(report)).splitlines() + roof_lines(report, cpu)


def best_tiles(report: dict) -> list[dict]:
    """For each matmul size of the sweep: the fastest tile (``n``, ``block``, ``tflops``),
    ``torch_tflops`` at that size and ``tile_256`` (TFLOPS of tile 256, NaN if it failed)."""
    sweep = report["bench"]["sweep"]
    cublas = {r["n"]: r["tflops"] for r in sweep["torch_matmul"]}
    rows = []
    for n in bench.SWEEP_MATMUL_SIZES:
        cells = [r for r in sweep["matmul"] if r["n"] == n]
        fastest = max((r for r in cells if "tflops" in r), key=lambda r: r["tflops"])
        at_256 = next((r for r in cells if r["block"] == 256), {})
        rows.append({"n": n, "block": fastest["block"], "tflops": fastest["tflops"],
                     "torch_tflops": cublas[n], "tile_256": at_256.get("tflops", math.nan)})
    return rows


def tiling_model(report: dict, n: int | None = None) -> list[dict]:
    """The float16 matmul at size ``n`` (default: the sweep's largest) for each tile:
    ``intensity`` of the tiling model (no reuse between programs), its ``bound`` in
    TFLOPS at the datasheet's bandwidth and fp16 peak (NaN without a datasheet), and the
    ``measured`` TFLOPS (NaN where the tile did not run)."""
    n = max(bench.SWEEP_MATMUL_SIZES) if n is None else n
    sheet = devices.datasheet_for(report["device"])
    rows = []
    for block in bench.SWEEP_MATMUL_BLOCKS:
        intensity = tiled_matmul.flops(n, n, n) / tiled_matmul.tiled_bytes_moved(n, n, n, 2, block, block)
        bound = min(intensity * sheet.bandwidth, sheet.fp16_flops) / 1e12 if sheet else math.nan
        measured = sweep_tflops(report, n, block)
        rows.append({"block": block, "intensity": intensity, "bound": bound,
                     "measured": math.nan if measured is None else measured})
    return rows


def sweep_finding_lines(report: dict) -> list[str]:
    """What a report's sweep of the vector add shows: every result bit-equal to x + y, and
    its bandwidth at the largest and the smallest size."""
    sweep, sheet = report["bench"]["sweep"], devices.datasheet_for(report["device"])
    add = {(r["n"], r["block"]): r["gbs"] for r in sweep["vector_add"]}
    largest, smallest = max(bench.SWEEP_ADD_SIZES), min(bench.SWEEP_ADD_SIZES)
    best = max(bench.SWEEP_ADD_BLOCKS, key=lambda b: add[largest, b])
    return [f"vector add, every one of the {len(sweep['vector_add'])} configurations bit-equal to x + y: "
            f"{all(r['exact'] for r in sweep['vector_add'])}",
            f"  n = 2^{largest.bit_length() - 1}: BLOCK 64 {add[largest, 64]:.0f} GB/s, "
            f"BLOCK {best} {add[largest, best]:.0f} GB/s"
            + (f" = {add[largest, best] / (sheet.bandwidth / 1e9):.0%} of the datasheet's "
               f"{sheet.bandwidth / 1e12:.2f} TB/s" if sheet else ""),
            f"  n = 2^{smallest.bit_length() - 1}: at most "
            f"{max(add[smallest, b] for b in bench.SWEEP_ADD_BLOCKS):.0f} GB/s: "
            f"{vecadd.bytes_moved(smallest, 4) / 1e3:.0f} kB in "
            f"{min(r['seconds'] for r in sweep['vector_add'] if r['n'] == smallest) * 1e6:.1f} µs"]


def sweep_finding_tables(report: dict) -> list[tuple[str, tuple, list[list[str]]]]:
    """What a report's sweep of the float16 matmul shows, as ``(caption, header, cells)``:
    the fastest tile at each size against ``torch.matmul`` (:func:`best_tiles`), and the
    largest size against the tiling model (:func:`tiling_model`)."""
    best = [[str(r["n"]), str(r["block"]), tables.significant(r["tflops"]),
             tables.significant(r["torch_tflops"]), f"{r['tflops'] / r['torch_tflops']:.2f}×",
             tables.significant(r["tile_256"])] for r in best_tiles(report)]
    n = max(bench.SWEEP_MATMUL_SIZES)
    model = [[str(r["block"]), *(tables.significant(r[key]) for key in ("intensity", "bound", "measured"))]
             for r in tiling_model(report, n)]
    return [("matmul float16, the fastest tile at each size",
             ("n", "best tile", "TFLOPS", "torch.matmul TFLOPS", "best / torch", "tile 256 TFLOPS"), best),
            (f"matmul n = {n}, measured against the tiling model (no reuse between programs, "
             f"at the datasheet bandwidth)",
             ("tile", "I (FLOP/B)", "model ≤ TFLOPS", "measured TFLOPS"), model)]


def format_sweep_findings(report: dict) -> list[str]:
    """What a report's sweep shows, for a terminal: :func:`sweep_finding_lines`, then each
    of :func:`sweep_finding_tables` under its caption."""
    lines = sweep_finding_lines(report)
    for caption, header, cells in sweep_finding_tables(report):
        lines += [f"{caption}:"] + [f"  {line}" for line in tables.text(header, cells).splitlines()]
    return lines


def attention_points(report: dict, seq_len: int, head_dim: int, block_m: int,
                     block_n: int) -> list[dict]:
    """A report's measured non-causal FlashAttention forward at this size and tile, as
    roofline points: ``intensity`` (FLOP per byte of the tiled traffic counted by
    :func:`parcourse.kernels.attention_costs.flash_traffic`) and ``tflops``."""
    points = []
    for r in report["bench"].get("attention") or []:
        if (r.get("block_m"), r.get("block_n"), r["seq_len"], r["head_dim"]) == (block_m, block_n, seq_len, head_dim) \
                and not r["causal"] and "forward_tflops" in r:
            traffic = attention_costs.flash_traffic(r["batch"], r["heads"], seq_len, head_dim, 2,
                                                    block_m=block_m, block_n=block_n)
            points.append({"intensity": r["forward_flops"] / sum(traffic.values()),
                           "tflops": r["forward_tflops"]})
    return points
