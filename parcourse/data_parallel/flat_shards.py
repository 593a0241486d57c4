"""Flat, padded buffers of parameters cut into K equal shards: the layout of ZeRO (chapter 5,
"When the model does not fit").

A group of parameter tensors p₁ … p_m (a gradient bucket, or one block of the model) is laid
end to end in one flat buffer of N = Σ numel(pᵢ) elements, padded with zeros to
N' = K·⌈N/K⌉ so that it cuts into K shards of S = N'/K elements; rank r owns elements
r·S … (r+1)·S − 1. The padding, N' − N < K elements, is the only memory ZeRO spends beyond
the ideal 1/K. Because every optimizer in the package (SGD, Adam) updates each element
from that element's gradient and state only, stepping the shards is the same computation
as stepping the tensors — which is why a sharded run equals the single run.

:class:`FlatGroup` converts between the tensors and the flat buffer; the collectives that
move shards are :func:`parcourse.collectives.reduce_scatter_tensor` (sum, then keep one
shard) and :func:`parcourse.collectives.all_gather_into_tensor` (the inverse); over one
rank (``world_size`` 1, whatever the processes around it) they are copies, and nothing is
sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .. import collectives


@dataclass
class FlatGroup:
    """Parameters ``params`` (named ``names``) in one flat buffer cut into ``world_size`` shards."""

    names: list[str]
    params: list[nn.Parameter]
    world_size: int
    rank: int
    numel: int = field(init=False)      # N: the parameters' elements
    padded: int = field(init=False)     # N' = K·S
    shard_numel: int = field(init=False)  # S

    def __post_init__(self):
        self.numel = sum(p.numel() for p in self.params)
        self.padded = collectives.padded_numel(self.numel, self.world_size)
        self.shard_numel = self.padded // self.world_size

    @property
    def mine(self) -> slice:
        """This rank's elements of the padded buffer."""
        return slice(self.rank * self.shard_numel, (self.rank + 1) * self.shard_numel)

    def flatten(self, tensors, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensors end to end, zero-padded to N' elements (a new buffer)."""
        tensors = list(tensors)
        first = tensors[0]
        flat = torch.zeros(self.padded, dtype=dtype or first.dtype, device=first.device)
        offset = 0
        for tensor in tensors:
            flat[offset:offset + tensor.numel()] = tensor.reshape(-1)
            offset += tensor.numel()
        return flat

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Views of ``flat`` shaped like each parameter (no copy)."""
        out, offset = [], 0
        for p in self.params:
            out.append(flat[offset:offset + p.numel()].view(p.shape))
            offset += p.numel()
        return out

    def bind(self, flat: torch.Tensor) -> None:
        """Make every parameter a view of ``flat``: writing the buffer writes the model."""
        for p, view in zip(self.params, self.views(flat)):
            p.data = view

    def shard_of(self, flat: torch.Tensor) -> torch.Tensor:
        """This rank's shard of a padded buffer (a view)."""
        return flat[self.mine]

    def gather(self, shard: torch.Tensor, algorithm: str, out: torch.Tensor | None = None
               ) -> torch.Tensor:
        """The whole padded buffer from every rank's shard (an all-gather)."""
        if out is None:
            out = torch.empty(self.padded, dtype=shard.dtype, device=shard.device)
        if self.world_size == 1:          # one rank: its shard is the whole buffer
            return out.copy_(shard)
        collectives.all_gather_into_tensor(out, shard.contiguous(), algorithm)
        return out

    def reduce_scatter(self, flat: torch.Tensor, algorithm: str) -> torch.Tensor:
        """This rank's shard of the sum of every rank's padded buffer (one rank: a copy)."""
        if self.world_size == 1:
            return flat.clone()
        shard = torch.empty(self.shard_numel, dtype=flat.dtype, device=flat.device)
        collectives.reduce_scatter_tensor(shard, flat, algorithm)
        return shard


def group_parameters(model: nn.Module, bucket_bytes: int | None) -> list[tuple[list, list]]:
    """(names, parameters) per group, in model order.

    ``bucket_bytes=None``: one group per child module that has parameters (the blocks
    ZeRO-3 gathers one at a time). Otherwise consecutive parameters filled into groups of
    at least ``bucket_bytes`` (the last may be smaller), as gradient buckets are.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if bucket_bytes is None:
        groups: dict[str, list] = {}
        for name, p in named:
            groups.setdefault(name.split(".")[0], []).append((name, p))
        chunks = list(groups.values())
    else:
        chunks = fill_buckets(named, bucket_bytes, lambda item: item[1])
    return [([n for n, _ in chunk], [p for _, p in chunk]) for chunk in chunks]


def fill_buckets(items: list, bucket_bytes: int, tensor_of=lambda item: item) -> list[list]:
    """Consecutive items in buckets of at least ``bucket_bytes`` (the last may be smaller)."""
    buckets, current, size = [], [], 0
    for item in items:
        tensor = tensor_of(item)
        current.append(item)
        size += tensor.numel() * tensor.element_size()
        if size >= bucket_bytes:
            buckets.append(current)
            current, size = [], 0
    if current:
        buckets.append(current)
    return buckets


def module_of(model: nn.Module, group: FlatGroup) -> nn.Module:
    """The child of ``model`` that holds a block's parameters (``bucket_bytes=None`` groups)."""
    return model.get_submodule(group.names[0].split(".")[0])


def groups_used(model: nn.Module, groups: list[FlatGroup]) -> list[list[int]]:
    """For each ``bucket_bytes=None`` group i, the groups that hold a parameter of its
    block: [i] alone, unless the block uses a parameter of another block (a tied weight),
    whose group then follows."""
    owner = {id(p): i for i, group in enumerate(groups) for p in group.params}
    used = []
    for i, group in enumerate(groups):
        others = {owner[id(p)] for p in module_of(model, group).parameters() if id(p) in owner}
        used.append([i, *sorted(others - {i})])
    return used
