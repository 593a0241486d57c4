"""Every GPU report stored in parcourse/measurements/gpu/ (package data, written by make
gpu-check on a GPU) is checked here, on CPU: its figures agree with its times, its targets
with its figures, its sweep is complete and was checked against torch, and its
pipeline-memory figures satisfy the assertions of their GPU test
(tests/unit/test_pipeline_memory.py)."""

import pytest

from parcourse.model_parallel import pipeline
from parcourse.kernels import attention_costs, bench, devices, gpu_check, tiled_matmul, vecadd

REPORTS = devices.stored_reports()
CONTEXT = ("device", "compute_capability", "driver", "cuda", "torch", "triton", "python", "date")


def test_the_first_gpu_run_is_stored():
    assert [r["file"] for r in REPORTS if "H100" in r["device"]], "parcourse/measurements/gpu/ holds no H100 report"


@pytest.mark.parametrize("report", REPORTS, ids=lambda r: r["file"])
def test_report_states_its_machine_and_every_step(report):
    assert all(report[key] for key in CONTEXT), {key: report.get(key) for key in CONTEXT}
    assert report["file"] == gpu_check.slug(report["device"], report["date"]) + ".json"
    assert set(report["steps"]) >= {"bench", "gpu tests", "notebooks"}
    for step in report["steps"].values():
        assert isinstance(step["passed"], bool) and step["seconds"] > 0


@pytest.mark.parametrize("report", REPORTS, ids=lambda r: r["file"])
def test_bench_figures_follow_from_the_times_and_targets_from_the_figures(report):
    result = report["bench"]
    sheet = devices.datasheet_for(report["device"])
    for row in result["rows"]:
        assert row["triton_gbs"] == pytest.approx(row["bytes"] / row["triton_seconds"] / 1e9)
        assert row["triton_tflops"] == pytest.approx(row["flops"] / row["triton_seconds"] / 1e12)
        assert row["ratio_to_torch"] == pytest.approx(row["torch_seconds"] / row["triton_seconds"])
        if sheet is not None and row["kernel"] != "matmul":
            assert row["peak_fraction"] == pytest.approx(row["bytes"] / row["triton_seconds"] / sheet.bandwidth)
        assert row["max_abs_error"] <= (0.5 if row["dtype"] == "float16" else 1e-3), row
    assert result["targets"] == bench.evaluate_targets(result["rows"], report["device"])


@pytest.mark.parametrize("report", [r for r in REPORTS if r["bench"].get("sweep")], ids=lambda r: r["file"])
def test_sweep_is_complete_and_every_configuration_was_right(report):
    sweep = report["bench"]["sweep"]
    add = sweep["vector_add"]
    sizes, blocks = {r["n"] for r in add}, {r["block"] for r in add}
    assert len(add) == len(sizes) * len(blocks)
    for r in add:
        assert r["exact"], r
        assert r["gbs"] == pytest.approx(vecadd.bytes_moved(r["n"], 4) / r["seconds"] / 1e9)
    for r in sweep["matmul"]:
        if "error" in r:
            continue  # a configuration the GPU could not run, recorded with its message
        assert r["tflops"] == pytest.approx(tiled_matmul.flops(r["n"], r["n"], r["n"]) / r["seconds"] / 1e12)
        assert r["max_abs_error"] <= 2 ** -2, r  # float16 results of size up to ~100: a few ulps
    assert {r["n"] for r in sweep["torch_matmul"]} == {r["n"] for r in sweep["matmul"]}


@pytest.mark.parametrize("report", [r for r in REPORTS if r["bench"].get("attention")], ids=lambda r: r["file"])
def test_attention_rows_follow_from_their_times_and_agree_with_sdpa(report):
    rows = report["bench"]["attention"]
    for r in rows:
        if "error" in r:
            continue  # a tile the GPU could not run, recorded with its message
        size = (r["batch"], r["heads"], r["seq_len"], r["head_dim"])
        assert r["forward_flops"] == attention_costs.flops(*size, causal=r["causal"])
        assert r["backward_flops"] == attention_costs.flops(*size, causal=r["causal"], backward=True)
        for step in ("forward", "backward"):
            assert r[f"{step}_tflops"] == pytest.approx(r[f"{step}_flops"] / r[f"{step}_seconds"] / 1e12)
        # float16 outputs are averages of values below ~5 (a float16 ulp there: 2⁻⁸), a few ulps
        assert r["max_abs_error"] <= 2 ** -5 and r["dq_max_abs_error"] <= 2 ** -3, r
    assert any(r["block_m"] is None for r in rows) and any(r["block_m"] for r in rows)


@pytest.mark.parametrize("report", [r for r in REPORTS if r.get("pipeline_memory")], ids=lambda r: r["file"])
def test_pipeline_memory_figures_satisfy_their_gpu_test(report):
    rows = report["pipeline_memory"]
    stages = len({r["stage"] for r in rows})
    microbatches = next(r["in_flight"] for r in rows if r["schedule"] == "gpipe" and r["stage"] == 0)
    for r in rows:
        actions = pipeline.schedule(r["schedule"], r["stage"], stages, microbatches)
        assert r["in_flight"] == pipeline.peak_in_flight(actions)
        assert r["predicted_bytes"] == r["in_flight"] * r["microbatch_bytes"]
        assert r["peak_bytes"] >= 0.9 * r["predicted_bytes"], r
    first = {r["schedule"]: r for r in rows if r["stage"] == 0}
    assert first["1f1b"]["peak_bytes"] < first["gpipe"]["peak_bytes"]


@pytest.mark.parametrize("outcome, summary", [
    ({"passed": True, "seconds": 1.0}, "passed"),
    ({"passed": True, "seconds": 1.0, "cases": {"a.py::t1": "passed", "a.py::t2": "skipped"}},
     "passed (1 of 2 passed)"),
    ({"passed": False, "seconds": 1.0, "error": "RuntimeError: no GPU"}, "FAILED: RuntimeError: no GPU"),
    ({"passed": False, "seconds": 9.0, "cases": {"::tests.test_widgets": "error"},
      "output_tail": "____ ERROR collecting tests/test_widgets.py ____\n"
                     "E   ModuleNotFoundError: No module named 'sphinx.errors'\n1 error in 8.24s"},
     "FAILED: ERROR collecting tests/test_widgets.py; ModuleNotFoundError: No module named 'sphinx.errors'"),
    ({"passed": False, "seconds": 300.0, "cases": {"b.ipynb::b.ipynb": "passed"},
      "output_tail": "stopped after 300 s"}, "FAILED (1 of 1 passed): stopped after 300 s"),
])
def test_step_summary_says_what_happened(outcome, summary):
    assert devices.step_summary(outcome) == summary
