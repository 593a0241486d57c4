"""What Triton's compiler makes of a kernel for a given NVIDIA GPU, on any machine
(chapter 5, "Reading the compiler's output").

Triton lowers a kernel in stages: Triton IR, TritonGPU IR (the data laid out over
threads and warps), LLVM IR, PTX (NVIDIA's virtual instruction set), and finally a
*cubin* of machine code (SASS) assembled by ``ptxas`` for one compute capability. None of
this needs a GPU: :func:`compile_kernel` asks ``triton.compile`` for a target such as
compute capability 7.5 (a T4) and reads the cubin with ``cuobjdump``; both tools ship
inside the Triton wheel. What comes out is what that GPU would execute: its
registers per thread, spills to local memory, the unit that runs ``tl.dot`` (tensor cores
or CUDA cores), the widest global load and the shared memory per program, counted by
:mod:`parcourse.kernels.sass` (whose names this module re-exports: ``Compiled``,
``format_rows``, ``row_cells``, ...).

**What a launch compiles.** A kernel is compiled for its arguments as well as its source
(a unit stride becomes a constant, sizes divisible by 16 and aligned pointers allow wide
loads): a job names its arguments' values, and :func:`compile_kernels` specializes on them
the way a launch would (:mod:`parcourse.kernels.specialize`, re-exported here).

The counts are *static*: instructions in the code, not instructions executed, and no
timing. They explain measured times (a spilling tile, a GPU without a tensor-core path)
but do not replace them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from . import runtime
from .devices import MEASUREMENTS, stored_reports
from .sass import (COUNTED, MATH_UNITS, MAX_REGISTERS_PER_THREAD, REGISTER_GRANULE,  # noqa: F401
                   REGISTERS_PER_SM, Compiled, count_instructions, format_rows, row_cells,
                   parse_resource_usage, widest_global_load)
from .specialize import Pointer, launch_signature, specialization  # noqa: F401

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder parcourse is imported from
SURVEYS = MEASUREMENTS / "compiled"  # package data: surveys compiled by other Tritons
TARGETS = {75: "T4 (Turing)", 80: "A100 (Ampere)", 90: "H100 (Hopper)"}
SURVEY_N = 4096           # the matmul's size in the survey: the sweep's largest
SURVEY_UNALIGNED_N = 1000  # and one the sweep measured that is not a multiple of 16
SURVEY_ADD_N = 1 << 26     # the vector add's size: the benchmark's


def require_compiler() -> None:
    """Raise unless Triton is installed and new enough (3.4 and newer: ``triton.knobs``
    says where the ``ptxas`` and ``cuobjdump`` inside the package are)."""
    runtime.require()
    if not hasattr(runtime.triton, "knobs"):
        raise RuntimeError(f"parcourse.kernels.compiled needs Triton 3.4 or newer (its triton.knobs "
                           f"names the ptxas and cuobjdump it ships); this is Triton "
                           f"{runtime.triton.__version__}")


def toolchain() -> str:
    """The compilers that produce what :func:`compile_kernels` reads: Triton and its ptxas."""
    require_compiler()
    tools = []
    for name in ("ptxas", "ptxas_blackwell"):  # Triton 3.9 assembles sm_90 with the second
        tool = getattr(runtime.triton.knobs.nvidia, name, None)
        if tool is not None:
            tools.append(f"{name.replace('_', '-')} {tool.version}")
    return f"Triton {runtime.triton.__version__} ({', '.join(tools)})"


def _tool(name: str) -> str:
    try:
        return getattr(runtime.triton.knobs.nvidia, name).path
    except AttributeError:
        raise RuntimeError(f"this Triton ({runtime.triton.__version__}) does not say where its "
                           f"{name} is (triton.knobs.nvidia.{name}); parcourse.kernels.compiled "
                           "is tested with Triton 3.4 to 3.9") from None


def _read_cubin(cubin: bytes) -> tuple[dict[str, int], str]:
    """(resource usage, SASS listing) of a cubin, read with Triton's cuobjdump."""
    cuobjdump = _tool("cuobjdump")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        usage, sass = (subprocess.run([cuobjdump, flag, str(path)], capture_output=True, text=True,
                                      check=True, timeout=120).stdout
                       for flag in ("--dump-resource-usage", "-sass"))
    return parse_resource_usage(usage), sass


def compile_kernel(kernel, capability: int, *, args: dict, constexprs: dict,
                   num_warps: int = 4, num_stages: int = 3) -> Compiled:
    """Compile ``kernel`` (one of this package's ``@triton.jit`` kernels) for an NVIDIA GPU
    of compute capability ``capability`` (a key of :data:`TARGETS`, e.g. 75 for 7.5), as
    a launch with these argument values (``args``: a :class:`Pointer` per tensor, an int
    per integer), compile-time constants and launch settings would compile it, and count
    what is in the cubin. Works on any machine with Triton, GPU or not."""
    return compile_kernels([dict(kernel=kernel, capability=capability, args=args,
                                 constexprs=constexprs, num_warps=num_warps,
                                 num_stages=num_stages)])[0]


JOB_DEFAULTS = dict(num_warps=4, num_stages=3)


def compile_kernels(requests: list[dict], timeout: float = 900, *,
                    failures: str = "raise") -> list[Compiled | str]:
    """:func:`compile_kernel` for each dict of its arguments (defaults as there), all in
    one child process. A configuration that does not compile raises ``RuntimeError``
    (``failures="raise"``) or, with ``failures="keep"``, stands in the list as the
    message that error would have had, and the others are still compiled.

    Why a child process: on a machine without a GPU this package runs kernels in Triton's
    interpreter, and Triton decides at import time that every ``@triton.jit`` function,
    its own library functions such as ``tl.cdiv`` included, is an interpreted one; those
    cannot be compiled. The child imports Triton with ``TRITON_INTERPRET=0``, so it can.
    """
    require_compiler()
    if failures not in ("raise", "keep"):
        raise ValueError(f"failures must be 'raise' or 'keep', got {failures!r}")
    jobs = []
    for request in requests:
        request = {**JOB_DEFAULTS, **request}
        capability = request["capability"]
        if capability not in TARGETS:
            raise ValueError(f"capability must be one of {sorted(TARGETS)} (compute capability "
                             f"× 10: {', '.join(f'{c} = {name}' for c, name in TARGETS.items())}), "
                             f"got {capability!r}")
        kernel = request["kernel"]
        if kernel.fn.__module__ == "__main__":
            raise ValueError(f"{kernel.fn.__name__} is defined in __main__ (a notebook or a script), "
                             "which the compiling process cannot import: put the kernel in a .py "
                             "file and import it from there")
        signature, constants, divisible = launch_signature(kernel, request["args"], request["constexprs"])
        jobs.append(dict(kernel=[kernel.fn.__module__, kernel.fn.__name__], capability=capability,
                         signature=signature, constexprs=constants, divisible=divisible,
                         settings=request["constexprs"], num_warps=request["num_warps"],
                         num_stages=request["num_stages"], keep_going=failures == "keep"))
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
    built = []
    for job, result in zip(jobs, results):
        if "error" in result:
            module, name = job["kernel"]
            settings = ", ".join(f"{k}={v}" for k, v in job["settings"].items())
            message = (f"compiling {module.rpartition('.')[2]}.{name} ({settings}; "
                       f"num_warps={job['num_warps']}, num_stages={job['num_stages']}) for "
                       f"compute capability {job['capability'] / 10:.1f} failed: {result['error']}")
            if failures == "raise":
                raise RuntimeError(message)
            built.append(message)
        else:
            built.append(Compiled(**result))
    return built


def _compile_here(job: dict) -> dict:
    """One job of :func:`compile_kernels`, in a process whose kernels are not interpreted."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, name = job["kernel"]
    kernel = getattr(importlib.import_module(module), name)
    source = ASTSource(fn=kernel, signature=job["signature"], constexprs=job["constexprs"],
                       attrs={(position,): [["tt.divisibility", 16]] for position in job["divisible"]})
    binary = runtime.triton.compile(source, target=GPUTarget("cuda", job["capability"], 32),
                                    options={"num_warps": job["num_warps"],
                                             "num_stages": job["num_stages"],
                                             "enable_fp_fusion": True})
    usage, sass = _read_cubin(binary.asm["cubin"])
    return dict(capability=job["capability"], num_warps=job["num_warps"], registers=usage["REG"],
                stack_bytes=usage["STACK"], shared_bytes=binary.metadata.shared,
                instructions=count_instructions(sass), load_bits=widest_global_load(sass))


def matmul_job(capability: int, block: int, n: int = SURVEY_N, *, dtype: str = "fp16",
               ieee: bool = False) -> dict:
    """The arguments of :func:`compile_kernel` for the tiled matmul of two contiguous
    ``n × n`` matrices with square ``block`` tiles and the launch settings of the
    benchmark's sweep (:func:`~parcourse.kernels.bench.matmul_launch`). ``dtype="fp32"``
    with ``ieee=True`` is the package's float32 product; ``ieee=False``, Triton's TF32."""
    from . import tiled_matmul
    from .bench import matmul_launch

    launch = matmul_launch(block)
    args = dict(a_ptr=Pointer(dtype), b_ptr=Pointer(dtype), c_ptr=Pointer(dtype), M=n, N=n, K=n,
                stride_am=n, stride_ak=1, stride_bk=n, stride_bn=1, stride_cm=n, stride_cn=1)
    constexprs = {"BLOCK_M": launch["block_m"], "BLOCK_N": launch["block_n"],
                  "BLOCK_K": launch["block_k"], "GROUP_M": tiled_matmul.DEFAULT_GROUP_M, "IEEE": ieee}
    return dict(kernel=tiled_matmul.matmul_kernel, capability=capability, args=args,
                constexprs=constexprs, num_warps=launch["num_warps"], num_stages=launch["num_stages"])


def add_job(capability: int, block: int, n: int) -> dict:
    """The arguments of :func:`compile_kernel` for the float32 vector add of ``n``
    elements with ``BLOCK = block`` (Triton's default 4 warps)."""
    from . import vecadd

    args = dict(x_ptr=Pointer("fp32"), y_ptr=Pointer("fp32"), z_ptr=Pointer("fp32"), n=n)
    return dict(kernel=vecadd.add_kernel, capability=capability, args=args, constexprs={"BLOCK": block})


def survey_jobs() -> dict[str, dict]:
    """The chapter's table, as jobs by label: the float16 matmul at ``n = 4096`` for
    every target and every tile of the benchmark's sweep; on an H100 the same at
    ``n = 1000`` with tiles of 64, the float32 matmul with exact and with TF32 products
    (tile 128), and the vector add of ``2^26`` elements with ``BLOCK`` 64 and 1024."""
    from .bench import SWEEP_MATMUL_BLOCKS

    jobs = {f"{gpu.split()[0]} fp16 tile {block}": matmul_job(capability, block)
            for capability, gpu in TARGETS.items() for block in SWEEP_MATMUL_BLOCKS}
    jobs[f"H100 fp16 tile 64, n={SURVEY_UNALIGNED_N}"] = matmul_job(90, 64, SURVEY_UNALIGNED_N)
    for ieee, products in ((True, "fp32 exact"), (False, "fp32 TF32")):
        jobs[f"H100 {products} tile 128"] = matmul_job(90, 128, dtype="fp32", ieee=ieee)
    for block in (64, 1024):
        jobs[f"H100 vector add BLOCK {block}"] = add_job(90, block, SURVEY_ADD_N)
    return jobs


def survey() -> dict[str, Compiled]:
    """:func:`survey_jobs`, compiled by this machine's Triton: ``{label: Compiled}``."""
    jobs = survey_jobs()
    return dict(zip(jobs, compile_kernels(list(jobs.values()))))


def survey_record(built: dict[str, Compiled]) -> dict:
    """A survey as stored data: the toolchain, the date, and every row's fields."""
    return {"toolchain": toolchain(), "triton": runtime.triton.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "rows": {label: dataclasses.asdict(c) for label, c in built.items()}}


def stored_surveys(folder: Path | str | Traversable = SURVEYS) -> list[dict]:
    """Every stored survey (``python -m parcourse.kernels.compiled --json FILE`` under
    another Triton) in ``folder`` (a path, or package data such as :data:`SURVEYS`), sorted
    by file name, rows as :class:`Compiled`, ``file`` added (read as GPU reports are)."""
    return [{**record, "rows": {label: Compiled(**fields) for label, fields in record["rows"].items()}}
            for record in stored_reports(folder)]


def main(argv: list[str] | None = None) -> None:
    """``python -m parcourse.kernels.compiled [--json FILE]``: the chapter's table, compiled
    by this machine's Triton; ``--json`` also stores it (the chapter shows, beside its own,
    the surveys in ``parcourse/measurements/compiled/`` of a checkout: :data:`SURVEYS`)."""
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
            except Exception as error:  # the compiler's message, for the parent to report
                results.append({"error": f"{type(error).__name__}: {error}"})
                if not job["keep_going"]:
                    break
    print(json.dumps(results))


if __name__ == "__main__":
    main()
