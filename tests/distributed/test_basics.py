"""Tests of parcourse.chapters.basics: each parallel program equals its serial reference (chapter 2)."""

import pytest
import torch

from parcourse import compare
from parcourse.chapters import basics


@pytest.mark.parametrize("n", [0, 1, 7, 10, 11])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shards_cover_every_index_once_and_differ_by_at_most_one(n, world_size):
    bounds = [basics.shard_bounds(n, rank, world_size) for rank in range(world_size)]
    covered = [i for start, end in bounds for i in range(start, end)]
    assert covered == list(range(n))
    sizes = [end - start for start, end in bounds]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the larger shards come first


def test_shard_bounds_rejects_bad_ranks():
    with pytest.raises(ValueError, match="need 0 ≤ rank < world_size"):
        basics.shard_bounds(10, 2, 2)
    with pytest.raises(ValueError, match="need 0 ≤ rank < world_size"):
        basics.shard_bounds(10, 0, 0)


def test_shard_takes_rows():
    x = torch.arange(10).reshape(5, 2)
    assert torch.equal(basics.shard(x, 0, 2), x[:3])
    assert torch.equal(basics.shard(x, 1, 2), x[3:])


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_parallel_sum_equals_serial_sum(world_size):
    x = torch.randn(1001, generator=torch.Generator().manual_seed(world_size))
    reports = basics.parallel_sum(x, world_size, verbose=False)
    assert [r["rank"] for r in reports] == list(range(world_size))
    assert len({r["pid"] for r in reports}) == world_size  # K separate processes
    expected = basics.serial_sum(x)
    for r in reports:  # every worker holds the same total after the all-reduce
        torch.testing.assert_close(r["total"], expected)
        start, end = r["shard"]
        assert r["partial"] == pytest.approx(x[start:end].sum().item(), rel=1e-5, abs=1e-5)
    assert sum(r["partial"] for r in reports) == pytest.approx(expected.item(), abs=1e-4)


def test_parallel_sum_of_integers_is_exact():
    x = torch.arange(1, 101, dtype=torch.int64)
    reports = basics.parallel_sum(x, 3, verbose=False)
    assert [r["total"].item() for r in reports] == [5050] * 3
    assert [r["shard"] for r in reports] == [(0, 34), (34, 67), (67, 100)]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_parallel_tasks_equal_serial_tasks(world_size):
    # float64: a worker's sums run on fewer threads, in another order, which float64 rounds
    # at 1e-16, so the results agree to compare.FLOAT64_TOLERANCE on any machine
    x = torch.randn(500, generator=torch.Generator().manual_seed(10 + world_size),
                    dtype=torch.float64)
    results, owner = basics.parallel_tasks(x, world_size, verbose=False)
    compare.assert_close(results, basics.serial_tasks(x))
    assert results["histogram"] == basics.histogram(x)
    assert list(results) == list(basics.TASKS)
    for t, name in enumerate(basics.TASKS):
        assert owner[name] == t % world_size


def test_assigned_tasks_partition_the_tasks():
    for world_size in (1, 2, 3, 5):
        assigned = [basics.assigned_tasks(r, world_size) for r in range(world_size)]
        assert sorted(sum(assigned, [])) == sorted(basics.TASKS)


def test_task_results_are_correct():
    x = torch.tensor([4.0, 1.0, 3.0, 2.0, 5.0])
    assert basics.statistics(x) == pytest.approx(
        {"mean": 3.0, "std": x.std().item(), "min": 1.0, "max": 5.0})
    assert basics.histogram(x, bins=4) == [1, 1, 1, 2]
    assert basics.top_values(x) == [5.0, 4.0, 3.0]
    assert basics.quartiles(x) == pytest.approx([2.0, 3.0, 4.0])

