"""parcourse.roofline: the roofline and the Amdahl fit are checked on known numbers; the
measuring functions are checked for their units and structure, never for their timings."""

import numpy as np
import pytest
import torch

from parcourse import perf, roofline


def test_attainable_is_the_lower_of_the_two_roofs():
    peak, bandwidth = 100e9, 10e9  # ridge point at 10 FLOP/byte
    assert roofline.ridge_point(peak, bandwidth) == 10
    assert roofline.attainable(1 / 12, peak, bandwidth) == pytest.approx(10e9 / 12)
    assert roofline.attainable(10, peak, bandwidth) == pytest.approx(100e9)
    assert roofline.attainable(1000, peak, bandwidth) == 100e9
    np.testing.assert_allclose(roofline.attainable([0.5, 5, 50], peak, bandwidth), [5e9, 50e9, 100e9])


@pytest.mark.parametrize("args, message", [
    ((1, 0, 1e9), "peak and bandwidth must be positive"),
    ((-1, 1e9, 1e9), "arithmetic intensity must be ≥ 0"),
])
def test_attainable_rejects_nonsense(args, message):
    with pytest.raises(ValueError, match=message):
        roofline.attainable(*args)


def test_intensity_of_the_book_kernels():
    assert roofline.intensity(1000, 12000) == pytest.approx(1 / 12)  # fp32 vector add
    with pytest.raises(ValueError, match="bytes moved must be positive"):
        roofline.intensity(1, 0)


def test_measure_cpu_reports_positive_figures_in_si_units_and_restores_threads():
    before = torch.get_num_threads()
    cpu = roofline.measure_cpu(quick=True)
    assert torch.get_num_threads() == before
    assert cpu.copy_bandwidth > 1e8 and cpu.triad_bandwidth > 1e8  # bytes/s, not GB/s
    assert cpu.peak_flops > 1e8
    assert cpu.bandwidth == max(cpu.copy_bandwidth, cpu.triad_bandwidth)
    assert cpu.matmul_speedups[1] == 1.0 and set(cpu.matmul_speedups) == set(cpu.add_speedups)
    assert cpu.attainable(1e6) == cpu.peak_flops
