"""parcourse.kernels.report_figures: chapter 5's figures of the stored GPU reports, read
back from their axes (the stored H100 report, small synthetic inputs)."""

import matplotlib
import pytest

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402

from parcourse.kernels import attention_costs, bench, devices, report_figures, report_tables  # noqa: E402

H100 = next(r for r in devices.stored_reports() if "H100" in r["device"])
SOME_GPU = {"device": "Some GPU", "date": "2030-01-02", "bench": {"rows": [
    {"kernel": "vector_add", "size": "1024", "dtype": "float32", "intensity": 1 / 12, "triton_gbs": 1000.0,
     "triton_tflops": 1000e9 / 12 / 1e12, "torch_tflops": 0.05},
    {"kernel": "matmul", "size": "64×64×64", "dtype": "float16", "intensity": 20.0, "triton_gbs": 10.0,
     "triton_tflops": 10.0, "torch_tflops": 500.0}]}}


def test_sweep_figure_draws_every_block_and_size():
    fig = report_figures.sweep_figure(H100)
    assert isinstance(fig, Figure)
    left, right = fig.axes
    sweep = H100["bench"]["sweep"]
    assert len(left.lines) == len(bench.SWEEP_ADD_BLOCKS) + 1  # one per BLOCK, the datasheet
    first = left.lines[0]
    assert list(first.get_xdata()) == [r["n"] for r in sweep["vector_add"] if r["block"] == 64]
    assert left.lines[-1].get_ydata()[0] == pytest.approx(3350)
    assert len(right.lines) == 2 * len(bench.SWEEP_MATMUL_SIZES)  # measured and torch.matmul per size
    assert [t.get_text() for t in right.get_legend().get_texts()] == [f"n = {n}" for n in bench.SWEEP_MATMUL_SIZES]
    assert left.get_xscale() == right.get_yscale() == "log"
    assert fig._suptitle.get_text() == f"{H100['device']}, 2026-11-28"


def test_roofline_figure_draws_the_roofs_and_one_point_per_row():
    fig = report_figures.roofline_figure(H100)
    (ax,) = fig.axes
    points = [line for line in ax.lines if len(line.get_xdata()) == 1]
    assert len(points) == len(H100["bench"]["rows"])
    assert [p.get_ydata()[0] for p in points] == [r["triton_tflops"] for r in H100["bench"]["rows"]]
    roofs = [line for line in ax.lines if len(line.get_xdata()) == 200]
    assert [line.get_label() for line in roofs] == ["datasheet roof, fp16 tensor cores", "datasheet roof, fp32",
                                                    "measured roof: best vector add, torch.matmul fp16"]
    roof = report_tables.measured_roof(H100)
    assert roofs[2].get_ydata()[-1] == pytest.approx(roof.fp16_flops / 1e12)
    assert len(report_figures.roofline_figure(SOME_GPU).axes[0].lines) == 1 + 2


def test_attention_roofline_figure_puts_each_point_at_its_bound():
    sheet = devices.DATASHEETS["H100 SXM"]
    points = attention_costs.roofline_points(4096, 64, block_m=128, block_n=64,
                                             peak_flops=sheet.fp16_flops, bandwidth=sheet.bandwidth)
    fig = report_figures.attention_roofline_figure(points, sheet, [("GPU X", [{"intensity": 100.0, "tflops": 300.0}])])
    (ax,) = fig.axes
    assert ax.lines[0].get_label() == "H100 SXM datasheet: fp16 tensor cores, HBM3"
    assert [line.get_label() for line in ax.lines[1:]] == [p["name"] for p in points] + ["measured, GPU X"]
    for line, p in zip(ax.lines[1:], points):
        assert line.get_xdata()[0] == p["intensity"] and line.get_ydata()[0] == p["bound"] / 1e12
    assert ax.lines[-1].get_marker() == "*"
