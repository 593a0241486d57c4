"""``--strategy expert``: expert parallelism of the mixture-of-experts GPT (chapter 5,
"Many experts: expert parallelism"; :mod:`parcourse.model_parallel.experts`).

K workers; worker r holds experts r·E/K … (r+1)·E/K − 1 of every MoE block and a replica
of everything else, and takes its shard of the global batch, as in ``dp-manual``. Its
tokens reach their experts through two ``all_to_all_single`` per MoE layer forward and
two backward. After backward the replicated parameters' gradients are summed over the
workers (each shard back-propagated its mean loss × B_k/B, so the sum is the full
batch's gradient, chapter 4); the experts' are not: every token that reached an expert
was back-propagated on the expert's rank. This is expert parallelism *with* data
parallelism: the experts split, the rest replicated, one design.

Checkpoints hold the unsplit model: :class:`ExpertShards` gathers every rank's experts
and their Adam state to rank 0 under the unsplit model's names and numbers, and cuts a
rank's experts out of a checkpoint on load.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .. import checkpoint, launch
from ..model_parallel import experts as expert_parallel
from ..models import build_model, sizes_of
from .adapters import cpu_state
from .config import TrainConfig
from .loop import make_optimizer
from .registry import WEIGHTED, Strategy, register
from .worker import load_data_and_model, result, shard_loss, train_worker


class ExpertShards:
    """The replicated layers and this rank's experts ↔ the unsplit model. ``indices[i]``
    is the unsplit model's number of this rank's parameter i."""

    def __init__(self, model: nn.Module, optimizer, rank: int, world_size: int,
                 unsplit: nn.Module):
        self.model, self.optimizer, self.rank, self.world_size = model, optimizer, rank, world_size
        self.local = expert_parallel.layers(model)[0].local
        unsplit_names = [n for n, _ in unsplit.named_parameters()]
        self.keys = list(unsplit.state_dict())
        number = {name: i for i, name in enumerate(unsplit_names)}
        self.indices = [number[self.name(n)] for n, _ in model.named_parameters()]

    def name(self, local_name: str) -> str:
        return expert_parallel.global_name(local_name, self.rank, self.local)

    def full(self):
        mine = ({self.name(k): v for k, v in cpu_state(self.model).items()},
                self.optimizer.state_dict(), self.indices)
        gathered = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(mine, gathered, dst=0)      # a collective: every worker
        if self.rank != 0:
            return None
        merged = {k: v for state, _, _ in gathered for k, v in state.items()}
        order = {name: i for i, name in enumerate(self.keys)}
        model_state = dict(sorted(merged.items(), key=lambda kv: order[kv[0]]))
        return model_state, checkpoint.merge_optimizer_states(
            [o for _, o, _ in gathered], [i for _, _, i in gathered])

    def load(self, saved: dict) -> None:
        self.model.load_state_dict({k: saved["model"][self.name(k)]
                                    for k in self.model.state_dict()})
        self.optimizer.load_state_dict(
            checkpoint.split_optimizer_state(saved["optimizer"], 0, 0, self.indices))


def expert_worker(rank: int, world_size: int, config: TrainConfig):
    """One expert-parallel worker; rank 0 returns the result with the unsplit model."""
    device = launch.device()
    dataset, whole = load_data_and_model(config)
    with torch.device("meta"):   # the unsplit model's names and order, without memory
        unsplit = build_model(config.model, **sizes_of(config.model, config))
    model = expert_parallel.parallelize(whole, rank, world_size).to(device)
    optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr)

    def inner_step(step: int) -> float:
        optimizer.zero_grad()
        loss = shard_loss(model, dataset, config, step, rank, world_size, device)
        expert_parallel.sum_replicated_gradients(model)
        optimizer.step()
        return loss

    adapter = ExpertShards(model, optimizer, rank, world_size, unsplit)
    losses, times = train_worker(config, inner_step, adapter, rank=rank,
                                 world_size=world_size, device=device)
    full = adapter.full()
    return result(config, full[0], losses, times, dataset) if rank == 0 else None


def train_expert(config: TrainConfig):
    """Expert parallelism over ``config.workers`` workers; rank 0's result."""
    return launch.run(expert_worker, config.workers, args=(config,), backend=config.backend,
                      timeout=config.timeout, verbose=not config.quiet)[0]


def _check(config: TrainConfig) -> None:
    expert_parallel.check_divisible(config.experts, config.workers)


register(Strategy("expert", train_expert, "the experts of each mixture-of-experts block "
                  "spread over the workers (all-to-all), the rest replicated",
                  batch=WEIGHTED, check=_check, models=("gpt",), experts=True))
