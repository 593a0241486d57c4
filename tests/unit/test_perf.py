"""Tests of parcourse.perf: timers, thread scaling, Amdahl and Gustafson (chapters 1, 2)."""

import itertools
import time

import numpy as np
import pytest
import torch

from parcourse import perf


def test_measure_returns_the_median_of_the_timed_calls():
    durations = iter([0.2, 0.002, 0.06, 0.004])  # the first call is the untimed warm-up
    median = perf.measure(lambda: time.sleep(next(durations)), repeats=3, warmup=1)
    # median 0.004 s (plus sleep overhead); the mean would be 0.022, with the warm-up 0.067
    assert 0.004 <= median < 0.02


def test_measure_runs_warmup_plus_repeats_calls():
    calls = itertools.count()
    perf.measure(lambda: next(calls), repeats=4, warmup=2)
    assert next(calls) == 6


@pytest.mark.parametrize("kwargs, message", [
    ({"repeats": 0}, "repeats must be an integer ≥ 1"),
    ({"repeats": 2.5}, "repeats must be an integer ≥ 1"),
    ({"warmup": -1}, "warmup must be an integer ≥ 0"),
])
def test_measure_rejects_bad_counts(kwargs, message):
    with pytest.raises(ValueError, match=message):
        perf.measure(lambda: None, **kwargs)


def test_measure_rejects_a_non_callable():
    with pytest.raises(ValueError, match="fn must be callable"):
        perf.measure(42)


def test_thread_scaling_sets_each_count_and_restores_the_callers():
    before = torch.get_num_threads()
    seen = []
    times = perf.thread_scaling(lambda: seen.append(torch.get_num_threads()), [1, 2],
                                repeats=2, warmup=0)
    assert list(times) == [1, 2] and all(t >= 0 for t in times.values())
    assert seen == [1, 1, 2, 2]
    assert torch.get_num_threads() == before


def test_thread_scaling_restores_threads_when_fn_raises():
    before = torch.get_num_threads()

    def boom():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        perf.thread_scaling(boom, [1])
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("threads_list, message", [
    ([], "threads_list is empty"),
    ([0], "thread counts must be integers ≥ 1"),
    ([1, "2"], "thread counts must be integers ≥ 1"),
])
def test_thread_scaling_rejects_bad_lists(threads_list, message):
    with pytest.raises(ValueError, match=message):
        perf.thread_scaling(lambda: None, threads_list)


def test_thread_counts_are_powers_of_two_then_all_cores():
    assert perf.thread_counts(1) == [1]
    assert perf.thread_counts(2) == [1, 2]
    assert perf.thread_counts(6) == [1, 2, 4, 6]
    assert perf.thread_counts(8) == [1, 2, 4, 8]
    with pytest.raises(ValueError, match="cores must be an integer ≥ 1"):
        perf.thread_counts(0)


def test_amdahl_known_values_and_limit():
    assert perf.amdahl_speedup(0.0, 16) == pytest.approx(1.0)
    assert perf.amdahl_speedup(1.0, 16) == pytest.approx(16.0)
    assert perf.amdahl_speedup(0.5, 2) == pytest.approx(1 / 0.75)
    assert perf.amdahl_speedup(0.9, 1) == pytest.approx(1.0)
    # the ceiling 1 / (1 - p)
    assert perf.amdahl_speedup(0.95, 10**9) == pytest.approx(20.0, rel=1e-6)


def test_gustafson_known_values():
    assert perf.gustafson_speedup(0.9, 1) == pytest.approx(1.0)
    assert perf.gustafson_speedup(0.9, 10) == pytest.approx(0.1 + 9.0)
    assert perf.gustafson_speedup(1.0, 7) == pytest.approx(7.0)


def test_laws_broadcast_over_arrays():
    k = np.array([1, 2, 4, 8])
    assert perf.amdahl_speedup(0.5, k) == pytest.approx(1 / (0.5 + 0.5 / k))
    assert perf.gustafson_speedup(np.array([0.0, 1.0]), 4) == pytest.approx([1.0, 4.0])
    assert np.all(perf.gustafson_speedup(0.7, k) >= perf.amdahl_speedup(0.7, k))


@pytest.mark.parametrize("law", [perf.amdahl_speedup, perf.gustafson_speedup])
def test_laws_reject_bad_arguments(law):
    with pytest.raises(ValueError, match="parallel fraction p must lie in"):
        law(1.5, 4)
    with pytest.raises(ValueError, match="number of workers K must be ≥ 1"):
        law(0.5, 0)


@pytest.mark.parametrize("p, k", [(0.0, 2), (0.6, 2), (0.9, 8), (1.0, 4)])
def test_amdahl_fraction_inverts_amdahl(p, k):
    assert perf.amdahl_fraction(perf.amdahl_speedup(p, k), k) == pytest.approx(p)


def test_amdahl_fraction_rejects_bad_arguments():
    with pytest.raises(ValueError, match="more than one worker"):
        perf.amdahl_fraction(1.5, 1)
    with pytest.raises(ValueError, match="speedup must be positive"):
        perf.amdahl_fraction(0.0, 2)


@pytest.mark.parametrize("p", [0.0, 0.5, 0.9, 1.0])
def test_fit_amdahl_recovers_the_fraction_of_an_exact_curve(p):
    curve = {k: perf.amdahl_speedup(p, k) for k in (1, 2, 4, 8, 16)}
    assert perf.fit_amdahl(curve) == pytest.approx(p, abs=1e-12)


def test_fit_amdahl_with_one_point_is_amdahl_fraction_and_fits_noisy_curves_in_between():
    assert perf.fit_amdahl({1: 1.0, 4: 3.0}) == pytest.approx(perf.amdahl_fraction(3.0, 4))
    noisy = {2: perf.amdahl_speedup(0.8, 2) * 1.02, 4: perf.amdahl_speedup(0.8, 4) * 0.98}
    assert perf.fit_amdahl(noisy) == pytest.approx(0.8, abs=0.03)
    assert perf.fit_amdahl(noisy) != pytest.approx(0.8, abs=1e-6)


def test_fit_amdahl_needs_more_than_one_worker():
    with pytest.raises(ValueError, match="needs a speedup measured on more than one worker"):
        perf.fit_amdahl({1: 1.0})
    with pytest.raises(ValueError, match="speedups positive"):
        perf.fit_amdahl({2: 0.0})
