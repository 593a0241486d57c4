"""What Triton's compiler makes of a kernel for a given NVIDIA GPU, on any machine
(chapter 5, "Reading the compiler's output").

Triton lowers a kernel in stages: Triton IR, TritonGPU IR (the data laid out over
threads and warps), LLVM IR, PTX (NVIDIA's virtual instruction set), and finally a
*cubin* of machine code (SASS) assembled by ``ptxas`` for one compute capability. None of
this needs a GPU: :func:`compile_kernel` asks ``triton.compile`` for a target such as
compute capability 7.5 (a T4) and reads the cubin with ``cuobjdump``; both tools ship
inside the Triton wheel. What comes out is what that GPU would execute:

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
* **shared memory** per program, in bytes (the pipeline stages' tiles of ``A`` and ``B``).

The counts are *static*: instructions in the code, not instructions executed, and no
timing. They explain measured times (a spilling tile, a GPU without a tensor-core path)
but do not replace them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import _triton

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
SURVEYS = PACKAGE_ROOT / "book" / "data" / "compiled"
TARGETS = {75: "T4 (Turing)", 80: "A100 (Ampere)", 90: "H100 (Hopper)"}
REGISTERS_PER_SM = 65536
MAX_REGISTERS_PER_THREAD = 255
REGISTER_GRANULE = 8  # registers per thread are allocated in multiples of 8
COUNTED = ("HGMMA", "HMMA", "FFMA", "LDL", "STL")
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


def signature_of(kernel, pointer_dtype: str) -> dict[str, str]:
    """Triton's compile signature for a kernel of this package: ``tl.constexpr``
    parameters are compile-time constants, ``*_ptr`` parameters point to
    ``pointer_dtype`` (``"fp16"``, ``"fp32"``), every other parameter is an ``i32``."""
    types = {}
    for name, parameter in inspect.signature(kernel.fn).parameters.items():
        if parameter.annotation is _triton.tl.constexpr or parameter.annotation == "tl.constexpr":
            types[name] = "constexpr"
        elif name.endswith("_ptr"):
            types[name] = f"*{pointer_dtype}"
        else:
            types[name] = "i32"
    return types


def toolchain() -> str:
    """The compilers that produce what :func:`compile_kernels` reads: Triton and its ptxas."""
    _triton.require()
    tools = []
    for name in ("ptxas", "ptxas_blackwell"):  # Triton 3.9 assembles sm_90 with the second
        tool = getattr(_triton.triton.knobs.nvidia, name, None)
        if tool is not None:
            tools.append(f"{name.replace('_', '-')} {tool.version}")
    return f"Triton {_triton.triton.__version__} ({', '.join(tools)})"


def _tool(name: str) -> str:
    try:
        return getattr(_triton.triton.knobs.nvidia, name).path
    except AttributeError:
        raise RuntimeError(f"this Triton ({_triton.triton.__version__}) does not say where its "
                           f"{name} is (triton.knobs.nvidia.{name}); parcourse.kernels.compiled "
                           "is tested with Triton 3.9") from None


def _read_cubin(cubin: bytes) -> tuple[dict[str, int], dict[str, int]]:
    """(resource usage, instruction counts) of a cubin, read with Triton's cuobjdump."""
    cuobjdump = _tool("cuobjdump")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        usage, sass = (subprocess.run([cuobjdump, flag, str(path)], capture_output=True, text=True,
                                      check=True, timeout=120).stdout
                       for flag in ("--dump-resource-usage", "-sass"))
    return parse_resource_usage(usage), count_instructions(sass)


def compile_kernel(kernel, capability: int, *, constexprs: dict, pointer_dtype: str = "fp32",
                   num_warps: int = 4, num_stages: int = 3) -> Compiled:
    """Compile ``kernel`` (one of this package's ``@triton.jit`` kernels) for an NVIDIA GPU
    of compute capability ``capability`` (a key of :data:`TARGETS`, e.g. 75 for
    7.5) with the given compile-time constants and launch settings, and count what is in
    the cubin. Works on any machine with Triton, GPU or not."""
    return compile_kernels([dict(kernel=kernel, capability=capability, constexprs=constexprs,
                                 pointer_dtype=pointer_dtype, num_warps=num_warps,
                                 num_stages=num_stages)])[0]


JOB_DEFAULTS = dict(pointer_dtype="fp32", num_warps=4, num_stages=3)


def compile_kernels(requests: list[dict], timeout: float = 900) -> list[Compiled]:
    """:func:`compile_kernel` for each dict of its arguments (defaults as there), all in
    one child process.

    Why a child process: on a machine without a GPU this package runs kernels in Triton's
    interpreter, and Triton decides at import time that every ``@triton.jit`` function,
    its own library functions such as ``tl.cdiv`` included, is an interpreted one; those
    cannot be compiled. The child imports Triton with ``TRITON_INTERPRET=0``, so it can.
    """
    _triton.require()
    jobs = []
    for request in requests:
        capability = request["capability"]
        if capability not in TARGETS:
            raise ValueError(f"capability must be one of {sorted(TARGETS)} (compute capability "
                             f"× 10: {', '.join(f'{c} = {name}' for c, name in TARGETS.items())}), "
                             f"got {capability!r}")
        kernel = request["kernel"].fn
        if kernel.__module__ == "__main__":
            raise ValueError(f"{kernel.__name__} is defined in __main__ (a notebook or a script), "
                             "which the compiling process cannot import: put the kernel in a .py "
                             "file and import it from there")
        jobs.append({**JOB_DEFAULTS, **request, "kernel": [kernel.__module__, kernel.__name__]})
    env = {**os.environ, "TRITON_INTERPRET": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        child = subprocess.run([sys.executable, "-m", "parcourse.kernels.compiled", "--jobs"],
                               input=json.dumps(jobs), env=env,
                               capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        plural = "s" if len(jobs) != 1 else ""
        raise RuntimeError(f"compiling {len(jobs)} kernel configuration{plural} took more than "
                           f"{timeout:g} s; compile fewer at once, or allow more time "
                           "(timeout=...)") from None
    if child.returncode != 0:
        raise RuntimeError(f"the process compiling the kernels failed (exit status "
                           f"{child.returncode}):\n" + child.stderr[-3000:])
    results = json.loads(child.stdout.strip().splitlines()[-1])  # after anything a tool printed
    for job, result in zip(jobs, results):
        if "error" in result:
            module, name = job["kernel"]
            settings = ", ".join(f"{k}={v}" for k, v in job["constexprs"].items())
            raise RuntimeError(f"compiling {module.rpartition('.')[2]}.{name} ({settings}; "
                               f"num_warps={job['num_warps']}, num_stages={job['num_stages']}) for "
                               f"compute capability {job['capability'] / 10:.1f} failed: "
                               f"{result['error']}")
    return [Compiled(**result) for result in results]


def _compile_here(job: dict) -> dict:
    """One job of :func:`compile_kernels`, in a process whose kernels are not interpreted."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, name = job["kernel"]
    kernel = getattr(importlib.import_module(module), name)
    source = ASTSource(fn=kernel, signature=signature_of(kernel, job["pointer_dtype"]),
                       constexprs=job["constexprs"])
    binary = _triton.triton.compile(source, target=GPUTarget("cuda", job["capability"], 32),
                                    options={"num_warps": job["num_warps"],
                                             "num_stages": job["num_stages"],
                                             "enable_fp_fusion": True})
    usage, instructions = _read_cubin(binary.asm["cubin"])
    return dict(capability=job["capability"], num_warps=job["num_warps"], registers=usage["REG"],
                stack_bytes=usage["STACK"], shared_bytes=binary.metadata.shared,
                instructions=instructions)


def matmul_job(capability: int, block: int, *, dtype: str = "fp16", ieee: bool = False) -> dict:
    """The arguments of :func:`compile_kernel` for the tiled matmul with square ``block``
    tiles and the launch settings of the benchmark's sweep
    (:func:`~parcourse.kernels.bench.matmul_launch`). ``dtype="fp32"`` with ``ieee=True``
    is the package's float32 product; with ``ieee=False``, Triton's default TF32 products."""
    from . import tiled_matmul
    from .bench import matmul_launch

    launch = matmul_launch(block)
    constexprs = {"BLOCK_M": launch["block_m"], "BLOCK_N": launch["block_n"],
                  "BLOCK_K": launch["block_k"], "GROUP_M": tiled_matmul.DEFAULT_GROUP_M, "IEEE": ieee}
    return dict(kernel=tiled_matmul.matmul_kernel, capability=capability, constexprs=constexprs,
                pointer_dtype=dtype, num_warps=launch["num_warps"], num_stages=launch["num_stages"])


def format_rows(rows: list[tuple[str, Compiled]]) -> list[str]:
    """One line per ``(label, compiled)``: unit of ``tl.dot``, registers, spills, shared memory."""
    lines = [f"# {'':34s} {'tl.dot runs on':32s} {'regs':>4s} {'stack B':>7s} {'STL+LDL':>7s} "
             f"{'smem KiB':>8s} {'programs/SM by regs':>19s}"]
    for label, c in rows:
        lines.append(f"  {label:34s} {c.math_unit:32s} {c.registers:4d} {c.stack_bytes:7d} "
                     f"{c.spill_instructions:7d} {c.shared_bytes / 1024:8.0f} "
                     f"{c.programs_per_sm_by_registers:19d}")
    return lines


def survey_jobs() -> dict[str, dict]:
    """The chapter's table, as jobs by label: the float16 matmul for every target and every
    tile of the benchmark's sweep, the float32 matmul on an H100 with exact and with TF32
    products (tile 128), and the vector add (``BLOCK`` 1024)."""
    from . import vecadd
    from .bench import SWEEP_MATMUL_BLOCKS

    jobs = {f"{gpu.split()[0]} fp16 tile {block}": matmul_job(capability, block)
            for capability, gpu in TARGETS.items() for block in SWEEP_MATMUL_BLOCKS}
    for ieee, products in ((True, "fp32 exact"), (False, "fp32 TF32")):
        jobs[f"H100 {products} tile 128"] = matmul_job(90, 128, dtype="fp32", ieee=ieee)
    jobs["H100 vector add BLOCK 1024"] = dict(kernel=vecadd.add_kernel, capability=90,
                                             constexprs={"BLOCK": 1024})
    return jobs


def survey() -> dict[str, Compiled]:
    """:func:`survey_jobs`, compiled by this machine's Triton: ``{label: Compiled}``."""
    jobs = survey_jobs()
    return dict(zip(jobs, compile_kernels(list(jobs.values()))))


def survey_record(built: dict[str, Compiled]) -> dict:
    """A survey as stored data: the toolchain, the date, and every row's fields."""
    return {"toolchain": toolchain(), "triton": _triton.triton.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "rows": {label: dataclasses.asdict(c) for label, c in built.items()}}


def stored_surveys(folder: Path | str = SURVEYS) -> list[dict]:
    """Every stored survey (``python -m parcourse.kernels.compiled --json FILE`` under
    another Triton), sorted by file name, rows as :class:`Compiled`, ``file`` added."""
    folder = Path(folder)
    stored = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = json.loads(path.read_text())
        record["rows"] = {label: Compiled(**fields) for label, fields in record["rows"].items()}
        stored.append({**record, "file": path.name})
    return stored


def main(argv: list[str] | None = None) -> None:
    """``python -m parcourse.kernels.compiled [--json FILE]``: the chapter's table, compiled
    by this machine's Triton; ``--json`` also stores it (``book/data/compiled/`` holds the
    ones the chapter shows beside its own)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m parcourse.kernels.compiled", description=main.__doc__)
    parser.add_argument("--json", type=Path, help="also write the survey to this JSON file")
    parser.add_argument("--jobs", action="store_true", help=argparse.SUPPRESS)  # the child
    args = parser.parse_args(argv)
    if args.jobs:
        _run_jobs()
        return
    built = survey()
    print(f"compiled by {toolchain()}")
    print("\n".join(format_rows(list(built.items()))))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(survey_record(built), indent=1) + "\n")
        print(f"written: {args.json}")


def _run_jobs() -> None:
    """The child process of :func:`compile_kernels`: jobs as JSON on stdin, results out."""
    results = []
    with contextlib.redirect_stdout(sys.stderr):  # whatever Triton prints stays out of the JSON
        for job in json.load(sys.stdin):
            try:
                results.append(_compile_here(job))
            except Exception as error:  # the compiler's message, for the parent to raise
                results.append({"error": f"{type(error).__name__}: {error}"})
                break
    print(json.dumps(results))


if __name__ == "__main__":
    main()
