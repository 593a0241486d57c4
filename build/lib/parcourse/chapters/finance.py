"""Monte Carlo option pricing, data-parallel over paths (chapter 6, financial markets).

A European call with strike ``K`` and maturity ``T`` on a stock that follows geometric
Brownian motion with rate ``r`` and volatility ``σ`` (the Black–Scholes model). One path
needs only its terminal price,

    S_T = S0 · exp((r − σ²/2)·T + σ·√T·Z),    Z ~ N(0, 1),

and the price is the expected discounted payoff, estimated from N independent paths:

    C ≈ (1/N) Σ_i e^(−rT) · max(S_T,i − K, 0),   standard error = s / √N,

with s the sample standard deviation of the discounted payoffs. The closed form is

    C = S0·Φ(d1) − K·e^(−rT)·Φ(d2),
    d1 = (ln(S0/K) + (r + σ²/2)·T) / (σ√T),   d2 = d1 − σ√T,

with Φ the standard normal distribution function.

Data parallelism over paths: worker ``k`` of ``W`` simulates its share ``N_k`` of the
paths with its own random stream (:func:`shard_seed`), computes three partial sums
(count, Σ payoff, Σ payoff²) and one ``all_reduce`` adds them. The price is the total sum
over the total count, so shares of unequal size are weighted by ``N_k / N``, exactly as
in chapter 4. Because every stream depends only on ``(seed, k)``, the ``W``-worker run
computes the same paths as :func:`monte_carlo_call` with ``shards=W`` in one process.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.distributed as dist

from .. import launch

CHUNK = 1 << 20  # paths drawn at a time, so memory stays bounded for any n_paths


def black_scholes_call(S0: float, K: float, r: float, sigma: float, T: float) -> float:
    """Closed-form Black–Scholes price of a European call."""
    if S0 <= 0 or K <= 0 or sigma <= 0 or T <= 0:
        raise ValueError(f"need S0, K, sigma, T > 0; got {S0}, {K}, {sigma}, {T}")
    d1 = (math.log(S0 / K) + (r + sigma ** 2 / 2) * T) / (sigma * math.sqrt(T))
    d2 = d1 - sigma * math.sqrt(T)
    return S0 * _normal_cdf(d1) - K * math.exp(-r * T) * _normal_cdf(d2)


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def shard_seed(seed: int, shard: int) -> int:
    """Seed of shard ``shard``'s random stream: independent streams from one ``seed``."""
    state = np.random.SeedSequence(seed, spawn_key=(shard,)).generate_state(1, dtype=np.uint64)
    return int(state[0])


def shard_sizes(n_paths: int, shards: int) -> list[int]:
    """Split ``n_paths`` over ``shards`` as evenly as possible (the first ones get one more)."""
    if n_paths < 2 or shards < 1 or shards > n_paths:
        raise ValueError(f"need n_paths ≥ 2 and 1 ≤ shards ≤ n_paths; got {n_paths}, {shards}")
    base, extra = divmod(n_paths, shards)
    return [base + (k < extra) for k in range(shards)]


def payoff_sums(n_paths: int, seed: int, S0: float = 100.0, K: float = 100.0,
                r: float = 0.05, sigma: float = 0.2, T: float = 1.0,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Simulate ``n_paths`` paths from ``seed``; return float64 ``[count, Σ payoff, Σ payoff²]``.

    The payoffs are discounted. Sums (not means) are what workers can add with one
    ``all_reduce``.
    """
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    drift, vol, discount = (r - sigma ** 2 / 2) * T, sigma * math.sqrt(T), math.exp(-r * T)
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    sums[0] = n_paths
    for start in range(0, n_paths, CHUNK):
        z = torch.randn(min(CHUNK, n_paths - start), generator=generator,
                        dtype=torch.float64, device=device)
        payoff = discount * (S0 * torch.exp(drift + vol * z) - K).clamp_(min=0.0)
        sums[1] += payoff.sum()
        sums[2] += payoff.square().sum()
    return sums


def price_from_sums(sums: torch.Tensor) -> tuple[float, float]:
    """Price and standard error from ``[count, Σ payoff, Σ payoff²]``."""
    n, total, total_sq = (float(v) for v in sums)
    mean = total / n
    variance = max(0.0, (total_sq - n * mean ** 2) / (n - 1))  # sample variance
    return mean, math.sqrt(variance / n)


def monte_carlo_call(n_paths: int, seed: int, S0: float = 100.0, K: float = 100.0,
                     r: float = 0.05, sigma: float = 0.2, T: float = 1.0, shards: int = 1,
                     device: torch.device | str = "cpu",
                     threads: int | None = None) -> tuple[float, float]:
    """Monte Carlo price of a European call in one process: ``(price, standard error)``.

    With ``shards=W`` it draws the paths exactly as ``W`` workers of
    :func:`monte_carlo_call_worker` do, one shard after the other: the sequential
    reference of the parallel run. ``threads`` runs it with that many torch threads and
    restores the setting after: a CPU sum of a million numbers is added up in an order
    that depends on the thread count, so a bit-for-bit comparison with the workers needs
    the workers' count, ``launch.threads_per_worker(W)``.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        sums = torch.zeros(3, dtype=torch.float64, device=torch.device(device))
        for shard, size in enumerate(shard_sizes(n_paths, shards)):
            sums += payoff_sums(size, shard_seed(seed, shard), S0, K, r, sigma, T, device)
    finally:
        torch.set_num_threads(previous)
    return price_from_sums(sums)


def monte_carlo_call_worker(rank: int, world_size: int, n_paths: int, seed: int,
                            S0: float = 100.0, K: float = 100.0, r: float = 0.05,
                            sigma: float = 0.2, T: float = 1.0) -> tuple[float, float, float]:
    """One worker of :func:`parcourse.launch.run`: simulate this rank's paths, all-reduce.

    Returns ``(price, standard error, seconds)`` on every rank; ``seconds`` is the wall
    time from a common start (a barrier) to the price, i.e. simulation plus communication.
    """
    size = shard_sizes(n_paths, world_size)[rank]
    dist.barrier()
    start = time.perf_counter()
    sums = payoff_sums(size, shard_seed(seed, rank), S0, K, r, sigma, T, launch.device())
    dist.all_reduce(sums)  # Σ over workers of [count, Σ payoff, Σ payoff²]
    price, stderr = price_from_sums(sums)  # .item() waits for the device
    return price, stderr, time.perf_counter() - start
