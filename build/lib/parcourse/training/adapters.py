"""Checkpoint adapters: this worker's part of the model ↔ the unsplit model (chapter 5).

A checkpoint always holds the unsplit model's ``state_dict`` and the optimizer state of an
optimizer over all its parameters (numbered 0, 1, … in model order), so a run saved by any
strategy resumes under any other. Each strategy has one adapter:

* :class:`Replica` — the worker holds the whole model (single, data parallelism);
* :class:`Stages` — the worker holds consecutive layers ``start … end − 1`` (pipelines);
* :class:`TensorStages` — a stage's layers, split over its tensor ranks (the 3-D grid);
* :class:`TensorShards` — the worker holds 1/K of each split layer (tensor parallelism);
* :class:`ZeroShards` — the worker holds 1/K of the flat parameters and optimizer state (ZeRO).
* :class:`ShardedOptimizer` — the whole model, 1/K of the optimizer state (torch-zero1);
* :class:`FullyShardedReplica` — 1/K of every parameter and its state (FSDP2).

``full()`` is called on every worker at the same step (it may use collectives) and
returns ``(model_state, optimizer_state)`` on rank 0, ``None`` elsewhere; ``load(saved)``
puts a checkpoint's unsplit state into this worker's part.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .. import checkpoint
from ..data_parallel import zero_state
from ..model_parallel import tensor as tensor_parallel
from ..model_parallel import tensor_gpt


def cpu_state(module: nn.Module) -> dict:
    """A copy of ``module``'s state_dict on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class Replica:
    """The whole model on every worker: rank 0's copy is the unsplit model."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, rank: int = 0):
        self.model, self.optimizer, self.rank = model, optimizer, rank

    def full(self):
        if self.rank != 0:
            return None
        return cpu_state(self.model), self.optimizer.state_dict()

    def load(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])


class Stages:
    """A pipeline stage's layers (``start … end − 1``, or an interleaved stage's chunks);
    the stages on the workers ``holders`` (replica 0's, in order) make the unsplit model.

    The optimizer over this stage's parameters numbers them 0, 1, …; ``indices[i]`` is
    the unsplit model's number of parameter i (:func:`parcourse.checkpoint.merge_optimizer_states`):
    consecutive after the earlier stages' parameters, except a tied weight that an earlier
    stage holds too (the GPT's head on the last stage shares the first stage's token table).
    """

    def __init__(self, part: nn.Module, optimizer: torch.optim.Optimizer | None,
                 indices: list[int], holders: list[int], rank: int, world_size: int):
        self.part, self.optimizer, self.indices = part, optimizer, list(indices)
        self.holders, self.rank, self.world_size = list(holders), rank, world_size

    def stage_state(self) -> tuple[dict, dict | None]:
        """This stage's unsplit layers: their state_dict and optimizer state."""
        return (cpu_state(self.part),
                self.optimizer.state_dict() if self.optimizer is not None else None)

    def full(self):
        mine = (*self.stage_state(), self.indices)   # may use collectives: every worker
        gathered = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(mine, gathered, dst=0)
        if self.rank != 0:
            return None
        first_replica = [gathered[r] for r in self.holders]
        model_state = {k: v for state, _, _ in first_replica for k, v in state.items()}
        # in the unsplit model's order: by layer (an interleaved stage holds layers that
        # are not consecutive), each layer's keys as its stage lists them
        model_state = dict(sorted(model_state.items(), key=lambda kv: int(kv[0].split(".")[0])))
        return model_state, checkpoint.merge_optimizer_states(
            [o for _, o, _ in first_replica], [i for _, _, i in first_replica])

    def load(self, saved: dict) -> None:
        model_state = {key: saved["model"][key] for key in self.part.state_dict()}
        optimizer_state = (checkpoint.split_optimizer_state(saved["optimizer"], 0, 0,
                                                            self.indices)
                           if self.optimizer is not None else None)
        self.load_stage(model_state, optimizer_state)

    def load_stage(self, model_state: dict, optimizer_state: dict | None) -> None:
        """Put this stage's unsplit layers' state into it."""
        self.part.load_state_dict(model_state)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(optimizer_state)


class TensorStages(Stages):
    """A stage of the 3-D grid: its layers split over the stage's tensor ranks
    (:mod:`parcourse.model_parallel.tensor_gpt`), gathered within the tensor group into
    the stage's unsplit layers, which :class:`Stages` joins into the whole model."""

    def __init__(self, part: nn.Module, optimizer: torch.optim.Optimizer | None,
                 indices: list[int], holders: list[int], rank: int, world_size: int,
                 tensor_rank: int, tensor_ranks: int, group):
        super().__init__(part, optimizer, indices, holders, rank, world_size)
        self.tensor_rank, self.tensor_ranks, self.group = tensor_rank, tensor_ranks, group

    def stage_state(self) -> tuple[dict, dict | None]:
        return (tensor_gpt.full_state_dict(self.part, self.group),
                tensor_gpt.full_optimizer_state(self.optimizer, self.part, self.tensor_ranks,
                                                self.group)
                if self.optimizer is not None else None)

    def load_stage(self, model_state: dict, optimizer_state: dict | None) -> None:
        mine, cut_optimizer = tensor_gpt.shard_state(model_state, self.part, self.tensor_rank,
                                                     self.tensor_ranks)
        super().load_stage(mine, cut_optimizer(optimizer_state)
                           if optimizer_state is not None else None)


class TensorShards:
    """1/K of each split layer (Megatron): gathered into the unsplit model's parameters
    and Adam state, sliced back on load. ``layout`` is the module that knows the split:
    :mod:`parcourse.model_parallel.tensor` (the MLP and CNN) or
    :mod:`parcourse.model_parallel.tensor_gpt` (the GPT)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, rank: int,
                 world_size: int, layout=tensor_parallel):
        self.model, self.optimizer, self.layout = model, optimizer, layout
        self.rank, self.world_size = rank, world_size

    def full(self):
        model_state = self.layout.full_state_dict(self.model)        # collectives: every
        optimizer_state = self.layout.full_optimizer_state(          # worker takes part
            self.optimizer, self.model, self.world_size)
        return (model_state, optimizer_state) if self.rank == 0 else None

    def load(self, saved: dict) -> None:
        model_state, optimizer_state = self.layout.shard_state(
            saved["model"], self.model, self.rank, self.world_size)
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(optimizer_state(saved["optimizer"]))


class ZeroShards:
    """A ZeRO stage's 1/K shards (:mod:`parcourse.data_parallel.zero`): gathered into the
    unsplit model and optimizer state, flattened and sliced back on load."""

    def __init__(self, engine, rank: int):
        self.engine, self.rank = engine, rank

    def full(self):
        return zero_state.full_state(self.engine, self.rank)   # collectives: every worker

    def load(self, saved: dict) -> None:
        zero_state.load_state(self.engine, saved["model"], saved["optimizer"])
class ShardedOptimizer(Replica):
    """The whole model on every worker, the optimizer state split over them
    (``ZeroRedundancyOptimizer``): gathered on rank 0 to save. Its ``load_state_dict``
    takes the unsplit state and keeps this worker's part, so loading is :class:`Replica`'s."""

    def full(self):
        self.optimizer.consolidate_state_dict(to=0)  # a collective: every worker calls it
        return super().full()


def numbered_optimizer_state(named: dict, names: list[str]) -> dict:
    """An optimizer state keyed by parameter names (FQNs, as torch.distributed.checkpoint
    writes it) → the same state numbered 0, 1, … in the model's order ``names``."""
    (group,) = named["param_groups"]
    number = {name: i for i, name in enumerate(names)}
    return {"state": {number[name]: value for name, value in named["state"].items()},
            "param_groups": [dict(group, params=[number[n] for n in group["params"]])]}


def named_optimizer_state(numbered: dict, names: list[str]) -> dict:
    """The inverse of :func:`numbered_optimizer_state`."""
    (group,) = numbered["param_groups"]
    return {"state": {names[i]: value for i, value in numbered["state"].items()},
            "param_groups": [dict(group, params=[names[i] for i in group["params"]])]}


class FullyShardedReplica:
    """Every parameter cut in K pieces along dim 0 (FSDP2's DTensors), its optimizer state
    likewise. ``torch.distributed.checkpoint.state_dict`` gathers the full model and
    optimizer state onto rank 0's CPU, with parameter names as the optimizer's keys; they
    are numbered here in model order, and named again on load, where every worker cuts
    its pieces out of the full tensors."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, rank: int):
        self.model, self.optimizer, self.rank = model, optimizer, rank
        self.names = [name for name, _ in model.named_parameters()]

    def full(self):
        from torch.distributed.checkpoint import state_dict as dcp

        # all-gathers: every worker takes part; rank 0 gets the tensors, the others {}
        options = dcp.StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = dcp.get_model_state_dict(self.model, options=options)
        optimizer_state = dcp.get_optimizer_state_dict(self.model, self.optimizer,
                                                       options=options)
        if self.rank != 0:
            return None
        return model_state, numbered_optimizer_state(optimizer_state, self.names)

    def load(self, saved: dict) -> None:
        from torch.distributed.checkpoint import state_dict as dcp

        options = dcp.StateDictOptions(full_state_dict=True)  # every worker holds it all
        dcp.set_model_state_dict(self.model, saved["model"], options=options)
        dcp.set_optimizer_state_dict(self.model, self.optimizer,
                                     named_optimizer_state(saved["optimizer"], self.names),
                                     options=options)
