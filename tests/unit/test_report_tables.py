"""parcourse.kernels.report_tables: chapter 5's tables of the stored GPU reports, from the
stored H100 report and small synthetic ones."""

import math
from types import SimpleNamespace

import pytest

from parcourse import tables
from parcourse.kernels import attention_costs, bench, devices, report_tables

H100 = next(r for r in devices.stored_reports() if "H100" in r["device"])
CPU = SimpleNamespace(bandwidth=20e9, peak_flops=200e9)


def synthetic(device="NVIDIA H100 80GB HBM3", attention=None):
    """A report with two rows (one vector add, one float16 matmul) and no sweep."""
    rows = [{"kernel": "vector_add", "size": "1024", "dtype": "float32", "intensity": 1 / 12,
             "triton_gbs": 1000.0, "triton_tflops": 1000e9 / 12 / 1e12, "torch_tflops": 0.05},
            {"kernel": "matmul", "size": "64×64×64", "dtype": "float16", "intensity": 20.0,
             "triton_gbs": 10.0, "triton_tflops": 10.0, "torch_tflops": 500.0}]
    return {"device": device, "date": "2030-01-02T03:04:05", "file": "x.json", "compute_capability": "9.0",
            "driver": "1", "cuda": "12", "torch": "2", "triton": "3", "bench": {"rows": rows, "attention": attention}}


def test_labels_and_lookup_of_stored_reports():
    reports = report_tables.with_bench()
    assert H100 in reports
    name = report_tables.label(H100)
    assert name == f"{H100['device']} ({H100['date'][:10]})" and name.endswith("(2026-11-28)")
    assert report_tables.find(name) is H100 or report_tables.find(name)["file"] == H100["file"]
    assert report_tables.find("no such GPU (2000-01-01)") is None
    assert report_tables.with_bench([{"device": "x"}, synthetic()]) == [synthetic()]
    line = report_tables.machine_line(H100)
    assert line.startswith(H100["file"] + ": ") and f"Triton {H100['triton']}" in line


def test_measured_roof_is_the_best_vector_add_and_the_fastest_fp16_torch_matmul():
    roof = report_tables.measured_roof(synthetic())
    assert roof == report_tables.Roof(1000e9, 500e12)
    h100 = report_tables.measured_roof(H100)
    rows = H100["bench"]["rows"]
    assert h100.bandwidth == max(r["triton_gbs"] for r in rows if r["kernel"] == "vector_add") * 1e9
    assert 2e12 < h100.bandwidth < devices.DATASHEETS["H100 SXM"].bandwidth  # below the datasheet
    assert 300e12 < h100.fp16_flops < devices.DATASHEETS["H100 SXM"].fp16_flops


def test_sweep_tflops_reads_one_configuration():
    row = H100["bench"]["sweep"]["matmul"][0]
    assert report_tables.sweep_tflops(H100, row["n"], row["block"]) == row["tflops"]
    assert report_tables.sweep_tflops(H100, 3, 16) is None
    assert report_tables.sweep_tflops(synthetic(), 200, 16) is None  # no sweep
    assert report_tables.sweep_tflops(None, 200, 16) is None


def test_roofline_rows_set_each_row_against_the_measured_roof():
    rows = report_tables.roofline_rows(synthetic())
    assert [r["kernel"] for r in rows] == ["vector_add", "matmul"]
    assert rows[0]["roof_fraction"] == pytest.approx(1.0)  # the best vector add is the roof
    assert rows[1]["roof_fraction"] == pytest.approx(10e12 / (1000e9 * 20))  # memory-bound at I = 20
    h100 = report_tables.roofline_rows(H100)
    assert len(h100) == len(H100["bench"]["rows"]) == 8
    assert all(0 < r["roof_fraction"] <= 1.0 + 1e-9 for r in h100 if r["kernel"] == "vector_add")
    no_sheet = report_tables.roofline_rows(synthetic(device="Some GPU"))  # float32 rows: no FP32 peak
    assert math.isnan(no_sheet[0]["roof_fraction"]) and no_sheet[1]["roof_fraction"] > 0


def test_format_roofline_prints_a_row_per_kernel_and_the_roof():
    lines = report_tables.format_roofline(H100, CPU)
    assert len(lines) == 1 + 8 + 2
    assert lines[0].split("  ")[0] == "kernel" and lines[0].endswith("of roof (measured)")
    cells = report_tables.roofline_cells(H100)
    assert [len(c) for c in cells] == [len(report_tables.ROOFLINE_HEADER)] * 8
    assert lines[1:9] == tables.text(report_tables.ROOFLINE_HEADER, cells).splitlines()[1:]
    rows = report_tables.roofline_rows(H100)
    assert cells[0][:3] == [rows[0]["kernel"], rows[0]["size"], rows[0]["dtype"]]
    assert cells[0][3:] == [tables.significant(rows[0]["intensity"]), tables.significant(rows[0]["tflops"]),
                            f"{rows[0]['roof_fraction']:.0%}"]
    assert lines[-2:] == report_tables.roof_lines(H100, CPU)
    assert "of the datasheet" in lines[-2] and "of the dense datasheet peak" in lines[-2]
    roof = report_tables.measured_roof(H100)
    assert lines[-1] == (f"against this CPU: bandwidth × {roof.bandwidth / 20e9:.0f}; float16 matmul on "
                         f"tensor cores against the CPU's float32 matmul × {roof.fp16_flops / 200e9:.0f}")
    assert "of the datasheet" not in report_tables.format_roofline(synthetic(device="Some GPU"), CPU)[-2]


def test_best_tiles_and_the_tiling_model_of_the_h100_sweep():
    best = report_tables.best_tiles(H100)
    assert [r["n"] for r in best] == list(bench.SWEEP_MATMUL_SIZES)
    for r in best:
        measured = [c["tflops"] for c in H100["bench"]["sweep"]["matmul"] if c["n"] == r["n"] and "tflops" in c]
        assert r["tflops"] == max(measured) and r["block"] in bench.SWEEP_MATMUL_BLOCKS
    model = report_tables.tiling_model(H100)
    assert [r["block"] for r in model] == list(bench.SWEEP_MATMUL_BLOCKS)
    intensities = [r["intensity"] for r in model]
    assert intensities == sorted(intensities)  # larger tiles: more reuse
    sheet = devices.DATASHEETS["H100 SXM"]
    assert all(r["bound"] <= sheet.fp16_flops / 1e12 for r in model)
    assert model[0]["bound"] == pytest.approx(model[0]["intensity"] * sheet.bandwidth / 1e12)
    measured = {r["block"]: r["measured"] for r in model}
    assert measured == {b: report_tables.sweep_tflops(H100, 4096, b) for b in bench.SWEEP_MATMUL_BLOCKS}
    assert measured[128] > model[3]["bound"]  # programs share tiles in L2: better than no reuse
    assert measured[256] < measured[128] / 2  # tile 256 spills


def test_sweep_findings_name_sizes_tiles_and_the_model():
    lines = report_tables.format_sweep_findings(H100)
    assert lines[0].endswith("bit-equal to x + y: True")
    assert lines[1].startswith("  n = 2^28: BLOCK 64") and "of the datasheet's 3.35 TB/s" in lines[1]
    assert lines[2].startswith("  n = 2^16: at most")
    (best_caption, best_header, best), (model_caption, model_header, model) = \
        report_tables.sweep_finding_tables(H100)
    assert best_header == ("n", "best tile", "TFLOPS", "torch.matmul TFLOPS", "best / torch", "tile 256 TFLOPS")
    assert [row[0] for row in best] == [str(n) for n in bench.SWEEP_MATMUL_SIZES]
    fastest = report_tables.best_tiles(H100)[-1]
    assert best[-1] == ["4096", str(fastest["block"]), tables.significant(fastest["tflops"]),
                        tables.significant(fastest["torch_tflops"]),
                        f"{fastest['tflops'] / fastest['torch_tflops']:.2f}×", tables.significant(fastest["tile_256"])]
    assert model_header == ("tile", "I (FLOP/B)", "model ≤ TFLOPS", "measured TFLOPS")
    assert [row[0] for row in model] == [str(b) for b in bench.SWEEP_MATMUL_BLOCKS]
    assert lines[3] == f"{best_caption}:" and lines[4].split()[:3] == ["n", "best", "tile"]
    assert lines[9] == f"{model_caption}:" and lines[-1].split()[0] == "256"
    assert len(lines) == 3 + (1 + 1 + 4) + (1 + 1 + len(bench.SWEEP_MATMUL_BLOCKS))


def test_attention_points_keep_the_matching_non_causal_forward_rows():
    row = {"batch": 4, "heads": 16, "seq_len": 4096, "head_dim": 64, "block_m": 128, "block_n": 64,
           "causal": False, "forward_flops": attention_costs.flops(4, 16, 4096, 64), "forward_tflops": 300.0}
    report = synthetic(attention=[row, {**row, "causal": True}, {**row, "block_m": 64},
                                  {k: v for k, v in row.items() if k != "forward_tflops"}])
    points = report_tables.attention_points(report, 4096, 64, 128, 64)
    traffic = sum(attention_costs.flash_traffic(4, 16, 4096, 64, 2, block_m=128, block_n=64).values())
    assert points == [{"intensity": row["forward_flops"] / traffic, "tflops": 300.0}]
    assert report_tables.attention_points(H100, 4096, 64, 128, 64) == []  # no attention rows stored
