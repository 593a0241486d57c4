"""Worker functions for tests/distributed/test_collectives.py (spawned workers must import them)."""

import torch
import torch.distributed as dist

from parcourse import collectives

SIZES = [0, 1, 2, 3, 5, 7, 64, 1000, 4099]
SHAPES = [(3, 5), (2, 3, 4)]


def compare_with_dist(rank, world_size):
    """For every algorithm, size and dtype: (name, exact?, max |ours − dist.all_reduce|)."""
    report = []
    generator = torch.Generator().manual_seed(1234 + rank)
    cases = [(n,) for n in SIZES] + SHAPES
    for shape in cases:
        for dtype in (torch.float32, torch.float64):
            integers = torch.randint(-1000, 1000, shape, generator=generator).to(dtype)
            reals = torch.randn(shape, generator=generator, dtype=dtype)
            for data, exact in ((integers, True), (reals, False)):
                expected = data.clone()
                dist.all_reduce(expected)
                for algorithm in collectives.ALGORITHMS:
                    ours = data.clone()
                    returned = collectives.all_reduce(ours, algorithm)
                    same_object = returned is ours
                    error = (ours - expected).abs().max().item() if ours.numel() else 0.0
                    report.append((algorithm, shape, str(dtype), exact, error, same_object))
    return report


def non_contiguous(rank, world_size):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4) + rank
    view = base.t()  # not contiguous
    collectives.ring_all_reduce(view)
    return base


def compare_cases(rank, world_size, cases):
    """For (numel, dtype name, seed) cases: max |ours − dist.all_reduce| per algorithm."""
    errors = []
    for numel, dtype_name, seed in cases:
        dtype = getattr(torch, dtype_name)
        data = torch.randn(numel, generator=torch.Generator().manual_seed(seed + rank),
                           dtype=dtype)
        expected = data.clone()
        dist.all_reduce(expected)
        for algorithm in collectives.ALGORITHMS:
            ours = collectives.all_reduce(data.clone(), algorithm)
            errors.append((algorithm, numel, dtype_name,
                           (ours - expected).abs().max().item() if numel else 0.0))
    return errors


def mismatched(rank, world_size, kind):
    if kind == "size":
        tensor = torch.ones(10 + rank)
    else:
        tensor = torch.ones(10, dtype=torch.float64 if rank else torch.float32)
    try:
        collectives.all_reduce(tensor, "ring")
    except ValueError as err:
        return str(err)
    return "no error"
