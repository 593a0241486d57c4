"""Tests of parcourse.chapters.hybrid: a replicas × 2 grid trains exactly like one process (chapter 2)."""

import pytest
import torch

from parcourse import compare
from parcourse.chapters import hybrid


@pytest.mark.parametrize("replicas, batch", [(1, 6), (2, 7)])  # 7: uneven shards
def test_hybrid_grid_equals_the_unsplit_model_on_the_whole_batch(replicas, batch):
    g = torch.Generator().manual_seed(1)  # float64: equal to 1e-10 on any machine
    x, y = (torch.randn(batch, n, generator=g, dtype=torch.float64) for n in (5, 3))
    state, reports = hybrid.hybrid_train(x, y, replicas=replicas, hidden=8, steps=3, lr=0.2,
                                         verbose=False)
    reference, losses = hybrid.reference_train(x, y, hidden=8, steps=3, lr=0.2)
    compare.assert_close(dict(sorted(state.items())), dict(sorted(reference.items())))
    compare.assert_close(hybrid.replica_losses(reports), losses)
    # every replica of a stage holds the same parameters, and stages own disjoint ones
    for r in reports:
        for name, value in r["state"].items():
            assert torch.equal(value, reports[r["stage"]]["state"][name])
    assert not set(reports[0]["state"]) & set(reports[1]["state"])


def test_grid_positions_and_what_crosses_between_stages():
    assert [hybrid.grid_position(r, 4) for r in range(4)] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    x, y = torch.randn(8, 5), torch.randn(8, 3)
    _, reports = hybrid.hybrid_train(x, y, replicas=2, hidden=8, steps=2, verbose=False)
    # each step, a replica's 4 samples × 8 hidden floats go forward and come back
    assert all(r["bytes sent"]["between stages"] == 2 * 4 * 8 * 4 for r in reports)
    # each stage all-reduces its own gradients: 5·8 + 8 floats, then 8·3 + 3
    assert [r["bytes sent"]["all-reduce"] for r in reports] == [2 * 48 * 4, 2 * 27 * 4] * 2


def test_hybrid_rejects_bad_shapes():
    with pytest.raises(ValueError, match="needs an even number of workers"):
        hybrid.grid_position(0, 3)
    with pytest.raises(ValueError, match="a batch of 1 cannot give each of 2 replicas"):
        hybrid.hybrid_train(torch.randn(1, 2), torch.randn(1, 1), replicas=2, verbose=False)
    with pytest.raises(ValueError, match="two stages, 0 and 1"):
        hybrid.stage_of(hybrid.build_mlp(2, 3, 1), 2)
