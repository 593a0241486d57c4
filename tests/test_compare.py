"""Tests of parcourse.compare: the one comparison of the package, the notebooks and the tests."""

import math

import pytest
import torch

from parcourse import compare


def test_difference_walks_nested_results_and_names_the_key():
    gap = compare.difference({"a": [1.0, 2.0], "b": 3}, {"a": [1.0, 2.5], "b": 3})
    assert (gap.key, gap.absolute, gap.actual, gap.expected) == ("a[1]", 0.5, 2.0, 2.5)
    assert gap.relative == 0.5 / 2.5
    assert compare.difference([], []) == compare.ZERO
    with pytest.raises(ValueError, match="different keys"):
        compare.difference({"a": 1}, {"b": 1})
    with pytest.raises(ValueError, match="different lengths"):
        compare.difference([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"different shapes at w: \(2,\) and \(3,\)"):
        compare.difference({"w": torch.zeros(2)}, {"w": torch.zeros(3)})


def test_relative_is_the_worst_entrys_difference_over_its_largest_value():
    expected = {"small": torch.tensor([1e-3, -2e-3]), "large": torch.tensor([4.0, -8.0])}
    actual = {"small": expected["small"] * 2, "large": expected["large"] / 2}
    gap = compare.difference(actual, expected)
    assert (gap.key, gap.absolute, gap.relative) == ("large", 4.0, 0.5)
    assert compare.difference(torch.ones(2), torch.zeros(2)).relative == math.inf


def test_assert_close_names_the_key_and_refuses_nan():
    assert compare.assert_close({"w": torch.ones(3)}, {"w": torch.ones(3) + 1e-12}).absolute < 1e-11
    with pytest.raises(AssertionError, match=r"run: largest difference at w: 1\.000e-03"):
        compare.assert_close({"w": torch.tensor([1.001])}, {"w": torch.tensor([1.0])}, what="run")
    with pytest.raises(AssertionError):
        compare.assert_close(torch.tensor([math.nan]), torch.tensor([1.0]))


def test_within_noise_bounds_a_run_by_the_floor_measured_beside_it():
    expected = torch.tensor([1.0, 2.0], dtype=torch.float64)
    floor = expected + torch.tensor([0.0, 1e-6], dtype=torch.float64)
    gap, noise = compare.within_noise(expected + 5e-6, expected, floor)
    assert noise.absolute == pytest.approx(1e-6) and gap.absolute == pytest.approx(5e-6)
    with pytest.raises(AssertionError, match="noise floor"):
        compare.within_noise(expected + 1e-4, expected, floor)
    # a floor of exactly 0 stands for float32's unit roundoff times the largest value
    compare.within_noise(expected + 1e-6, expected, expected)
    with pytest.raises(AssertionError):
        compare.within_noise(expected + 1e-5, expected, expected)
