"""parcourse.collectives: every all-reduce equals dist.all_reduce, the reduce-scatter and
all-gather behave like dist's (tests/distributed/test_properties.py checks their sums),
and the cost model."""

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


def test_ring_all_reduce_is_reduce_scatter_then_all_gather():
    for equal in launch.run(w.all_reduce_is_scatter_then_gather, 3, verbose=False):
        assert equal == [True, True, True]  # bit for bit: one code path, one order


def test_reduce_scatter_and_all_gather_errors_and_layouts():
    reports = launch.run(w.shard_errors, 3, verbose=False)
    for rank, report in enumerate(reports):
        assert report["messages"] == [
            "reduce_scatter_tensor needs input = K × output elements: got input 10, "
            "output 3, K = 3",
            "all_gather_into_tensor needs output = K × input elements: got output 10, "
            "input 3, K = 3",
            "reduce_scatter_tensor needs input and output of one dtype: got input "
            "torch.float64, output torch.float32",
            f"gather_shards: rank {rank}'s shard of a 10-element tensor on K = 3 has "
            f"{(4, 4, 2)[rank]} elements (padded: 4), got 5"]
        assert report["in place"] and report["strided"]
        assert report["gathered"] == [[float(r)] * 6 for r in range(3)]  # row-major chunks
        assert all(report["segmented"]) and len(report["segmented"]) == 21


def test_segments_with_two_ranks_taking_turns():
    """K = 2 (rank 1 answers rank 0, see parcourse.ring) with messages in segments; the
    K = 3 case runs in the test above."""
    for equal in launch.run(w.segmented, 2, verbose=False):
        assert all(equal) and len(equal) == 21


@pytest.mark.parametrize("function, collective", [
    (collectives.reduce_scatter_tensor, "reduce-scatter"),
    (collectives.all_gather_into_tensor, "all-gather")])
def test_unknown_shard_algorithm_is_named(function, collective):
    with pytest.raises(ValueError, match=f"unknown {collective} algorithm 'star': choose one "
                                         f"of ring, naive, native$"):
        function(torch.zeros(1), torch.zeros(2), "star")


def test_padded_numel():
    assert [collectives.padded_numel(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [0, 4, 4, 8, 8, 12]
    assert collectives.padded_numel(7, 1) == 7
    with pytest.raises(ValueError, match="padded_numel needs numel ≥ 0 and world_size ≥ 1: "
                                         "got 5 and 0"):
        collectives.padded_numel(5, 0)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 8])
def test_cost_of_reduce_scatter_and_all_gather(k):
    alpha, beta, n = 1e-5, 1e-9, 1e6
    for collective in ("reduce_scatter", "all_gather"):
        ring = collectives.predicted_seconds("ring", n, k, alpha, beta, collective)
        naive = collectives.predicted_seconds("naive", n, k, alpha, beta, collective)
        assert ring == pytest.approx((k - 1) * alpha + (k - 1) / k * n * beta)
        assert naive == pytest.approx(2 * (k - 1) * alpha + (k - 1) * (k + 1) / k * n * beta)
        assert ring <= naive
    # the ring all-reduce is its reduce-scatter followed by its all-gather, term by term
    assert collectives.predicted_seconds("ring", n, k, alpha, beta) == pytest.approx(
        sum(collectives.predicted_seconds("ring", n, k, alpha, beta, c)
            for c in ("reduce_scatter", "all_gather")))
    assert collectives.bus_bandwidth(n, 1e-3, k, "all_gather") == pytest.approx(
        n / 1e-3 * (k - 1) / k)


def test_cost_model_names_what_it_does_not_know():
    with pytest.raises(ValueError, match="unknown reduce-scatter algorithm 'tree': choose "
                                         "one of ring, naive$"):
        collectives.predicted_seconds("tree", 1e6, 4, 1e-5, 1e-9, "reduce_scatter")
    with pytest.raises(ValueError, match="unknown collective 'broadcast': choose one of "
                                         "all_reduce, reduce_scatter, all_gather$"):
        collectives.predicted_seconds("ring", 1e6, 4, 1e-5, 1e-9, "broadcast")
