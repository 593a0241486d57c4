"""parcourse.chapters.scaling: the MLP family, the data-parallel cost model, and the measured map."""

import math

import numpy as np
import pytest
import torch

from parcourse import collectives
from parcourse.chapters import scaling
from parcourse.models import build_model, count_parameters


@pytest.mark.parametrize("hidden", [1, 8, 64, 300])
def test_mlp_shapes_and_parameter_count(hidden):
    model = scaling.mlp(hidden)
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    assert model(torch.zeros(3, 784)).shape == (3, 10)
    assert count_parameters(model) == scaling.parameter_count(hidden)
    assert scaling.parameter_count(hidden) == hidden ** 2 + 796 * hidden + 10


def test_mlp_64_is_the_source_documents_simple_model():
    ours, simple = scaling.mlp(64).state_dict(), build_model("simple").state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in simple.items()}


@pytest.mark.parametrize("hidden", [0, -3, 2.5, True])
def test_mlp_rejects_invalid_widths(hidden):
    with pytest.raises(ValueError, match="hidden must be a positive integer"):
        scaling.mlp(hidden)


def test_predicted_step_seconds_on_known_numbers():
    c, b, p, k, alpha, beta = 1e-10, 100, 1000, 2, 1e-5, 1e-9
    assert scaling.predicted_step_seconds(b, p, c) == pytest.approx(1e-5)  # c·B·P
    # c·B·P/K + ring(4P bytes, K=2) = 5e-6 + (2α + 4000·β) = 5e-6 + 2e-5 + 4e-6
    assert scaling.predicted_step_seconds(b, p, c, k, alpha, beta) == pytest.approx(2.9e-5)
    assert scaling.allreduce_seconds(p, 4, alpha, beta) == pytest.approx(
        collectives.predicted_seconds("ring", 4 * p, 4, alpha, beta))
    assert scaling.predicted_speedup(b, p, c, k, alpha, beta) == pytest.approx(1e-5 / 2.9e-5)
    # a slower worker (c_K = 3c) computes its half of the batch in 1.5e-5 s
    assert scaling.predicted_speedup(b, p, c, k, alpha, beta, c_worker=3 * c) == pytest.approx(
        1e-5 / (1.5e-5 + 2.4e-5))


def test_free_communication_gives_the_ideal_speedup():
    for k in (2, 4, 8):
        assert scaling.predicted_speedup(512, 1e5, 1e-10, k, 0.0, 0.0) == pytest.approx(k)


def test_predicted_speedup_grows_with_batch_and_parameters():
    batches, params = np.geomspace(1, 1e5, 40), np.geomspace(1e3, 1e8, 40)
    for c_worker in (None, 1.5e-11):  # one device per worker; workers sharing a machine
        grid = scaling.predicted_speedup(batches[:, None], params[None, :], 1e-11, 2, 5e-5,
                                         3e-10, c_worker=c_worker)
        assert grid.shape == (40, 40)
        assert np.all(np.diff(grid, axis=0) > 0)  # larger batch: more compute to share
        assert np.all(np.diff(grid, axis=1) > 0)  # larger model: latency matters less
        assert np.all(grid < 2)


def test_break_even_batch_is_where_the_speedup_is_one():
    c, k, alpha, beta = 3e-11, 2, 5e-5, 3e-10
    params = np.array([5e4, 3e5, 2e6])
    batch = scaling.break_even_batch(params, c, k, alpha, beta)
    speedup = scaling.predicted_speedup(batch, params, c, k, alpha, beta)
    np.testing.assert_allclose(speedup, 1.0, rtol=1e-12)
    assert np.all(np.diff(batch) < 0)
    # very large models: B* → 8β/c whatever K is
    for workers in (2, 8):
        assert scaling.break_even_batch(1e15, c, workers, alpha, beta) == pytest.approx(
            8 * beta / c, rel=1e-6)


@pytest.mark.parametrize("k", [2, 3, 8])
def test_break_even_batch_closed_form_with_one_device_per_worker(k):
    c, alpha, beta, p = 3e-11, 6e-5, 2e-10, 1e5
    assert scaling.break_even_batch(p, c, k, alpha, beta) == pytest.approx(
        2 * k * alpha / (c * p) + 8 * beta / c)


def test_no_break_even_when_workers_compute_no_faster_together():
    # two workers with half the cores each: c_K = 2·c_1 saves no compute at all
    assert math.isinf(scaling.break_even_batch(1e6, 1e-11, 2, 5e-5, 3e-10, c_worker=2e-11))
    assert scaling.predicted_speedup(1e6, 1e6, 1e-11, 2, 5e-5, 3e-10, c_worker=2e-11) < 1


def test_fitted_constant_reproduces_its_inputs():
    c = 4.2e-11
    times = {(h, b): c * b * scaling.parameter_count(h) for h in (16, 64, 256)
             for b in (8, 64, 512)}
    assert scaling.fit_compute_constant(times) == pytest.approx(c, rel=1e-12)
    halves = {key: t / 2 for key, t in times.items()}  # each of 2 workers does half
    assert scaling.fit_compute_constant(halves, per_worker=2) == pytest.approx(c, rel=1e-12)


def test_fit_weights_relative_errors():
    # a small point 10 % high and a large one 10 % low: plain least squares follows the
    # large point (≈ 0.9c); relative errors weigh both alike and land near c
    c = 1e-10
    x = {(16, 8): 8 * scaling.parameter_count(16), (256, 512): 512 * scaling.parameter_count(256)}
    times = {(16, 8): 1.1 * c * x[16, 8], (256, 512): 0.9 * c * x[256, 512]}
    plain = sum(x[k] * times[k] for k in x) / sum(x[k] ** 2 for k in x)
    fitted = scaling.fit_compute_constant(times)
    assert fitted == pytest.approx(c, rel=0.03)
    assert abs(fitted - c) < abs(plain - c)


def test_single_process_step_time_is_positive_and_has_no_separate_compute():
    threads = torch.get_num_threads()
    times = scaling.step_time_worker(0, 1, hidden=16, batch_size=32, steps=3, warmup=1,
                                     budget=0.0, device=torch.device("cpu"))
    assert times["step"] > 0 and times["compute"] == times["step"]
    assert torch.get_num_threads() == threads


def test_reference_times_use_each_thread_count_and_restore_the_callers():
    threads = torch.get_num_threads()
    times = scaling.reference_times(16, 32, threads=(1, 2), steps=2, warmup=1, budget=0.0,
                                    device=torch.device("cpu"))
    assert len(times) == 2 and all(t > 0 for t in times)
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("workers", [1, 0, 2.0])
def test_speedup_map_needs_at_least_two_workers(workers):
    with pytest.raises(ValueError, match="workers must be an integer ≥ 2"):
        scaling.measure_speedup_map(workers=workers)


@pytest.mark.distributed
def test_speedup_map_end_to_end():
    threads = torch.get_num_threads()
    result = scaling.measure_speedup_map(hiddens=(8, 32), batches=(4, 16), workers=2, steps=1,
                                         warmup=1, budget=0.0, timeout=120)
    assert torch.get_num_threads() == threads  # the caller's setting is restored
    keys = {(h, b) for h in (8, 32) for b in (4, 16)}
    for times in (result.machine, result.worker, result.parallel, result.compute):
        assert set(times) == keys
        assert all(t > 0 and math.isfinite(t) for t in times.values())
    for baseline in ("machine", "worker"):
        speedup = result.speedup(baseline)
        assert speedup.shape == (2, 2) and np.all(speedup > 0)
    assert result.speedup()[1, 0] == pytest.approx(
        result.machine[8, 16] / result.parallel[8, 16])  # rows are batches, columns widths
    assert result.seconds > 0
