"""What chapter 5 reads from the compiled survey (:func:`parcourse.kernels.compiled.survey`).

:func:`survey_or_stored` compiles the survey on this machine, or, where this Triton
cannot (older than 3.4), takes the newest stored survey instead and says so.
:func:`findings` picks out what the chapter's text discusses: the unit ``tl.dot``
compiles to on a T4, the registers and spills of the H100's largest tiles (also as
other Tritons compiled them, and as a stored GPU report measured them), the loads at an
unaligned size and at two vector-add blocks, and the unit of float32 products.
"""

from __future__ import annotations

from typing import Callable

from . import bench, compiled
from .sass import Compiled


def survey_or_stored(survey: Callable[[], dict] | None = None,
                     stored: list[dict] | None = None) -> tuple[dict[str, Compiled], str]:
    """``(rows, where they come from)``: ``survey()`` (default: :func:`compiled.survey`)
    compiled here, or, if it raises ``RuntimeError``, the last of ``stored`` (default: the
    stored surveys) with the error; the error again if nothing is stored."""
    try:
        return (survey or compiled.survey)(), f"compiled on this machine by {compiled.toolchain()}"
    except RuntimeError as error:  # a Triton older than 3.4
        stored = compiled.stored_surveys() if stored is None else stored
        if not stored:
            raise
        return stored[-1]["rows"], f"{error}; stored, compiled by {stored[-1]['toolchain']}"


def registers_and_spills(c: Compiled) -> str:
    """``"R registers, stack S B, N STL/LDL"`` of one compiled kernel."""
    return f"{c.registers} registers, stack {c.stack_bytes} B, {c.spill_instructions} STL/LDL"


def measured_tiles(reports: list[dict]) -> tuple[dict | None, dict[tuple[int, int], float | None]]:
    """The first report with a sweep, and its matmul TFLOPS by ``(n, block)``."""
    report = next((r for r in reports if r["bench"].get("sweep")), None)
    if report is None:
        return None, {}
    return report, {(r["n"], r["block"]): r.get("tflops") for r in report["bench"]["sweep"]["matmul"]}


def findings(built: dict[str, Compiled], reports: list[dict] = (),
             stored: list[dict] | None = None) -> list[str]:
    """The chapter's lines on a survey ``built`` (``{label: Compiled}``), beside the
    ``stored`` surveys of other Tritons (default: all stored) and the sweep of the first
    of ``reports`` that has one."""
    stored = compiled.stored_surveys() if stored is None else stored
    t4 = [built[f"T4 fp16 tile {b}"] for b in bench.SWEEP_MATMUL_BLOCKS]
    lines = [f"T4: tl.dot compiles to {sorted({c.math_unit for c in t4})} at every tile; tensor-core "
             f"instructions in all {len(t4)} kernels: "
             f"{sum(c.instructions['HMMA'] + c.instructions['HGMMA'] for c in t4)}"]
    for block in (128, 256):
        c = built[f"H100 fp16 tile {block}"]
        lines.append(f"H100 tile {block}: accumulator {block}² float32 over {32 * c.num_warps} threads = "
                     f"{block * block // (32 * c.num_warps)} values per thread; {registers_and_spills(c)}")
    for survey in stored:  # the same table compiled by other Tritons
        rows = survey["rows"]
        lines.append(f"  compiled by {survey['toolchain']} ({survey['file']}): "
                     + "; ".join(f"tile {b}: {registers_and_spills(rows[f'H100 fp16 tile {b}'])}"
                                 for b in (128, 256)))
    report, tiles = measured_tiles(list(reports))
    if tiles:
        lines.append(f"  measured ({report['device']}, Triton {report['triton']}): n = 4096, tile 128 "
                     f"{tiles[4096, 128]:.0f} TFLOPS, tile 256 {tiles[4096, 256]:.0f} TFLOPS")
    aligned = built["H100 fp16 tile 64"]
    unaligned = built[f"H100 fp16 tile 64, n={compiled.SURVEY_UNALIGNED_N}"]
    lines.append(f"H100 tile 64: n a multiple of 16 ({compiled.SURVEY_N}, 1024) loads {aligned.global_loads}, "
                 f"n = {compiled.SURVEY_UNALIGNED_N} loads {unaligned.global_loads}"
                 + (f"; measured {tiles[1024, 64]:.0f} TFLOPS at n = 1024 and {tiles[1000, 64]:.0f} at n = 1000"
                    if tiles else ""))
    small, big = built["H100 vector add BLOCK 64"], built["H100 vector add BLOCK 1024"]
    lines.append(f"H100 vector add: BLOCK 64 loads {small.global_loads} per thread and instruction, "
                 f"BLOCK 1024 {big.global_loads}")
    exact, tf32 = built["H100 fp32 exact tile 128"], built["H100 fp32 TF32 tile 128"]
    lines.append(f"H100 float32: exact products on {exact.math_unit}, TF32 products on {tf32.math_unit}")
    return lines
