"""python -m parcourse bench kernels (CPU path, end to end), make gpu-check's refusal
on a machine without a GPU, and where gpu_check finds the checkout and writes its report."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from parcourse.kernels import bench, gpu_check

ROOT = Path(__file__).resolve().parents[2]
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


@no_gpu
def test_bench_kernels_on_cpu_prints_the_roofline_the_torch_ops_and_the_interpreter_caveat(tmp_path):
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, "-m", "parcourse", "bench", "kernels", "--quick",
                           "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("# ") and "torch" in lines[0]  # the machine
    assert any(line.startswith("# this CPU's roofline: bandwidth ") for line in lines)
    header = next(i for i, line in enumerate(lines) if line.startswith("kernel "))
    assert lines[header].split() == ["kernel", "size", "dtype", "FLOP/B", "torch", "ms", "GB/s",
                                     "GFLOP/s", "of", "roof"]
    assert [line.split()[0] for line in lines[header + 1:header + 5]] == [
        "vector_add", "softmax", "layer_norm", "matmul"]
    assert lines[-1] == "# " + bench.INTERPRETER_NOTE
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu" and figures["quick"] is True
    for row in figures["rows"]:
        assert row["torch_gbs"] == pytest.approx(row["bytes"] / row["torch_seconds"] / 1e9)
        assert row["torch_tflops"] == pytest.approx(row["flops"] / row["torch_seconds"] / 1e12)
    matmul = next(r for r in figures["rows"] if r["kernel"] == "matmul")
    assert matmul["flops"] == 2 * 128 ** 3


@no_gpu
def test_gpu_check_stops_at_once_without_a_gpu(capsys, tmp_path):
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == gpu_check.NO_GPU
    assert list(tmp_path.iterdir()) == []  # no report


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None or shutil.which("make") is None,
                    reason="needs make and a machine without nvidia-smi")
def test_make_gpu_check_refuses_before_building_anything():
    done = subprocess.run(["make", "--no-print-directory", "gpu-check"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == (
        "make gpu-check: no NVIDIA GPU here (nvidia-smi not found): run it on a machine with an "
        "NVIDIA GPU (Colab, Kaggle, a cloud GPU).")


def test_targets_are_judged_only_on_an_h100():
    rows = [{"kernel": "vector_add", "size": "67108864", "dtype": "float32", "peak_fraction": 0.85},
            {"kernel": "softmax", "size": "4096×4096", "dtype": "float32", "ratio_to_torch": 0.9},
            {"kernel": "matmul", "size": "4096×4096×4096", "dtype": "float16", "ratio_to_torch": 0.75}]
    h100 = bench.evaluate_targets(rows, "NVIDIA H100 80GB HBM3")
    assert [t["met"] for t in h100] == [True, False, True]
    t4 = bench.evaluate_targets(rows, "Tesla T4")
    assert {t["met"] for t in t4} == {None}
    assert {t["why_not_evaluated"] for t in t4} == {"the targets are set for an H100"}


def test_gpu_timing_is_refused_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(RuntimeError, match="triton.testing.do_bench needs a CUDA GPU"):
        bench.gpu_seconds(lambda: None)


def test_report_slug_and_datasheets():
    from parcourse.kernels import devices

    assert gpu_check.slug("NVIDIA H100 80GB HBM3", "2026-11-28T10:00:00+00:00") == \
        "nvidia-h100-80gb-hbm3-2026-11-28"
    assert devices.datasheet_for("NVIDIA H100 80GB HBM3").bandwidth == 3.35e12
    assert devices.datasheet_for("NVIDIA H100 PCIe").bandwidth == 2.0e12
    assert devices.datasheet_for("Tesla T4").compute_capability == (7, 5)
    assert devices.datasheet_for("NVIDIA A100-SXM4-40GB") is None


def test_gpu_check_names_every_test_file_with_gpu_tests():
    gpu_marker = re.compile(r"^(@pytest\.mark\.gpu$|pytestmark = .*\bpytest\.mark\.gpu\b)", re.M)
    marked = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("**/test_*.py")
                    if gpu_marker.search(p.read_text()))
    assert sorted(gpu_check.GPU_TESTS) == marked


def test_gpu_check_finds_this_checkout_and_writes_where_chapter_5_reads(tmp_path, capsys):
    from parcourse.kernels import devices

    assert gpu_check.find_checkout() == ROOT
    folder, note = gpu_check.destination(ROOT)
    assert folder.resolve() == Path(devices.REPORTS).resolve() and note is None
    assert gpu_check.destination(ROOT, tmp_path) == (tmp_path, None)
    assert gpu_check.find_checkout(tmp_path) is None  # no tests/ and _toc.yml
    with pytest.raises(SystemExit):
        gpu_check.main(["--repo", str(tmp_path)])
    assert f"--repo {tmp_path}: not a checkout of the repository" in capsys.readouterr().err


def test_gpu_check_keeps_the_outcomes_of_a_pytest_run_stopped_at_its_limit(tmp_path):
    tests = tmp_path / "test_three.py"
    tests.write_text("import time, pytest\n"
                     "def test_passes(): pass\n"
                     "def test_fails(): assert 1 == 2\n"
                     "@pytest.mark.skip(reason='shown as skipped')\n"
                     "def test_skipped(): pass\n"
                     "def test_zzz_hangs(): time.sleep(60)\n")
    log = tmp_path / "run.log"
    step = gpu_check._pytest([str(tests)], timeout=10, log=log)
    assert step["passed"] is False and step["returncode"] is None
    assert step["output_tail"] == "stopped after 10 s"
    outcomes = {test.split("::")[-1]: outcome for test, outcome in step["cases"].items()}
    assert outcomes == {"test_passes": "passed", "test_fails": "failed", "test_skipped": "skipped"}
    assert "test_zzz_hangs" in log.read_text()  # the whole output, up to where it stopped


def test_gpu_check_reads_outcomes_under_xdist_too():
    output = ("[gw0] [ 50%] PASSED book/a/a.ipynb::a.ipynb\n"
              "[gw1] [100%] FAILED book/b/b.ipynb::b.ipynb\n"
              "FAILED book/b/b.ipynb::b.ipynb - nbmake.pytest_items.NotebookFailedException\n")
    assert gpu_check.outcomes_from_output(output) == {"book/a/a.ipynb::a.ipynb": "passed",
                                                     "book/b/b.ipynb::b.ipynb": "failed"}
