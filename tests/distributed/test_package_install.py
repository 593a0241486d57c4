"""A non-editable ``pip install`` of the repository (the Colab path), imported outside the
repository, renders chapter 5's stored GPU report and compiled survey: they are package
data (parcourse/measurements/), read with importlib.resources. It also finds no checkout,
so ``gpu_check`` says it will not run the repository's tests and notebooks."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from parcourse.model_parallel import activation_memory as pipeline_memory
from parcourse.kernels import bench, bench_report, compiled, devices

ROOT = Path(__file__).resolve().parents[2]
BUILT_FROM = ("pyproject.toml", "README.md", "requirements.txt", "requirements-dev.txt")

# What the chapter does with what is stored (book/05_practice/gpu_kernels.ipynb and
# model_parallel.ipynb), printed as JSON by a Python that imports the installed package.
RENDER = """
import importlib, json, pkgutil, parcourse
from parcourse.model_parallel import activation_memory as pipeline_memory
from parcourse.kernels import bench, bench_report, compiled, devices, gpu_check
reports = [r for r in devices.stored_reports() if "bench" in r]
print(json.dumps({
    "package": parcourse.__file__, "reports": str(devices.REPORTS), "surveys": str(compiled.SURVEYS),
    "rendered": [{"file": r["file"], "device": r["device"], "table": bench_report.format_report(r["bench"]),
                  "steps": [devices.step_summary(o) for o in r["steps"].values()],
                  "pipeline memory": pipeline_memory.format_rows(r["pipeline_memory"])}
                 for r in reports],
    "compiled": [{"file": s["file"], "toolchain": s["toolchain"],
                  "table": compiled.format_rows(list(s["rows"].items()))}
                 for s in compiled.stored_surveys()],
    "checkout": gpu_check.find_checkout() and str(gpu_check.find_checkout()),
    "gpu_check says": gpu_check.destination(None)[1],
    "subpackages": {name: importlib.import_module(name).__file__ for _, name, is_package
                    in pkgutil.walk_packages(parcourse.__path__, "parcourse.") if is_package},
}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The repository's package, built from a copy of its files (so that the build leaves
    nothing in the checkout) and installed with pip, not editable, into a folder."""
    tmp = tmp_path_factory.mktemp("install")
    source, target = tmp / "source", tmp / "site"
    shutil.copytree(ROOT / "parcourse", source / "parcourse",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in BUILT_FROM:
        shutil.copy(ROOT / name, source / name)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                           "--no-index", "--quiet", "--target", str(target), str(source)],
                          capture_output=True, text=True, timeout=300, cwd=tmp)
    assert done.returncode == 0, done.stdout + done.stderr
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}  # only the installed copy, not the checkout
    done = subprocess.run([sys.executable, "-c", RENDER], capture_output=True, text=True,
                          timeout=300, cwd=elsewhere, env=env)
    assert done.returncode == 0, done.stderr
    return target, json.loads(done.stdout.strip().splitlines()[-1])


def test_the_installed_package_is_imported_not_the_checkout(installed):
    target, seen = installed
    for key in ("package", "reports", "surveys"):
        assert Path(seen[key]).is_relative_to(target), (key, seen[key])
        assert not Path(seen[key]).is_relative_to(ROOT), (key, seen[key])


def test_every_subpackage_of_the_checkout_is_installed(installed):
    """A notebook on Colab imports parcourse.training, .bench, .planner…: each must come
    from the installed copy (an editable install elsewhere on the path must not hide a
    subpackage that the build left out)."""
    target, seen = installed
    checkout = sorted("parcourse." + ".".join(p.parent.relative_to(ROOT / "parcourse").parts)
                      for p in (ROOT / "parcourse").rglob("__init__.py")
                      if p.parent != ROOT / "parcourse" and "__pycache__" not in p.parts)
    assert sorted(seen["subpackages"]) == checkout
    for name, file in seen["subpackages"].items():
        assert Path(file).is_relative_to(target), (name, file)


def test_the_installed_package_renders_the_stored_h100_report(installed):
    _, seen = installed
    assert seen["rendered"], "the installed package holds no GPU report (package data)"
    (h100,) = [r for r in seen["rendered"] if "H100" in r["device"]]
    assert h100["file"] == "nvidia-h100-80gb-hbm3-2026-11-28.json"
    assert h100["device"] == "NVIDIA H100 80GB HBM3"
    lines = h100["table"].splitlines()
    assert lines[1].startswith("# NVIDIA H100 80GB HBM3 (compute capability 9.0)")
    rows = [line.split() for line in lines[3:] if not line.startswith(("#", "target: "))]
    assert {row[0] for row in rows} == {"vector_add", "softmax", "layer_norm", "matmul"}
    add = next(row for row in rows if row[:2] == ["vector_add", "67108864"])
    assert add[-4:] == ["2979.6", "0.25", "89%", "1.00×"]  # GB/s, TFLOPS, of peak, vs torch
    assert [line.rsplit(", ", 1)[1] for line in lines if line.startswith("target: ")] == ["met"] * 3
    assert h100["steps"][0] == "passed" and len(h100["steps"]) == 4
    # the same figures as the checkout renders from the same report, to the last digit
    (stored,) = [r for r in devices.stored_reports() if r["file"] == h100["file"]]
    assert h100["table"] == bench_report.format_report(stored["bench"])
    assert h100["pipeline memory"] == pipeline_memory.format_rows(stored["pipeline_memory"])
    assert h100["steps"] == [devices.step_summary(o) for o in stored["steps"].values()]


def test_the_installed_package_renders_the_stored_compiled_survey(installed):
    _, seen = installed
    assert seen["compiled"], "the installed package holds no compiled survey (package data)"
    (survey,) = seen["compiled"]
    assert survey["file"] == "triton-3.6.0.json"
    assert survey["toolchain"].startswith("Triton 3.6.0 (ptxas ")
    (stored,) = compiled.stored_surveys()
    assert survey["table"] == compiled.format_rows(list(stored["rows"].items()))
    assert len(survey["table"]) == 1 + len(compiled.survey_jobs())


def test_installed_without_a_checkout_gpu_check_says_what_it_will_not_run(installed):
    target, seen = installed
    assert seen["checkout"] is None
    note = seen["gpu_check says"]
    assert "\n" not in note and f"imported from {target}" in note
    assert "the GPU tests and the notebooks do not run" in note and "--repo DIR" in note
