"""The FlashAttention kernels compiled for a T4, an A100 and an H100 on any machine, and
their machine code counted (chapter 5, "Attention in tiles").

The same machinery as the matmul's survey (:mod:`parcourse.kernels.compiled`): a job
names the kernel, the compute capability, its launch arguments (contiguous
``(B, H, S, d)`` tensors, ``S =`` :data:`SURVEY_SEQ_LEN`, the scale ``1/√d``) and the
constants and launch settings the wrapper would use. What the table shows per tile size:
whether ``tl.dot`` runs on tensor cores (``HMMA``/``HGMMA``) or on CUDA cores
(``FFMA``), registers per thread, spills, shared memory.

A configuration the compiler refuses is a row too: its message says why (Triton's README
lists compute capability 8.0 and newer as supported; a T4 is 7.5). The survey compiles
with ``failures="keep"``, so one refusal does not stop the others.
"""

from __future__ import annotations

import math

from .. import tables
from . import compiled, flash_attention, flash_attention_backward
from .compiled import Pointer
from .sass import Compiled

SURVEY_SEQ_LEN = 4096
SURVEY_BATCH_HEADS = 4 * 16
TYPE_NAMES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
KERNELS = {"forward": flash_attention.attention_forward_kernel,
           "backward dK dV": flash_attention_backward.attention_dkdv_kernel,
           "backward dQ": flash_attention_backward.attention_dq_kernel}
GPUS = {75: "T4", 80: "A100", 90: "H100"}


def attention_job(capability: int, which: str = "forward", *, dtype: str = "fp16", head_dim: int = 64,
                  block_m: int = 64, block_n: int = 64, causal: bool = True,
                  seq_len: int = SURVEY_SEQ_LEN) -> dict:
    """The arguments of :func:`~parcourse.kernels.compiled.compile_kernel` for one of the
    attention kernels (``which``: a key of :data:`KERNELS`) as
    :func:`~parcourse.kernels.flash_attention.attention` would launch it on a GPU."""
    if which not in KERNELS:
        raise ValueError(f"which must be one of {', '.join(map(repr, KERNELS))}, got {which!r}")
    data, stats = Pointer(dtype), Pointer("fp32")
    names = {"forward": ("q", "k", "v", "o", "lse"),
             "backward dK dV": ("q", "k", "v", "do", "lse", "delta", "dk", "dv"),
             "backward dQ": ("q", "k", "v", "do", "lse", "delta", "dq")}[which]
    args = {f"{name}_ptr": stats if name in ("lse", "delta") else data for name in names}
    args.update(seq_len=seq_len, scale=1 / math.sqrt(head_dim))
    constexprs = dict(HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal,
                      IEEE=dtype == "fp32", UPCAST=False)
    return dict(kernel=KERNELS[which], capability=capability, args=args, constexprs=constexprs,
                **flash_attention.launch_settings(block_m, block_n))


def survey_jobs() -> dict[str, dict]:
    """The chapter's table: the causal float16 forward, ``d = 64``, with tiles 64 × 64 and
    128 × 64 on all three GPUs; on an H100 also bfloat16 and ``d = 128``; both backward
    kernels (64 × 64) on an A100 and an H100."""
    jobs = {}
    for capability, gpu in GPUS.items():
        for block_m in (64, 128):
            jobs[f"{gpu} fp16 fwd d64 {block_m}×64"] = attention_job(capability, block_m=block_m)
    jobs["H100 bf16 fwd d64 128×64"] = attention_job(90, dtype="bf16", block_m=128)
    jobs["H100 fp16 fwd d128 64×64"] = attention_job(90, head_dim=128)
    for capability in (80, 90):
        for which, short in (("backward dK dV", "dKdV"), ("backward dQ", "dQ")):
            jobs[f"{GPUS[capability]} fp16 {short} d64 64×64"] = attention_job(capability, which)
    return jobs


def survey(jobs: dict[str, dict] | None = None) -> dict[str, Compiled | str]:
    """``{label: Compiled, or the compiler's message}`` for :func:`survey_jobs` (or ``jobs``)."""
    jobs = survey_jobs() if jobs is None else jobs
    return dict(zip(jobs, compiled.compile_kernels(list(jobs.values()), failures="keep")))


def row_cells(built: dict[str, Compiled | str]) -> tuple[tuple, list[list[str]]]:
    """The configurations that compiled, as :func:`~parcourse.kernels.sass.row_cells`."""
    return compiled.row_cells([(label, c) for label, c in built.items() if isinstance(c, Compiled)])


def failures(built: dict[str, Compiled | str]) -> list[str]:
    """One line per configuration that did not compile: the error's type and the last line
    of the compiler's message (where Triton puts the reason)."""
    lines = []
    for label, c in built.items():
        if not isinstance(c, Compiled):
            reason = c.partition(" failed: ")[2].strip() or c
            kind, last = reason.partition(":")[0], reason.splitlines()[-1].strip()
            lines.append(f"{label} did not compile: {kind}: {last[:150]}")
    return lines


def format_rows(built: dict[str, Compiled | str]) -> list[str]:
    """The table of :func:`row_cells` as text, then :func:`failures`, one line each."""
    return tables.text(*row_cells(built)).splitlines() + [f"  {line}" for line in failures(built)]
