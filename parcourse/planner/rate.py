"""The FLOP/s a rank reaches on this machine, measured (chapter 4, "Checked against
measurement").

A CPU reaches its matmul peak only on large products, the book's layers are small, and K
processes share the cores with each other and with whatever else runs; so the planner's
compute term on this machine uses a rate measured *for the case*: K workers, each with the
threads the strategies' workers get, train at the same time what one rank computes — the
whole model, a tensor rank's shard of the GPT, or for DDP the model inside
DistributedDataParallel (:func:`rank_part`) — on one micro-batch, and the part's FLOPs ÷
the median step is the rate.

With ``traffic`` each timed step is followed, untimed, by the bytes the case moves in a
step: the rank's gradients all-reduced over its data group and, for tensor parallelism,
the layers' all-reduces of activations over its tensor group (:func:`step_traffic`), then
the loop's all-reduce of the loss over all. On a GPU the copies run on their own engines;
here the same cores and caches serve both, and a step's compute that follows a collective
runs slower than one that does not. The traffic's own time is priced by the collectives'
table (:mod:`.measured`), not here.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import launch
from ..model_parallel import tensor_gpt
from ..models import build_model
from ..training.config import TrainConfig
from ..training.loop import make_optimizer
from ..training.zero import STAGE, zero_engine
from .memory import Config, element
from .models import book_shape


def rank_flops_per_sample(model: str, tensor: int = 1) -> float:
    """Training FLOPs per sample of one tensor rank: the split share ÷ T, the whole head."""
    return book_shape(model).rank_flops_per_sample(tensor)


def grid_groups(config: Config) -> tuple[list[list[int]], list[list[int]]]:
    """(data groups, tensor groups) of the grid's ranks: tensor fastest, then data, then
    pipeline (:mod:`.time`'s order)."""
    t, r, p = config.tensor, config.data, config.pipeline
    data = [[s * t * r + d * t + k for d in range(r)] for s in range(p) for k in range(t)]
    tensor = [[s * t * r + d * t + k for k in range(t)] for s in range(p) for d in range(r)]
    return data, tensor


def step_traffic(model: str, config: Config, samples: int) -> tuple[float, list[float]]:
    """(bytes of the rank's gradients, bytes of each tensor all-reduce of a step) for one
    rank of ``config`` computing ``samples`` samples per micro-batch: N/(T·P) gradients if
    R > 1, and 4 all-reduces of samples·s·d values per layer of the stage and micro-batch
    if T > 1 (:func:`.time.tensor_seconds`' count)."""
    shape, e = book_shape(model), element(config.precision)
    grads = shape.parameters / (config.tensor * config.pipeline) * e if config.data > 1 else 0
    calls = []
    if config.tensor > 1 and shape.transformer:
        per_call = samples * shape.sequence * shape.width * e
        calls = [per_call] * int(4 * shape.layers / config.pipeline * config.microbatches)
    return grads, calls


def rank_part(model: str, rank: int, world_size: int, tensor: int = 1,
              strategy: str | None = None) -> nn.Module:
    """What one rank computes, without its peers: the whole model, with ``tensor`` > 1 its
    tensor shard (:func:`parcourse.model_parallel.tensor_gpt.parallelize`), and for
    ``strategy`` ``"ddp"`` the model inside PyTorch's DistributedDataParallel, whose hooks
    copy each gradient into its buckets. Both over a group of this process alone, whose
    all-reduces return at once: the peers' messages are the collectives' table's to price."""
    net = build_model(model, seed=0)
    if tensor == 1 and strategy != "ddp":
        return net
    alone = [dist.new_group([r]) for r in range(world_size)]   # every rank makes every group
    if tensor > 1:
        return tensor_gpt.parallelize(net, rank % tensor, tensor, group=alone[rank])
    return nn.parallel.DistributedDataParallel(net, process_group=alone[rank])


def rank_stepper(net: nn.Module, strategy: str | None = None):
    """What steps a rank's part: Adam, or for ``strategy`` ``"zero1"``, ``"zero2"`` or
    ``"zero3"`` the book's ZeRO engine as the run builds it (:func:`parcourse.training.
    zero.zero_engine`) over this rank alone — a world of one, whose reduce-scatters and
    all-gathers are copies — so that the engine's own work is measured: its hooks flatten
    each group's gradients, and under stage 3 it frees each block's parameters after its
    forward and rebuilds them before its backward. Both have ``zero_grad()`` and
    ``step()``; the engine also ``close()``."""
    if strategy in STAGE:
        return zero_engine(net, TrainConfig(strategy=strategy, optimizer="adam", lr=1e-3), 0, 1)
    return make_optimizer("adam", net.parameters(), 1e-3)


def _sample(model: str, samples: int):
    if model == "gpt":
        tokens = torch.randint(256, (samples, 33))
        return tokens[:, :-1], tokens[:, 1:]
    return torch.rand(samples, 1, 28, 28), torch.randint(10, (samples,))


def _mine(groups: list[list[int]], rank: int):
    """This rank's group of ``groups``, every group made by every rank (None if alone)."""
    made = [dist.new_group(g) if len(g) > 1 else None for g in groups]
    return next(m for g, m in zip(groups, made) if rank in g)


def rate_worker(rank: int, world_size: int, model: str, samples: int, config: Config,
                traffic: bool = False, repeats: int = 7, strategy: str | None = None) -> float:
    """FLOP/s of this worker training its part of ``model`` (:func:`rank_part`, default
    sizes) on ``samples`` samples: the part's training FLOPs ÷ the median step (forward,
    backward, Adam); with ``traffic`` each step followed, untimed, by the case's bytes."""
    net = rank_part(model, rank, world_size, config.tensor, strategy)
    optimizer = rank_stepper(net, strategy)
    x, y = _sample(model, samples)
    grads, calls = step_traffic(model, config, samples) if traffic else (0, [])
    data_groups, tensor_groups = grid_groups(config)
    data_group, tensor_group = _mine(data_groups, rank), _mine(tensor_groups, rank)
    flat = torch.zeros(int(grads) // 4)
    activations = torch.zeros(int(calls[0]) // 4) if calls else None
    loss = torch.zeros(1, dtype=torch.float64)
    times = []
    for repeat in range(repeats + 1):
        start = time.perf_counter()
        optimizer.zero_grad()
        out = net(x)
        F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)).backward()
        optimizer.step()
        if repeat:
            times.append(time.perf_counter() - start)
        if traffic:
            for _ in calls:
                dist.all_reduce(activations, group=tensor_group)
            if flat.numel():
                dist.all_reduce(flat, group=data_group)
            dist.all_reduce(loss)
    if hasattr(optimizer, "close"):
        optimizer.close()
    return rank_flops_per_sample(model, config.tensor) * samples / statistics.median(times)


def achievable_flops(model: str, samples: int, config: Config, traffic: bool = False,
                     strategy: str | None = None) -> float:
    """The median over the case's ``config.devices`` processes, computing at once, of
    :func:`rate_worker` (``strategy``: see :func:`rank_part`)."""
    return statistics.median(launch.run(rate_worker, config.devices,
                                        args=(model, samples, config, traffic, 7, strategy),
                                        backend="gloo", verbose=False))
