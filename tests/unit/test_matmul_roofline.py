"""parcourse.kernels.matmul_roofline: the curves of chapter 5's tiled-matmul widget."""

from types import SimpleNamespace

import pytest

from parcourse import roofline
from parcourse.kernels import devices, matmul_roofline, report_tables, tiled_matmul

CPU = SimpleNamespace(bandwidth=20e9, peak_flops=200e9)
H100 = next(r for r in devices.stored_reports() if "H100" in r["device"])
H100_LABEL = report_tables.label(H100)


def test_the_widget_offers_the_cpu_two_datasheets_and_each_stored_report():
    choices = matmul_roofline.device_choices()
    assert choices[:3] == ["this CPU", "H100 SXM (datasheet)", "T4 (datasheet)"]
    assert H100_LABEL in choices[3:]
    assert matmul_roofline.device_choices([]) == choices[:3]


def test_roofs_of_each_kind_of_device():
    assert matmul_roofline.roof_of("this CPU", CPU) == matmul_roofline.DeviceRoof(20e9, 200e9, 4)
    h100, t4 = devices.DATASHEETS["H100 SXM"], devices.DATASHEETS["T4"]
    assert matmul_roofline.roof_of("H100 SXM (datasheet)", CPU) == matmul_roofline.DeviceRoof(
        h100.bandwidth, h100.fp16_flops, 2)
    assert matmul_roofline.roof_of("T4 (datasheet)", CPU).peak_flops == t4.fp32_flops  # no tensor cores
    measured = report_tables.measured_roof(H100)
    assert matmul_roofline.roof_of(H100_LABEL, CPU) == matmul_roofline.DeviceRoof(
        measured.bandwidth, measured.fp16_flops, 2)
    with pytest.raises(KeyError, match="no device 'a GPU'"):
        matmul_roofline.roof_of("a GPU", CPU)


def test_intensity_and_padding_of_the_tiled_matmul():
    assert matmul_roofline.matmul_intensity(1024, 64, 2) == pytest.approx(
        tiled_matmul.flops(1024, 1024, 1024) / tiled_matmul.tiled_bytes_moved(1024, 1024, 1024, 2, 64, 64))
    assert matmul_roofline.matmul_intensity(1024, 128, 2) > matmul_roofline.matmul_intensity(1024, 64, 2)
    assert matmul_roofline.useful_fraction(1024, 64) == 1.0
    assert matmul_roofline.useful_fraction(1000, 256) == pytest.approx(1000 ** 2 / 1024 ** 2)


def test_curves_on_the_cpu_have_the_roofline_the_matmul_and_three_kernels():
    curves = matmul_roofline.roofline_curves(1000, 64, "this CPU", CPU)
    assert list(curves) == ["roofline", "matmul n=1000, BLOCK=64", "vector add", "softmax", "layer norm"]
    roof = curves["roofline"]
    assert len(roof.x) == 60 and roof.y[-1] == pytest.approx(200)  # GFLOP/s: the compute roof
    point = curves["matmul n=1000, BLOCK=64"]
    intensity = matmul_roofline.matmul_intensity(1000, 64, 4)
    assert point.mode == "markers" and point.x == [intensity]
    assert point.y[0] == pytest.approx(roofline.attainable(intensity, 200e9, 20e9)
                                       * matmul_roofline.useful_fraction(1000, 64) / 1e9)
    assert curves["vector add"].y[0] == pytest.approx(20 * 1 / 12)  # 1 FLOP per 12 bytes at 20 GB/s


def test_curves_of_a_stored_report_show_the_measured_point_where_the_sweep_ran():
    row = next(r for r in H100["bench"]["sweep"]["matmul"] if (r["n"], r["block"]) == (4096, 128))
    curves = matmul_roofline.roofline_curves(4096, 128, H100_LABEL, CPU)
    measured = curves["measured: Triton matmul, this n and BLOCK"]
    assert measured.y == [row["tflops"] * 1e3]
    assert measured.x == curves["matmul n=4096, BLOCK=128"].x
    assert "measured: Triton matmul, this n and BLOCK" not in matmul_roofline.roofline_curves(
        4096, 128, "H100 SXM (datasheet)", CPU)
