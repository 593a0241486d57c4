"""``--strategy fsdp``: PyTorch's fully sharded data parallelism, FSDP2 (chapter 8;
Zhao et al., 2023), the engine that does what ZeRO stage 3 describes.

``fully_shard`` is applied to every layer that has parameters, then to the whole model:
each layer's parameters become DTensors cut along dim 0 into K pieces (uneven when K
does not divide the rows: a 64-row weight on 3 workers is 22, 22 and 20 rows), and the
optimizer, built over those pieces, keeps 1/K of Adam's moments. Before a layer's
forward its pieces are all-gathered; after its backward the full gradient is
reduce-scattered, so every worker keeps only the gradient of its own piece. With
``--no-reshard-after-forward`` the gathered parameters stay until backward instead of
being gathered a second time: less traffic, more memory — the same numbers.

The batch is split as dp-manual splits it (weighted shards, any B ≥ K): worker k
back-propagates its local mean × B_k / B, and the reduce-scatter *sums*. FSDP would
divide the sum by K (right only for equal shards), so every FSDP module gets a divide
factor of 1 and sum-only collectives: gloo has neither ``ReduceOp.AVG`` nor
``PREMUL_SUM`` ("Cannot use ReduceOp.PREMUL_SUM with Gloo"), and a sum divided by
nothing is what is wanted anyway. Checkpoints hold the unsplit model
(:class:`~parcourse.training.adapters.FullyShardedReplica`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .. import launch, mixed_precision
from .adapters import FullyShardedReplica
from .config import TrainConfig
from .loop import make_optimizer, optimizer_step
from .registry import WEIGHTED, Strategy, register
from .worker import held_on_every_rank, load_data_and_model, result, shard_loss, train_worker


def shard_model(model: nn.Sequential, device, reshard_after_forward: bool = True,
                precision: str = "full"):
    """Apply FSDP2 to each layer of ``model`` that has parameters, then to ``model``
    (the root), over all workers; gradients are summed over the workers, not averaged.
    With ``precision`` bf16 or fp16 the gathered parameters are cast to it and the
    gradients reduced in float32 (FSDP2's ``MixedPrecisionPolicy``)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    compute = mixed_precision.compute_dtype(precision)
    policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=compute and torch.float32)
    options = dict(mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)
    for unit in units(model):
        fully_shard(unit[0] if len(unit) == 1 else unit, **options)
    fully_shard(model, **options)
    for module in model.modules():  # both settings apply to one FSDP module each
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


def units(model: nn.Sequential) -> list[list[nn.Module]]:
    """The layers that have parameters, one FSDP unit each, except that layers sharing a
    parameter (the GPT's embeddings and head: its tied token table) form one unit: FSDP2
    manages a parameter in one group only, gathers the unit's parameters together and
    reduce-scatters the shared parameter's one gradient, the sum of both uses."""
    found: list[tuple[list[nn.Module], set[int]]] = []
    for layer in model:
        ids = {id(p) for p in layer.parameters()}
        if not ids:
            continue
        shared = [unit for unit in found if unit[1] & ids]
        for unit in shared:
            found.remove(unit)
        merged = [m for unit in shared for m in unit[0]] + [layer]
        found.append((merged, ids.union(*(unit[1] for unit in shared))))
    order = {id(layer): i for i, layer in enumerate(model)}
    return sorted((modules for modules, _ in found), key=lambda unit: order[id(unit[0])])


def fsdp_worker(rank: int, world_size: int, config: TrainConfig):
    """One FSDP worker; rank 0 returns the result (the gathered model), the others None."""
    device = launch.device()
    dataset, model = load_data_and_model(config, device)
    model = shard_model(model, device, config.reshard_after_forward, config.precision)
    optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr)
    scaler = mixed_precision.LossScaler(config.precision)

    def inner_step(step: int) -> float:
        optimizer.zero_grad()
        loss = shard_loss(model, dataset, config, step, rank, world_size, device, scaler.scale)
        optimizer_step(optimizer, scaler, agree=dist.all_reduce)   # shards: all must agree
        return loss

    adapter = FullyShardedReplica(model, optimizer, rank)
    losses, times = train_worker(config, inner_step, adapter, rank=rank,
                                 world_size=world_size, device=device)
    held = held_on_every_rank(model, optimizer, world_size)
    full = adapter.full()  # every worker takes part in gathering the final model
    return result(config, full[0], losses, times, dataset, held=held) if rank == 0 else None


def train_fsdp(config: TrainConfig):
    """FSDP2 over ``config.workers`` workers; rank 0's result."""
    return launch.run(fsdp_worker, config.workers, args=(config,), backend=config.backend,
                      timeout=config.timeout, verbose=not config.quiet)[0]


register(Strategy("fsdp", train_fsdp, "PyTorch FSDP2 (fully_shard): parameters, gradients "
                  "and optimizer state sharded", options=("reshard_after_forward", "recompute", "precision"),
                  batch=WEIGHTED, experts=True))
