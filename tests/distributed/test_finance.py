"""Monte Carlo option pricing (chapter 6): closed form, estimator, and the parallel run."""

import math

import pytest
import torch

from parcourse import launch
from parcourse.chapters import finance


@pytest.mark.parametrize("S0, K, r, sigma, T, expected, digits", [
    (100.0, 100.0, 0.05, 0.2, 1.0, 10.4506, 4),  # the textbook at-the-money case
    (42.0, 40.0, 0.10, 0.2, 0.5, 4.76, 2),       # Hull, Options, Futures and Other Derivatives
])
def test_black_scholes_known_values(S0, K, r, sigma, T, expected, digits):
    assert round(finance.black_scholes_call(S0, K, r, sigma, T), digits) == expected


def test_black_scholes_limits():
    # Deep in the money the call is worth the stock minus the discounted strike.
    assert finance.black_scholes_call(1000.0, 1.0, 0.05, 0.2, 1.0) == pytest.approx(
        1000.0 - math.exp(-0.05), rel=1e-12)
    with pytest.raises(ValueError):
        finance.black_scholes_call(100.0, 100.0, 0.05, 0.0, 1.0)


@pytest.mark.parametrize("S0, K", [(100.0, 100.0), (100.0, 120.0), (100.0, 80.0)])
def test_monte_carlo_within_three_standard_errors(S0, K):
    price, stderr = finance.monte_carlo_call(200_000, seed=1, S0=S0, K=K)
    exact = finance.black_scholes_call(S0, K, 0.05, 0.2, 1.0)
    assert 0 < stderr < 0.1
    assert abs(price - exact) < 3 * stderr


def test_standard_error_shrinks_like_one_over_sqrt_n():
    _, small = finance.monte_carlo_call(10_000, seed=2)
    _, large = finance.monte_carlo_call(1_000_000, seed=2)
    assert small / large == pytest.approx(10.0, rel=0.05)


def test_shards_split_evenly_and_use_distinct_streams():
    assert finance.shard_sizes(10, 3) == [4, 3, 3]
    assert sum(finance.shard_sizes(1_000_001, 4)) == 1_000_001
    seeds = {finance.shard_seed(seed, shard) for seed in range(3) for shard in range(4)}
    assert len(seeds) == 12
    with pytest.raises(ValueError):
        finance.shard_sizes(3, 4)


def test_threads_argument_restores_the_setting():
    before = torch.get_num_threads()
    finance.monte_carlo_call(1000, seed=0, threads=1)
    assert torch.get_num_threads() == before


def test_two_workers_equal_the_sequential_reference():
    # An odd path count gives the workers unequal shares: the sums weight them by N_k / N.
    n_paths, seed = (1 << 17) + 1, 7
    results = launch.run(finance.monte_carlo_call_worker, 2, args=(n_paths, seed),
                         backend="gloo", timeout=120, verbose=False)
    reference = finance.monte_carlo_call(n_paths, seed, shards=2,
                                         threads=launch.threads_per_worker(2))
    for price, stderr, seconds in results:
        assert (price, stderr) == reference  # bit for bit: the same paths, the same sums
        assert seconds > 0
