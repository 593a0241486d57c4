"""What training keeps in memory, per device, as K grows (chapter 8).

Training with Adam keeps three kinds of state per parameter tensor: the parameters
``P`` themselves, their gradients ``G`` (same shape), and the optimizer state ``O`` —
for Adam the two running moments ``exp_avg`` and ``exp_avg_sq`` (same shape again) and
a step counter. In fp32 that is 4 + 4 + 8 = 16 bytes per parameter, before
activations. :func:`state_bytes` counts these bytes from the real tensors after one
real optimizer step, so nothing is assumed.

Under data parallelism (DDP) every one of the K devices holds a full replica of all
three, so per-device memory does **not** shrink as K grows. ZeRO (Rajbhandari et al.,
2020) removes the redundancy by sharding: stage 1 shards ``O`` over the K devices,
stage 2 also ``G``, stage 3 also ``P``. Ideally, per device (:func:`zero_bytes`)::

    DDP (stage 0):  P + G + O          stage 2:  P + (G + O) / K
    stage 1:        P + G + O / K      stage 3:  (P + G + O) / K

:func:`memory_worker` measures stage 0 with ``DistributedDataParallel`` + Adam and
stage 1 with PyTorch's ``ZeroRedundancyOptimizer``, which assigns whole parameter
tensors to ranks (largest first, each to the least-loaded rank) — so its shards are
only as even as the tensor sizes allow.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import launch
from ..memory_meter import held_state_bytes, tensor_bytes  # noqa: F401 (re-exported)
from ..models import IMAGE_SHAPE, NUM_CLASSES, build_model

KINDS = ("parameters", "gradients", "optimizer state")
VARIANTS = ("ddp", "zero-1")


state_bytes = held_state_bytes  # bytes of P, G and O this process holds right now


def one_step(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
             batch_size: int = 8, seed: int = 0) -> float:
    """One optimizer step on a random batch, so that gradients and state exist; the loss."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size, *IMAGE_SHAPE, generator=generator).to(device)
    y = torch.randint(NUM_CLASSES, (batch_size,), generator=generator).to(device)
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


def single_device_bytes(model_name: str, lr: float = 1e-3) -> dict[str, int]:
    """The reference: one process, the whole model, Adam, after one step."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(model_name, seed=0).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    one_step(model, optimizer, device)
    return state_bytes(model, optimizer)


def memory_worker(rank: int, world_size: int, model_names: Sequence[str],
                  lr: float = 1e-3) -> dict:
    """This rank's bytes under DDP + Adam ("ddp") and DDP + ZeRO stage 1 ("zero-1").

    Returns ``{model name: {variant: bytes by kind}}``. ``gradient_as_bucket_view=True``
    makes DDP's communication buckets share storage with the gradients, so the
    gradient bytes counted here are all there is.
    """
    from torch.distributed.optim import ZeroRedundancyOptimizer  # on use: it builds TorchScript

    device = launch.device()
    result: dict = {}
    for name in model_names:
        result[name] = {}
        for variant in VARIANTS:
            model = build_model(name, seed=0).to(device)
            ddp = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None,
                gradient_as_bucket_view=True)
            if variant == "ddp":
                optimizer = torch.optim.Adam(ddp.parameters(), lr=lr)
            else:
                optimizer = ZeroRedundancyOptimizer(ddp.parameters(),
                                                    optimizer_class=torch.optim.Adam, lr=lr)
            one_step(ddp, optimizer, device, seed=rank)
            result[name][variant] = state_bytes(model, optimizer)
    return result


def measure_per_device(model_names: Sequence[str], world_size: int, backend: str = "auto",
                       verbose: bool = True) -> dict:
    """Run :func:`memory_worker` on ``world_size`` workers.

    Returns ``{model name: {variant: [bytes by kind, for each rank]}}``.
    """
    model_names = [model_names] if isinstance(model_names, str) else list(model_names)
    per_rank = launch.run(memory_worker, world_size, args=(model_names,), backend=backend,
                          verbose=verbose)
    return {name: {variant: [r[name][variant] for r in per_rank] for variant in VARIANTS}
            for name in model_names}


def zero_bytes(single: dict[str, int], world_size: int, stage: int) -> float:
    """Ideal per-device bytes of ZeRO ``stage`` (0 = plain DDP) on ``world_size`` devices."""
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0 (plain DDP), 1, 2 or 3, got {stage!r}")
    if world_size < 1:
        raise ValueError(f"world_size must be ≥ 1, got {world_size}")
    p, g, o = (single[kind] for kind in KINDS)
    sharded = {0: 0.0, 1: o, 2: g + o, 3: p + g + o}[stage]
    return (p + g + o) - sharded + sharded / world_size
