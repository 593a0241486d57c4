"""A ZeRO run's shards ↔ the unsplit model's state (chapter 5): what its checkpoints hold.

A checkpoint holds the unsplit model's ``state_dict`` and the state of an optimizer over
all its parameters, numbered 0, 1, … in model order (:mod:`parcourse.checkpoint`).
:func:`full_state` all-gathers every group's parameter shards and every shard-shaped
optimizer tensor (Adam's ``exp_avg`` and ``exp_avg_sq``), drops the padding and cuts them
into the parameters' shapes; scalars (Adam's ``step``) are the same for every parameter.
:func:`load_state` does the inverse on every rank: flatten, pad, keep its shard. A
parameter registered under two names (a tied weight) is one tensor in one group, and in
the unsplit state under both names.
"""

from __future__ import annotations

import torch

from ..models import shared_parameters
from .zero import Zero


def full_state(zero: Zero, rank: int) -> tuple[dict, dict] | None:
    """(model state, optimizer state) of the unsplit model on rank 0; every rank calls it."""
    model_state, optimizer_state = {}, {}
    shard_states = zero.optimizer.state_dict()["state"]
    index = {name: k for k, name in enumerate(zero.names)}
    for i, group in enumerate(zero.groups):
        whole = group.gather(zero.masters[i].detach(), zero.algorithm)
        for name, view in zip(group.names, group.views(whole)):
            model_state[name] = view.cpu().clone()
        per_param = {index[name]: {} for name in group.names}
        for key, value in shard_states.get(i, {}).items():
            if torch.is_tensor(value) and value.numel() == group.shard_numel and value.dim():
                views = group.views(group.gather(value, zero.algorithm))
            else:
                views = [value] * len(group.names)
            for name, view in zip(group.names, views):
                per_param[index[name]][key] = (view.cpu().clone() if torch.is_tensor(view)
                                               else view)
        optimizer_state.update({k: v for k, v in per_param.items() if v})
    if rank != 0:
        return None
    aliases = shared_parameters(zero.model)               # a tied weight's other names
    for name, value in zero.model.state_dict().items():   # and buffers, if any
        if name in aliases:
            model_state[name] = model_state[aliases[name]]
        elif name not in model_state:
            model_state[name] = value.detach().cpu().clone()
    ordered = {name: model_state[name] for name in zero.model.state_dict()}
    (group_options,) = zero.optimizer.state_dict()["param_groups"]
    groups = [dict(group_options, params=list(range(len(zero.names))))]
    return ordered, {"state": dict(sorted(optimizer_state.items())), "param_groups": groups}


def load_state(zero: Zero, model_state: dict, optimizer_state: dict) -> None:
    """Put the unsplit model's state into this rank's shards (no communication)."""
    index = {name: k for k, name in enumerate(zero.names)}
    shard_states = {}
    for i, group in enumerate(zero.groups):
        master = zero.masters[i]
        exact = group.flatten([model_state[n] for n in group.names], master.dtype)
        with torch.no_grad():
            master.copy_(group.shard_of(exact.to(master.device)))
            if zero.stage < 3:
                zero.full[i].copy_(exact.to(zero.full[i]))
        states = [optimizer_state["state"].get(index[n], {}) for n in group.names]
        if states[0]:
            shard_states[i] = {}
            for key, value in states[0].items():
                if torch.is_tensor(value) and value.dim():
                    flat = group.flatten([s[key] for s in states], master.dtype)
                    shard_states[i][key] = group.shard_of(flat).clone()
                else:
                    shard_states[i][key] = value
    (group_options,) = optimizer_state["param_groups"]
    zero.optimizer.load_state_dict({
        "state": shard_states,
        "param_groups": [dict(group_options, params=list(range(len(zero.groups))))]})
