"""Datasheet figures of the GPUs the book talks about, cited, and the stored GPU reports.

Peaks are NVIDIA's own figures, dense (without structured sparsity):

* **H100 SXM** — NVIDIA H100 Tensor Core GPU datasheet: HBM3 memory bandwidth 3.35 TB/s;
  FP32 67 TFLOPS; FP16 Tensor Core 1,979 TFLOPS *with sparsity*, so 989.5 TFLOPS dense.
* **H100 PCIe** — same datasheet: 2 TB/s; FP32 51 TFLOPS; FP16 Tensor Core 1,513 TFLOPS
  with sparsity, 756.5 dense.
* **T4** — NVIDIA T4 Tensor Core GPU datasheet: GDDR6 bandwidth 320 GB/s ("320+ GB/s");
  single precision 8.1 TFLOPS; mixed precision (FP16/FP32) 65 TFLOPS. Compute capability
  7.5 (Turing): recent Triton (3.x) gives ``tl.dot`` no tensor-core path below compute
  capability 8.0 and falls back to FMA instructions (its compiler says "Dot op using MMA
  for compute capability 75 has been deprecated. It falls back to the FMA path."; Triton
  pull request #5066), so a Triton matmul on a T4 is bound by the 8.1 TFLOPS, not the 65.
  :mod:`parcourse.kernels.compiled` shows it in the machine code: ``FFMA``, no ``HMMA``.

A GPU report is the JSON file that ``make gpu-check`` writes to ``parcourse/measurements/gpu/``
of a checkout; the reports stored there are package data (:data:`REPORTS`, read with
:mod:`importlib.resources`), so chapter 5 renders them from a ``pip install`` of the
repository too. :func:`stored_reports` reads them all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

MEASUREMENTS = resources.files("parcourse") / "measurements"  # package data: stored runs
REPORTS = MEASUREMENTS / "gpu"


@dataclass(frozen=True)
class Datasheet:
    """A GPU's peak figures as its datasheet states them (SI units: bytes/s, FLOP/s)."""
    name: str
    bandwidth: float
    fp32_flops: float
    fp16_flops: float  # dense tensor-core peak (what a Triton tl.dot can reach, if any)
    compute_capability: tuple[int, int]
    source: str


DATASHEETS = {
    "H100 SXM": Datasheet("H100 SXM", 3.35e12, 67e12, 989.5e12, (9, 0),
                          "NVIDIA H100 Tensor Core GPU datasheet (H100 SXM column)"),
    "H100 PCIe": Datasheet("H100 PCIe", 2.0e12, 51e12, 756.5e12, (9, 0),
                           "NVIDIA H100 Tensor Core GPU datasheet (H100 PCIe column)"),
    "T4": Datasheet("T4", 320e9, 8.1e12, 65e12, (7, 5), "NVIDIA T4 Tensor Core GPU datasheet"),
}


def datasheet_for(device_name: str) -> Datasheet | None:
    """The datasheet entry for a CUDA device name (``torch.cuda.get_device_name()``)."""
    name = device_name.upper()
    if "H100" in name:
        return DATASHEETS["H100 PCIe"] if "PCIE" in name else DATASHEETS["H100 SXM"]
    if "T4" in name.split():  # "Tesla T4"
        return DATASHEETS["T4"]
    return None


def stored_reports(folder: Path | str | Traversable = REPORTS) -> list[dict]:
    """Every GPU report in ``folder`` (a path, or package data such as :data:`REPORTS`),
    sorted by file name, each with its ``file`` added."""
    folder = Path(folder) if isinstance(folder, str) else folder
    files = [f for f in folder.iterdir() if f.name.endswith(".json")] if folder.is_dir() else []
    return [{**json.loads(f.read_text(encoding="utf-8")), "file": f.name}
            for f in sorted(files, key=lambda f: f.name)]


def step_summary(outcome: dict) -> str:
    """One line on a step of a stored report: "passed (n tests)", or why it failed — the
    error pytest printed (``E   …``), the collection error, or the time limit."""
    cases = {test: result for test, result in outcome.get("cases", {}).items()
             if not test.startswith("::")}  # "::module": a file that failed to import (JUnit)
    counted = f" ({sum(v == 'passed' for v in cases.values())} of {len(cases)} passed)" if cases else ""
    if outcome["passed"]:
        return "passed" + counted
    if outcome.get("error"):
        return f"FAILED: {outcome['error']}"
    lines = outcome.get("output_tail", "").strip().splitlines()
    collecting = next((line.strip("_ ") for line in lines if "ERROR collecting" in line), None)
    error = next((line[1:].strip() for line in lines if line.startswith("E ")), None)
    why = "; ".join(part for part in (collecting, error) if part) or (lines[-1] if lines else "no output")
    return f"FAILED{counted}: {why}"
