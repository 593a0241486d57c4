"""What the machine code of a compiled kernel holds, counted (chapter 5, "Reading the
compiler's output").

:mod:`parcourse.kernels.compiled` compiles a kernel into a *cubin* (NVIDIA machine code,
SASS, for one compute capability) and reads it back with ``cuobjdump``; this module
turns what ``cuobjdump`` prints into numbers (:class:`Compiled`):

* **registers per thread.** An SM of compute capability 7.5, 8.0 or 9.0 has 65,536
  32-bit registers and gives a thread at most 255 (CUDA C++ Programming Guide,
  "Compute Capabilities"). A program of ``w`` warps using ``r`` registers per thread
  takes ``32 w r`` of them (``r`` rounded up to a multiple of 8), so at most
  ``65536 // (32 w r)`` programs fit on one SM at a time
  (:attr:`Compiled.programs_per_sm_by_registers`);
* **spills.** Values that do not fit in registers live in per-thread *local memory*
  (cached DRAM): the cubin's stack frame holds them, and ``STL``/``LDL`` instructions
  store and load them (:attr:`Compiled.stack_bytes`, :attr:`Compiled.spill_instructions`);
* **which unit does the arithmetic of** ``tl.dot``: ``HGMMA`` (Hopper's warpgroup
  matrix multiply-accumulate on the tensor cores, compute capability 9.0), ``HMMA``
  (a warp's tensor-core matrix multiply-accumulate, 7.0 and newer), or ``FFMA`` (one
  float32 fused multiply-add per thread on the ordinary CUDA cores);
* **global loads**: the widest load from memory (16-bit, 32-bit, 128-bit), and whether
  it is an asynchronous copy into shared memory (``LDGSTS``, which lets the pipeline
  stages overlap loading with computing);
* **shared memory** per program, in bytes (the pipeline stages' tiles of ``A`` and ``B``).

The counts are *static*: instructions in the code, not instructions executed, and no
timing.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from .. import tables

REGISTERS_PER_SM = 65536
MAX_REGISTERS_PER_THREAD = 255
REGISTER_GRANULE = 8  # registers per thread are allocated in multiples of 8
COUNTED = ("HGMMA", "HMMA", "FFMA", "LDL", "STL", "LDGSTS")
MATH_UNITS = (("HGMMA", "tensor cores, warpgroup (HGMMA)"), ("HMMA", "tensor cores (HMMA)"),
              ("FFMA", "CUDA cores (FFMA)"))


@dataclass(frozen=True)
class Compiled:
    """The cubin of one kernel configuration for one compute capability, as counted."""

    capability: int
    num_warps: int
    registers: int
    stack_bytes: int
    shared_bytes: int
    instructions: dict
    load_bits: int  # the widest load from global memory (LDG or LDGSTS), in bits

    @property
    def spill_instructions(self) -> int:
        """``STL`` + ``LDL`` in the code: stores to and loads from local memory."""
        return self.instructions.get("STL", 0) + self.instructions.get("LDL", 0)

    @property
    def spills(self) -> bool:
        return self.stack_bytes > 0 or self.spill_instructions > 0

    @property
    def math_unit(self) -> str:
        """The fastest unit the code's multiply-adds use: tensor cores or CUDA cores."""
        for opcode, unit in MATH_UNITS:
            if self.instructions.get(opcode, 0):
                return unit
        return "none counted"

    @property
    def global_loads(self) -> str:
        """The widest load from memory, e.g. ``"128-bit async"`` (``LDGSTS``: memory to
        shared memory without passing through registers) or ``"16-bit"`` (``LDG``)."""
        return f"{self.load_bits}-bit" + (" async" if self.instructions.get("LDGSTS", 0) else "")

    @property
    def programs_per_sm_by_registers(self) -> int:
        """Programs that fit on one SM at once as far as registers go."""
        per_thread = -(-self.registers // REGISTER_GRANULE) * REGISTER_GRANULE
        return REGISTERS_PER_SM // (per_thread * 32 * self.num_warps)


def parse_resource_usage(text: str) -> dict[str, int]:
    """The ``NAME:value`` fields of ``cuobjdump --dump-resource-usage`` for the (one)
    function in a cubin, e.g. ``{"REG": 128, "STACK": 0, ...}``."""
    _, found, function = text.partition("Function ")
    if not found:
        raise ValueError(f"no function in cuobjdump's resource usage:\n{text}")
    return {name: int(value) for name, value in re.findall(r"\b([A-Z_]+(?:\[\d+\])?):(\d+)", function)}


def count_instructions(sass: str) -> dict[str, int]:
    """How often each opcode of :data:`COUNTED` appears in ``cuobjdump -sass`` output
    (modifiers such as ``HMMA.16816.F32`` count as their opcode)."""
    counts = Counter(re.findall(r"\b(" + "|".join(COUNTED) + r")(?=[.\s])", sass))
    return {opcode: counts.get(opcode, 0) for opcode in COUNTED}


def widest_global_load(sass: str) -> int:
    """Bits of the widest ``LDG``/``LDGSTS`` in ``cuobjdump -sass`` output: a ``.128``,
    ``.64``, ``.U16``/``.S16`` or ``.U8``/``.S8`` modifier gives the width, none means
    32 bits; 0 when the code loads nothing from global memory."""
    widths = {"128": 128, "64": 64, "U16": 16, "S16": 16, "U8": 8, "S8": 8}
    bits = [next((widths[m] for m in mnemonic.split(".")[1:] if m in widths), 32)
            for mnemonic in re.findall(r"\b(LDGSTS(?:\.\w+)*|LDG(?:\.\w+)*)", sass)]
    return max(bits, default=0)


HEADER = ("kernel", "tl.dot runs on", "registers", "stack B", "STL+LDL", "widest load", "shared KiB",
          "programs/SM by registers")


def row_cells(rows: list[tuple[str, Compiled]]) -> tuple[tuple, list[list[str]]]:
    """One row of cells per ``(label, compiled)``, for :data:`HEADER`: the unit of
    ``tl.dot``, registers per thread, stack bytes, spill instructions, the widest global
    load, shared memory per program and the programs an SM holds by registers."""
    return HEADER, [[label, c.math_unit, str(c.registers), f"{c.stack_bytes:,}", f"{c.spill_instructions:,}",
                     c.global_loads, f"{c.shared_bytes / 1024:.0f}", str(c.programs_per_sm_by_registers)]
                    for label, c in rows]


def format_rows(rows: list[tuple[str, Compiled]]) -> list[str]:
    """:func:`row_cells` as the lines of a text table (a header and one line per row)."""
    return tables.text(*row_cells(rows)).splitlines()
