"""How a kernel benchmark's report reads (chapter 5's GPU page, ``python -m parcourse bench
kernels``): the rows, the GPU sweep and the attention rows as header-and-cells tables
(:mod:`parcourse.tables`), the lines above and below them, and the whole report as text
for a terminal or as Markdown for a page. The benchmark itself runs in
:mod:`parcourse.kernels.bench`.
"""

from __future__ import annotations

from .. import tables
from . import bench_attention
from .bench import SWEEP_ADD_BLOCKS, SWEEP_ADD_SIZES, SWEEP_MATMUL_BLOCKS, SWEEP_MATMUL_SIZES


def _fmt(value, spec):
    return "–" if value is None else format(value, spec)


CPU_HEADER = ("kernel", "size", "dtype", "FLOP/B", "torch ms", "GB/s", "GFLOP/s", "of roof")
GPU_HEADER = ("kernel", "size", "dtype", "Triton ms", "torch ms", "GB/s", "TFLOPS", "of peak",
              "vs torch")


def row_cells(result: dict) -> tuple[tuple, list[list[str]]]:
    """The benchmark's rows as a header and cells: on a CPU the torch ops against this
    CPU's roofline (:data:`CPU_HEADER`), on a GPU Triton against torch (:data:`GPU_HEADER`)."""
    if result["device"] == "cpu":
        return CPU_HEADER, [[r["kernel"], r["size"], r["dtype"], tables.significant(r["intensity"]),
                             tables.significant(r["torch_seconds"] * 1e3), tables.significant(r["torch_gbs"]),
                             tables.significant(r["torch_tflops"] * 1e3), f"{r['roof_fraction']:.0%}"]
                            for r in result["rows"]]
    return GPU_HEADER, [[r["kernel"], r["size"], r["dtype"], tables.significant(r["triton_seconds"] * 1e3),
                         tables.significant(r["torch_seconds"] * 1e3), f"{r['triton_gbs']:.1f}",
                         f"{r['triton_tflops']:.2f}", _fmt(r.get("peak_fraction"), ".0%"),
                         f"{r['ratio_to_torch']:.2f}×"] for r in result["rows"]]


def _superscript(exponent: int) -> str:
    return str(exponent).translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))


def sweep_tables(sweep: dict | None) -> list[tuple[str, tuple, list[list[str]]]]:
    """The GPU sweep as ``(caption, header, cells)``: GB/s by BLOCK at each size of the
    vector add (and whether every result was bit-equal to x + y), TFLOPS by tile at each n
    of the float16 matmul beside ``torch.matmul``'s ("err": the tile did not run)."""
    if not sweep:
        return []
    add = []
    for n in SWEEP_ADD_SIZES:
        cells = [r for r in sweep["vector_add"] if r["n"] == n]
        add.append([f"2{_superscript(n.bit_length() - 1)}", *(f"{r['gbs']:.0f}" for r in cells),
                    "yes" if all(r["exact"] for r in cells) else "no"])
    matmul = []
    for n in SWEEP_MATMUL_SIZES:
        torch_row = next(r for r in sweep["torch_matmul"] if r["n"] == n)
        matmul.append([str(n), *(_fmt(r.get("tflops"), ".1f") if "error" not in r else "err"
                                 for r in sweep["matmul"] if r["n"] == n), f"{torch_row['tflops']:.1f}"])
    return [("sweep, vector add float32, GB/s by BLOCK",
             ("n", *map(str, SWEEP_ADD_BLOCKS), "exact"), add),
            ("sweep, matmul float16 n×n×n, TFLOPS by square tile",
             ("n", *map(str, SWEEP_MATMUL_BLOCKS), "torch"), matmul)]


def report_heading(result: dict) -> list[str]:
    """The lines above the benchmark's table: the kernels' mode, and this CPU's roofline
    or the GPU and the datasheet its peaks come from."""
    lines = [f"kernels: {result['kernels']}"]
    if result["device"] == "cpu":
        cpu = result["cpu"]
        lines.append(f"this CPU's roofline: bandwidth {max(cpu['copy_bandwidth'], cpu['triad_bandwidth']) / 1e9:.1f} GB/s "
                     f"(STREAM copy {cpu['copy_bandwidth'] / 1e9:.1f}, triad {cpu['triad_bandwidth'] / 1e9:.1f}), "
                     f"peak {cpu['peak_flops'] / 1e9:.1f} GFLOP/s (fp32 matmul n={cpu['matmul_size']})")
        lines.append(f"thread scaling, speedup t(1)/t(K): matmul {cpu['matmul_speedups']}, add "
                     f"{cpu['add_speedups']}; Amdahl fit p = {cpu['matmul_parallel_fraction']:.2f} "
                     f"(matmul), {cpu['add_parallel_fraction']:.2f} (add)")
    else:
        lines.append(f"{result['device']} (compute capability {result['compute_capability']}); "
                     f"peaks: {result['datasheet'] or 'no datasheet entry: fractions of peak not computed'}")
    return lines


def report_tables(result: dict) -> list[tuple[str, tuple, list[list[str]]]]:
    """The tables below the rows, as ``(caption, header, cells)``: on a GPU the sweep's
    (:func:`sweep_tables`) and the attention benchmark's."""
    if result["device"] == "cpu":
        return []
    found = sweep_tables(result.get("sweep"))
    if result.get("attention"):
        found.append((bench_attention.CAPTION, *bench_attention.table_cells(result["attention"])))
    return found


def report_notes(result: dict, targets: bool = True) -> list[str]:
    """The lines below the tables: the interpreter's run (CPU), the attention rows that
    failed and (``targets``) the project's targets (GPU), and the result's notes."""
    lines = []
    if result["device"] == "cpu":
        interp = result["interpreter"]
        lines.append(f"Triton interpreter, vector_add {interp['size']} elements: "
                     f"{interp['triton_seconds'] * 1e3:.2f} ms (torch: {interp['torch_seconds'] * 1e3:.3f} ms)"
                     if interp else "Triton is not installed: no interpreter run")
    else:
        lines += bench_attention.failures(result.get("attention"))
        for t in result["targets"] if targets else ():
            verdict = {True: "met", False: "NOT met", None: f"not evaluated ({t['why_not_evaluated']})"}[t["met"]]
            lines.append(f"target: {t['target']}: measured {_fmt(t['value'], '.2f')}, {verdict}")
    return lines + list(result["notes"])


def format_report(result: dict) -> str:
    """The benchmark as plain text: :func:`report_heading` and :func:`report_notes` as
    comment lines (targets as they are), the rows' table, then :func:`report_tables`."""
    lines = [f"# {line}" for line in report_heading(result)]
    lines += tables.text(*row_cells(result)).splitlines()
    for caption, header, cells in report_tables(result):
        lines.append(f"# {caption}")
        lines += [f"#   {line}" for line in tables.text(header, cells).splitlines()]
    lines += [line if line.startswith("target: ") else f"# {line}" for line in report_notes(result)]
    return "\n".join(lines)


def report_markdown(result: dict) -> str:
    """The same report for a page: its lines as paragraphs, each table a Markdown table.
    The project's targets stay out (the README keeps them): a page shows what was
    measured, not whether it met a goal."""
    parts = [line[0].upper() + line[1:] for line in report_heading(result)]
    parts.append(tables.markdown(*row_cells(result)))
    for caption, header, cells in report_tables(result):
        parts += [caption[0].upper() + caption[1:] + ":", tables.markdown(header, cells)]
    notes = report_notes(result, targets=False)
    if notes:
        parts.append("\n".join(f"* {line}" for line in notes))
    return "\n\n".join(parts)
