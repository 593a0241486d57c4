"""parcourse.collectives: every all-reduce equals dist.all_reduce, and the cost model."""

import math

import pytest
import torch

from workers import collective_workers as w
from parcourse import collectives, launch


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_every_algorithm_equals_dist_all_reduce(world_size):
    reports = launch.run(w.compare_with_dist, world_size, verbose=False, timeout=300)
    assert len(reports[0]) > 100
    for report in reports:
        for algorithm, shape, dtype, exact, error, same_object in report:
            case = f"{algorithm} {shape} {dtype}"
            assert same_object, case  # in place, like dist.all_reduce
            if exact:  # integer values: every summation order gives the same result
                assert error == 0.0, case
            else:  # a different summation order: rounding error only
                bound = 1e-5 if dtype == "torch.float32" else 1e-12
                assert error <= bound * world_size, case


def test_ring_handles_non_contiguous_tensors():
    results = launch.run(w.non_contiguous, 3, verbose=False)
    expected = 3 * torch.arange(12, dtype=torch.float32).reshape(3, 4) + 3
    for result in results:
        assert torch.equal(result, expected)


def test_unknown_algorithm_is_named():
    with pytest.raises(ValueError, match="unknown all-reduce algorithm 'star': choose one of "
                                         "naive, ring, tree"):
        collectives.all_reduce(torch.zeros(1), "star")


@pytest.mark.parametrize("k", [2, 3, 4, 8])
def test_cost_model_formulas(k):
    alpha, beta, n = 1e-5, 1e-9, 1e6
    assert collectives.predicted_seconds("naive", n, k, alpha, beta) == pytest.approx(
        2 * (k - 1) * (alpha + n * beta))
    assert collectives.predicted_seconds("ring", n, k, alpha, beta) == pytest.approx(
        2 * (k - 1) * alpha + 2 * (k - 1) / k * n * beta)
    assert collectives.predicted_seconds("tree", n, k, alpha, beta) == pytest.approx(
        2 * math.ceil(math.log2(k)) * (alpha + n * beta))
    # for large messages the ring moves the least data per rank
    big = 1e9
    ring = collectives.predicted_seconds("ring", big, k, alpha, beta)
    assert ring < collectives.predicted_seconds("tree", big, k, alpha, beta)
    assert ring < collectives.predicted_seconds("naive", big, k, alpha, beta)


def test_bus_bandwidth():
    assert collectives.bus_bandwidth(1e6, 1e-3, 2) == pytest.approx(1e9)
    assert collectives.bus_bandwidth(1e6, 1e-3, 4) == pytest.approx(1.5e9)


@pytest.mark.parametrize("kind, described", [
    ("size", "rank 0: 10 elements of torch.float32; rank 1: 11 elements of torch.float32"),
    ("dtype", "rank 0: 10 elements of torch.float32; rank 1: 10 elements of torch.float64"),
])
def test_mismatched_tensors_are_detected_on_every_rank_not_deadlocked(kind, described):
    messages = launch.run(w.mismatched, 2, args=(kind,), timeout=60, verbose=False)
    expected = ("all-reduce needs a tensor of the same size and dtype on every rank, but "
                f"got {described}")
    assert messages == [expected, expected]
