"""Tests of parcourse.chapters.errata: the source's formulas against the correct ones (appendix)."""

import pytest
import torch

from parcourse import compare
from parcourse.chapters import errata
from parcourse.models import build_model


def test_seed_ranges_skip_the_first_shard_and_run_past_the_data():
    result = errata.seed_loss(torch.ones(12), K=3, B=4)
    assert result["skipped"] == [0, 1, 2, 3]
    assert result["beyond the data"] == [12, 13, 14, 15]
    assert result["value"] == pytest.approx(8 / (12 * 4))  # 8 existing terms, /N, /B


@pytest.mark.parametrize("n, K", [(12, 3), (10, 3), (7, 2)])
def test_correct_loss_is_the_mean_and_the_double_normalised_one_is_b_times_smaller(n, K):
    losses = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    torch.testing.assert_close(errata.correct_loss(losses, K), losses.mean())
    if n % K == 0:
        torch.testing.assert_close(errata.double_normalised_loss(losses, K) * (n // K),
                                   losses.mean())


def test_split_backward_equals_the_unsplit_model_and_averaging_halves_gradients():
    model = build_model("simple", seed=0)
    x, y = torch.rand(8, 784), torch.randint(10, (8,))
    reference = errata.unsplit_backward(model, x, y)
    split = errata.split_backward(model, x, y, cut=3)
    assert split.keys() == reference.keys()
    for name in reference:
        assert torch.equal(split[name], reference[name])
    averaged = errata.averaged_stage_losses_backward(model, x, y, cut=3)
    for name in reference:
        torch.testing.assert_close(averaged[name] * 2, reference[name])
    # halving is exact in floating point, so the largest relative difference is exactly 1/2
    assert compare.difference(averaged, reference).relative == 0.5


def test_bad_arguments():
    with pytest.raises(ValueError, match="assumes N = K·B"):
        errata.seed_loss(torch.ones(10), K=3, B=4)
    with pytest.raises(ValueError, match="cut must lie between 1 and 5"):
        errata.stages(build_model("simple"), 6)
