"""Where to cut a layered model into pipeline stages (chapters 3 and 5, model parallelism).

A model that is an ``nn.Sequential`` of L layers is split into P contiguous stages by
P − 1 *boundaries* ``0 < b_1 < … < b_{P−1} < L``; stage s holds layers
``b_s … b_{s+1} − 1`` (with b_0 = 0 and b_P = L). A pipeline is only as fast as its
slowest stage, so a good split minimises the largest stage cost

    min over boundaries of  max_s  Σ_{l ∈ stage s} c_l

where c_l is the cost of layer l: its parameter count (what the stage must store and
update) or its measured forward + backward time (what the stage must compute). This
"linear partition" problem is solved exactly by dynamic programming in O(P·L²).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ..errors import ConfigError
from ..models import shared_parameters

METHODS = ("parameters", "time")


def check_stages(layers: int, stages: int, what: str = "the model") -> None:
    """Raise :class:`ConfigError` unless 1 ≤ ``stages`` ≤ ``layers``."""
    if stages < 1:
        raise ConfigError(f"--stages must be at least 1 (got {stages})")
    if stages > layers:
        raise ConfigError(f"--stages {stages} is more than the {layers} layers of {what}: "
                          f"each stage needs at least one layer, so use --stages {layers} "
                          f"or fewer")


def balanced_boundaries(costs: list[float], stages: int) -> list[int]:
    """Boundaries that minimise the largest stage cost (ties: the earliest cuts)."""
    check_stages(len(costs), stages)
    n = len(costs)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    # best[p][i]: smallest possible largest cost when the first i layers form p stages
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for p in range(1, stages + 1):
        for i in range(p, n + 1):
            for j in range(p - 1, i):
                value = max(best[p - 1][j], prefix[i] - prefix[j])
                if value < best[p][i] - 1e-12:
                    best[p][i], cut[p][i] = value, j
    bounds, i = [], n
    for p in range(stages, 1, -1):
        i = cut[p][i]
        bounds.append(i)
    return sorted(bounds)


def parameter_costs(model: nn.Sequential) -> list[float]:
    """Number of parameters of each layer."""
    return [float(sum(p.numel() for p in layer.parameters())) for layer in model]


def time_costs(model: nn.Sequential, example: torch.Tensor, repeats: int = 5) -> list[float]:
    """Measured forward + backward seconds of each layer on ``example`` (median of repeats)."""
    inputs, x = [], example
    with torch.no_grad():
        for layer in model:
            inputs.append(x)
            x = layer(x)
    costs = []
    for layer, x in zip(model, inputs):
        samples = []
        for _ in range(repeats):
            leaf = x.detach().requires_grad_(x.is_floating_point())
            start = time.perf_counter()
            out = layer(leaf)
            out.backward(torch.ones_like(out))
            samples.append(time.perf_counter() - start)
        costs.append(sorted(samples)[len(samples) // 2])
    model.zero_grad(set_to_none=True)  # the timing runs leave no gradients behind
    return costs


def parameter_blocks(model: nn.Sequential) -> list[tuple[int, int]]:
    """Group the layers so that each group starts with a layer that has parameters and
    keeps the parameter-free layers that follow it (ReLU, pooling, Flatten); leading
    parameter-free layers join the first group. Cutting between groups never leaves a
    stage without parameters to train."""
    starts = [i for i, layer in enumerate(model) if any(True for _ in layer.parameters())]
    starts = [0] + starts[1:] if starts else [0]
    return list(zip(starts, starts[1:] + [len(model)]))


def by_parameters(model: nn.Sequential, stages: int) -> list[int]:
    """Boundaries that balance the parameter count, cutting only between
    :func:`parameter_blocks` when there are enough of them."""
    blocks = parameter_blocks(model)
    costs = parameter_costs(model)
    if stages > len(blocks):  # more stages than trainable layers: cut anywhere
        return balanced_boundaries([c + 1.0 for c in costs], stages)
    block_costs = [sum(costs[a:b]) for a, b in blocks]
    return [blocks[i][0] for i in balanced_boundaries(block_costs, stages)]


def parse_boundaries(text: str, layers: int, stages: int, counted: str = "--stages") -> list[int]:
    """Boundaries given by the user as ``"3"`` or ``"2,5"``; checked against the model
    (``counted`` names the options that make the ``stages`` parts)."""
    try:
        bounds = [int(b) for b in text.split(",")]
    except ValueError:
        raise ConfigError(f"--partition {text!r} is not {' or '.join(METHODS)} or a "
                          f"comma-separated list of layer indices such as 3 or 2,5") from None
    if len(bounds) != stages - 1:
        raise ConfigError(f"--partition {text!r} gives {len(bounds) + 1} stages but {counted} "
                          f"is {stages}: give {stages - 1} cut point(s)")
    if bounds != sorted(set(bounds)) or bounds[0] <= 0 or bounds[-1] >= layers:
        raise ConfigError(f"--partition {text!r}: cut points must increase strictly and lie "
                          f"between 1 and {layers - 1} (the model has {layers} layers)")
    return bounds


def partition(model: nn.Sequential, stages: int, method: str = "parameters",
              example: torch.Tensor | None = None) -> list[tuple[int, int]]:
    """Layer ranges ``[(start, end), …]`` of each stage, by ``method``: "parameters",
    "time" (needs ``example``, one input micro-batch) or explicit cut points "2,5"."""
    layers = len(model)
    check_stages(layers, stages, f"this {type(model).__name__}")
    if stages == 1:
        bounds = []
    elif method == "parameters":
        bounds = by_parameters(model, stages)
    elif method == "time":
        if example is None:
            raise ValueError("partition by time needs an example input")
        bounds = balanced_boundaries(time_costs(model, example), stages)
    else:
        bounds = parse_boundaries(method, layers, stages)
    edges = [0, *bounds, layers]
    return list(zip(edges[:-1], edges[1:]))


def boundary_shapes(model: nn.Sequential, ranges: list[tuple[int, int]],
                    example: torch.Tensor) -> list[torch.Size]:
    """Shape of the activation that enters each stage (index 0: the model's input), then
    the shape of the model's output: P + 1 shapes for P stages."""
    shapes, x = [], example
    with torch.no_grad():
        for start, end in ranges:
            shapes.append(x.shape)
            x = model[start:end](x)
    return shapes + [x.shape]



def tied_across_stages(model: nn.Sequential,
                       ranges: list[tuple[int, int]]) -> list[tuple[int, str, int, str]]:
    """The parameters that two stages hold: ``(stage a, name, stage b, other name)`` for
    each parameter registered in layers that fall on different stages.

    The GPT's head *is* its token table (weight tying): cut into a pipeline, the first
    stage holds the table as ``0.token.weight``, the last as the head's ``weight``. Each
    copy's gradient has only its own stage's use, so the two stages sum them (in
    Megatron-LM, the "embedding group" all-reduce) and both copies step alike.
    """
    def stage_of(name: str) -> int:
        layer = int(name.split(".")[0])
        return next(s for s, (start, end) in enumerate(ranges) if start <= layer < end)

    return [(stage_of(owner), owner, stage_of(alias), alias)
            for alias, owner in shared_parameters(model).items()
            if stage_of(owner) != stage_of(alias)]
