"""``make gpu-check`` (``python -m parcourse.kernels.gpu_check``): the GPU run of the book.

On a CUDA machine, in this order (the report is rewritten after each step, so a run cut
short still leaves what it measured):

1. ``python -m parcourse bench kernels --json ...``: every kernel timed, the H100 targets,
   and the block-size sweep;
2. :func:`parcourse.model_parallel.activation_memory.measure`: each pipeline stage's activation memory
   under GPipe and 1F1B, in bytes;
3. ``pytest -m gpu`` over the test files of :data:`GPU_TESTS`: the tests that compile
   the kernels for the GPU;
4. every notebook under ``book/`` with nbmake, as a Colab reader runs them, each with a
   time limit (``--nbmake-timeout``); several at once with pytest-xdist, where it is
   installed and the machine has the cores for it.

Steps 3 and 4 run the repository's tests and notebooks, so they need a checkout of it
(``--repo DIR``, by default the checkout this package sits in: :func:`find_checkout`).
Where parcourse is installed with ``pip`` and there is no checkout, it says so in one line
and runs steps 1 and 2 only.

It writes ONE JSON report, ``<device>-<date>.json`` (and, beside it, the whole output of
the two pytest steps in ``.gpu-tests.log`` and ``.notebooks.log`` files): device, driver,
CUDA, torch and Triton versions, date, every figure, and pass/fail of each step and
target. By default it goes to ``parcourse/measurements/gpu/`` of the checkout, the package
data that chapter 5 renders (:data:`parcourse.kernels.devices.REPORTS`); without a
checkout, to the current folder, and it says so. On a machine without a CUDA GPU it stops
at once with :data:`NO_GPU` (exit code 2).
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
from pathlib import Path

import torch

from ..model_parallel import activation_memory as pipeline_memory
from . import runtime

IMPORTED_FROM = Path(__file__).resolve().parents[2]  # the folder holding this parcourse
CHECKOUT_REPORTS = Path("parcourse", "measurements", "gpu")  # in a checkout: devices.REPORTS
NO_GPU = ("make gpu-check: no CUDA GPU visible to torch on this machine, so there is nothing "
          "to check: it compiles the Triton kernels for a GPU, runs the GPU tests, the notebooks "
          "and `python -m parcourse bench kernels`. Run it on a machine with an NVIDIA GPU and a "
          "CUDA build of torch (Colab, Kaggle, a cloud GPU).")
NOTEBOOK_TIMEOUT = 240  # seconds per notebook cell (nbmake's limit)
NOTEBOOK_STEP_LIMIT = 900  # seconds for all the notebooks
# The test files with GPU tests (pytest.mark.gpu): named, so that collecting them needs
# nothing beyond the package (tests/unit/test_widgets.py, for one, imports Sphinx).
GPU_TESTS = ("tests/unit/test_kernels_gpu.py", "tests/unit/test_pipeline_memory.py")
OUTCOMES = "PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS"
OUTCOME_FIRST = re.compile(rf"\b({OUTCOMES}) (\S+::\S+)")  # pytest -v under xdist
OUTCOME_LAST = re.compile(rf"^(\S+::\S+) ({OUTCOMES})\b")  # pytest -v alone


def find_checkout(folder: Path | str | None = None) -> Path | None:
    """The checkout of the repository at ``folder`` (by default the folder this package
    is imported from), recognised by its ``tests/`` and ``_toc.yml``; None where there is
    none, as for a ``pip install`` of parcourse."""
    root = Path(folder) if folder is not None else IMPORTED_FROM
    return root.resolve() if (root / "tests").is_dir() and (root / "_toc.yml").is_file() else None


def destination(repo: Path | None, out: Path | str | None = None) -> tuple[Path, str | None]:
    """``(folder, note)``: where the report goes, and the line to print when there is no
    checkout (``repo`` None): steps 3 and 4 do not run, and the report is written to
    ``out`` or, by default, the current folder rather than into the installed package."""
    if repo is not None:
        return (Path(out) if out else repo / CHECKOUT_REPORTS), None
    folder = Path(out) if out else Path.cwd()
    return folder, (f"gpu_check: parcourse is imported from {IMPORTED_FROM}, not from a checkout of "
                    f"the repository (no tests/ and _toc.yml there), so the GPU tests and the "
                    f"notebooks do not run (--repo DIR runs them from a clone); the report goes "
                    f"to {folder.resolve()}")


def notebook_workers(notebooks: int) -> int:
    """How many notebooks to run at once: one per 4 cores with pytest-xdist, else 1.

    A notebook's training runs start worker processes of their own, each with
    ``cores // K`` torch threads: more notebooks at once than cores / 4 oversubscribe
    the CPU (seen on a 16-core machine: 13 at once, and one notebook that takes 75 s on
    2 cores alone had not finished after 300 s).
    """
    if importlib.util.find_spec("xdist") is None:
        return 1
    return max(1, min(notebooks, (os.cpu_count() or 1) // 4))


def outcomes_from_output(output: str) -> dict[str, str]:
    """Each test's outcome from pytest's ``-v`` lines (``[gw0] PASSED tests/x.py::name``
    under xdist, ``tests/x.py::name PASSED`` without). Read as the run goes, so they are
    known even for a run stopped at its time limit."""
    cases = {}
    for line in output.splitlines():
        if match := OUTCOME_FIRST.search(line):
            outcome, test = match.groups()
        elif match := OUTCOME_LAST.match(line):
            test, outcome = match.groups()
        else:
            continue
        cases[test] = outcome.lower()
    return cases


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


def _pytest(args: list[str], timeout: float, log: Path, cwd: Path | None = None) -> dict:
    """Run ``pytest -v`` with ``args`` in ``cwd`` (the checkout); return each test's
    outcome and the end of its output. The whole output goes to ``log``."""
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                               "-o", "addopts=", "-v", *args],
                              cwd=cwd, capture_output=True, text=True, timeout=timeout)
        output = done.stdout + done.stderr
        returncode, tail = done.returncode, output[-3000:]
    except subprocess.TimeoutExpired as stopped:  # its output is bytes, even with text=True
        output = (stopped.stdout or b"").decode(errors="replace")
        returncode, tail = None, f"stopped after {timeout:.0f} s"
    log.write_text(output)
    return {"passed": returncode == 0, "returncode": returncode, "seconds": time.perf_counter() - start,
            "cases": outcomes_from_output(output), "output_tail": tail}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parcourse.kernels.gpu_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", metavar="DIR", type=Path,
                        help="the checkout whose GPU tests and notebooks run (default: the one "
                             "this package sits in; without one, steps 3 and 4 do not run)")
    parser.add_argument("--out", metavar="FOLDER",
                        help=f"where the report goes (default: {CHECKOUT_REPORTS} of the checkout, "
                             "which chapter 5 renders; without a checkout, the current folder)")
    parser.add_argument("--skip-notebooks", action="store_true", help="skip step 4")
    parser.add_argument("--notebook-timeout", type=int, default=NOTEBOOK_TIMEOUT, metavar="SECONDS",
                        help=f"time limit of each notebook cell (default {NOTEBOOK_TIMEOUT})")
    parser.add_argument("--notebook-workers", type=int, metavar="N",
                        help="notebooks run at once (default: one per 4 cores with pytest-xdist)")
    args = parser.parse_args(argv)
    repo = find_checkout(args.repo)
    if args.repo is not None and repo is None:
        parser.error(f"--repo {args.repo}: not a checkout of the repository (no tests/ and _toc.yml)")
    if not torch.cuda.is_available() or runtime.DEVICE != "cuda":
        print(NO_GPU, file=sys.stderr)
        return 2
    folder, note = destination(repo, args.out)
    if note:
        print(note)
    runtime.require()
    import triton

    name = torch.cuda.get_device_name()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    path = folder / f"{slug(name, date)}.json"
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
        try:  # its table goes straight to this terminal; started in IMPORTED_FROM, the
            # child imports this same parcourse
            returncode = subprocess.run([sys.executable, "-m", "parcourse", "bench", "kernels", "--json",
                                         str(figures)], cwd=IMPORTED_FROM, timeout=600).returncode
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
    if repo is not None:
        report["steps"]["gpu tests"] = _pytest(["-m", "gpu", *GPU_TESTS], timeout=300,
                                               log=path.with_suffix(".gpu-tests.log"), cwd=repo)
        save()
    if repo is not None and not args.skip_notebooks:
        notebooks = sorted(str(p.relative_to(repo)) for p in (repo / "book").glob("**/*.ipynb"))
        workers = args.notebook_workers or notebook_workers(len(notebooks))
        parallel = ["-n", str(workers)] if workers > 1 else []
        report["steps"]["notebooks"] = _pytest(
            ["--nbmake", f"--nbmake-timeout={args.notebook_timeout}", *parallel, *notebooks],
            timeout=NOTEBOOK_STEP_LIMIT, log=path.with_suffix(".notebooks.log"), cwd=repo)
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
