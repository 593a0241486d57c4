"""``make gpu-check`` (``python -m parcourse.kernels.gpu_check``): the GPU run of the book.

On a CUDA machine, in this order (the report is rewritten after each step, so a run cut
short still leaves what it measured):

1. ``python -m parcourse bench kernels --json ...``: every kernel timed, the H100 targets,
   and the block-size sweep;
2. :func:`parcourse.pipeline_memory.measure`: each pipeline stage's activation memory
   under GPipe and 1F1B, in bytes;
3. ``pytest -m gpu tests``: the tests that compile the kernels for the GPU;
4. every notebook under ``book/`` with nbmake, as a Colab reader runs them, each with a
   time limit (``--nbmake-timeout``); several at once with pytest-xdist, where it is
   installed and the machine has the cores for it.

It writes ONE JSON report, ``book/data/gpu/<device>-<date>.json`` (and, beside it, the
whole output of the two pytest steps in ``.gpu-tests.log`` and ``.notebooks.log`` files): device, driver, CUDA,
torch and Triton versions, date, every figure, and pass/fail of each step and target.
The book's chapter 5 page renders every report stored there. On a machine without a CUDA
GPU it stops at once with :data:`NO_GPU` (exit code 2).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import torch

from .. import pipeline_memory
from . import _triton, devices

ROOT = Path(__file__).resolve().parents[2]
NO_GPU = ("make gpu-check: no CUDA GPU visible to torch on this machine, so there is nothing "
          "to check: it compiles the Triton kernels for a GPU, runs the GPU tests, the notebooks "
          "and `python -m parcourse bench kernels`. Run it on a machine with an NVIDIA GPU and a "
          "CUDA build of torch (Colab, Kaggle, a cloud GPU).")
NOTEBOOK_TIMEOUT = 240  # seconds per notebook


def notebook_workers(notebooks: int) -> int:
    """How many notebooks to run at once: one per 2 cores with pytest-xdist, else 1."""
    if importlib.util.find_spec("xdist") is None:
        return 1
    return max(1, min(notebooks, (os.cpu_count() or 1) // 2))


def driver_version() -> str | None:
    """The NVIDIA driver version, from ``nvidia-smi`` (None if it cannot be asked)."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def slug(device_name: str, date: str) -> str:
    """``NVIDIA H100 80GB HBM3``, ``2026-11-28…`` → ``nvidia-h100-80gb-hbm3-2026-11-28``."""
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") + "-" + date[:10]


def _pytest(args: list[str], timeout: float, log: Path) -> dict:
    """Run pytest with ``args``; return each test's outcome (from its JUnit XML) and the end
    of its output. The whole output goes to ``log``."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        start = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                                   "-o", "addopts=", f"--junitxml={xml}", "-q", *args],
                                  cwd=ROOT, capture_output=True, text=True, timeout=timeout)
            output = done.stdout + done.stderr
            returncode, tail = done.returncode, output[-3000:]
        except subprocess.TimeoutExpired as stopped:
            output = (stopped.stdout or b"").decode(errors="replace") if isinstance(stopped.stdout, bytes) \
                else (stopped.stdout or "")
            returncode, tail = None, f"stopped after {timeout:.0f} s"
        log.write_text(output)
        cases = {}
        if xml.exists():
            for case in ElementTree.parse(xml).iter("testcase"):
                outcome = "passed"
                for child in case:
                    if child.tag in ("failure", "error", "skipped"):
                        outcome = child.tag
                cases[f"{case.get('classname')}::{case.get('name')}"] = outcome
    return {"passed": returncode == 0, "returncode": returncode, "seconds": time.perf_counter() - start,
            "cases": cases, "output_tail": tail}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parcourse.kernels.gpu_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", metavar="FOLDER", default=str(devices.REPORTS),
                        help="where the report goes (default: book/data/gpu)")
    parser.add_argument("--skip-notebooks", action="store_true", help="skip step 4")
    parser.add_argument("--notebook-timeout", type=int, default=NOTEBOOK_TIMEOUT, metavar="SECONDS",
                        help=f"time limit of each notebook (default {NOTEBOOK_TIMEOUT})")
    parser.add_argument("--notebook-workers", type=int, metavar="N",
                        help="notebooks run at once (default: one per 2 cores with pytest-xdist)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() or _triton.DEVICE != "cuda":
        print(NO_GPU, file=sys.stderr)
        return 2
    _triton.require()
    import triton

    name = torch.cuda.get_device_name()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    path = Path(args.out) / f"{slug(name, date)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    cc = torch.cuda.get_device_capability()
    report = {"device": name, "compute_capability": f"{cc[0]}.{cc[1]}", "driver": driver_version(),
              "cuda": torch.version.cuda, "torch": torch.__version__, "triton": triton.__version__,
              "python": sys.version.split()[0], "date": date, "steps": {}}

    def save():
        path.write_text(json.dumps(report, indent=1) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        figures = Path(tmp) / "bench.json"
        start = time.perf_counter()
        try:  # its table goes straight to this terminal
            returncode = subprocess.run([sys.executable, "-m", "parcourse", "bench", "kernels",
                                         "--json", str(figures)], cwd=ROOT, timeout=600).returncode
        except subprocess.TimeoutExpired:
            returncode = None
        report["steps"]["bench"] = {"passed": returncode == 0, "returncode": returncode,
                                    "seconds": time.perf_counter() - start}
        if figures.exists():
            report["bench"] = json.loads(figures.read_text())
    save()
    start = time.perf_counter()
    try:
        report["pipeline_memory"] = pipeline_memory.measure()
        print(pipeline_memory.format_rows(report["pipeline_memory"]))
        report["steps"]["pipeline memory"] = {"passed": True}
    except Exception as err:  # recorded in the report; the other steps still run
        report["steps"]["pipeline memory"] = {"passed": False, "error": f"{type(err).__name__}: {err}"}
    report["steps"]["pipeline memory"]["seconds"] = time.perf_counter() - start
    save()
    report["steps"]["gpu tests"] = _pytest(["-m", "gpu", "tests"], timeout=300,
                                           log=path.with_suffix(".gpu-tests.log"))
    save()
    if not args.skip_notebooks:
        notebooks = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "book").glob("**/*.ipynb"))
        workers = args.notebook_workers or notebook_workers(len(notebooks))
        parallel = ["-n", str(workers)] if workers > 1 else []
        report["steps"]["notebooks"] = _pytest(
            ["--nbmake", f"--nbmake-timeout={args.notebook_timeout}", *parallel, *notebooks],
            timeout=args.notebook_timeout * -(-len(notebooks) // workers) + 60,
            log=path.with_suffix(".notebooks.log"))
        report["steps"]["notebooks"]["workers"] = workers
        save()
    for step, outcome in report["steps"].items():
        print(f"{step}: {'passed' if outcome['passed'] else 'FAILED'} ({outcome['seconds']:.0f} s)")
    for target in report.get("bench", {}).get("targets", []):
        print(f"target: {target['target']}: {target['met']}")
    print(f"report written to {path}")
    return 0 if all(step["passed"] for step in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
