"""The GPT split over T tensor ranks, with or without sequence parallelism (chapter 5,
"Parallelism for transformers"; Shoeybi et al., 2019; Korthikanti et al., 2022).

Each block of :mod:`parcourse.gpt` is cut as Megatron-LM cuts it:

* **attention**: the Q, K and V projections column-parallel *by heads*: rank r holds the
  rows of heads r·H/T … (r+1)·H/T − 1 of each of W_q, W_k, W_v (and their biases), so it
  computes those heads' attention alone; the output projection W_o row-parallel (the
  columns that read those heads), summed over the ranks;
* **MLP**: W₁ (d → 4d) column-parallel, the GELU on each rank's 4d/T hidden units,
  W₂ row-parallel; the row-parallel layers' biases are whole and added once, after the sum;
* **replicated**: the LayerNorms, the embeddings and the tied head (the logits need the
  whole table on every rank; the vocabulary is only 256 bytes).

Without sequence parallelism each sub-layer costs one all-reduce forward (after W_o, after
W₂: Megatron's g) and one backward (of the gradient entering the column-parallel layer:
Megatron's f), b·s·d numbers each. With it (:mod:`.sequence`) the residual stream and
the LayerNorms hold 1/T of the positions, the all-reduce forward becomes a reduce-scatter
and the identity before the column-parallel layer an all-gather (backward the other way
round); the embeddings' output is sliced on entry and the last block's output gathered
before the head. Every rank computes the same logits and loss either way.

The split keeps the module names of the unsplit GPT, so ``state_dict()`` keys are the
same and each split tensor is 1/T of the unsplit one along :class:`Split`'s dimension:
:func:`full_state_dict` and :func:`shard_state` convert between the two.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import gpt
from ..errors import ConfigError
from . import sequence as seq
from .tensor import AllReduceForwardIdentityBackward, IdentityForwardAllReduceBackward


@dataclass(frozen=True)
class Split:
    """How a tensor is cut over T ranks: along ``dim``, which holds ``groups`` equal groups
    side by side (3 for the rows [W_q; W_k; W_v]); each rank takes 1/T of every group."""

    dim: int
    groups: int = 1

    def cut(self, whole: torch.Tensor, rank: int, ranks: int) -> torch.Tensor:
        """Rank ``rank``'s part of the unsplit ``whole`` (a copy)."""
        grouped = whole.unflatten(self.dim, (self.groups, -1))
        part = grouped.shape[self.dim + 1] // ranks
        mine = grouped.narrow(self.dim + 1, rank * part, part)
        return mine.flatten(self.dim, self.dim + 1).clone()

    def join(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The unsplit tensor from every rank's part, in rank order."""
        grouped = [p.unflatten(self.dim, (self.groups, -1)) for p in parts]
        return torch.cat(grouped, self.dim + 1).flatten(self.dim, self.dim + 1)


COLUMN, ROW, QKV = Split(0), Split(1), Split(0, groups=3)


class ShardedLinear(nn.Module):
    """This rank's part of a Linear layer (``splits`` says how weight and bias are cut;
    None: whole). Its forward is the product alone; the block communicates."""

    def __init__(self, linear: nn.Linear, weight: Split, bias: Split | None, rank: int,
                 ranks: int):
        super().__init__()
        self.splits = {"weight": weight, "bias": bias}
        self.weight = nn.Parameter(weight.cut(linear.weight.detach(), rank, ranks))
        whole_bias = linear.bias.detach()
        self.bias = nn.Parameter(bias.cut(whole_bias, rank, ranks) if bias else whole_bias.clone())

    def forward(self, x: torch.Tensor, add_bias: bool = True) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias if add_bias else None)


class ShardedAttention(nn.Module):
    """This rank's H/T heads: ``qkv`` column-parallel by heads, ``out`` row-parallel."""

    def __init__(self, attention: gpt.CausalSelfAttention, rank: int, ranks: int):
        super().__init__()
        self.heads, self.kernel = attention.heads // ranks, attention.kernel
        self.qkv = ShardedLinear(attention.qkv, QKV, QKV, rank, ranks)
        self.out = ShardedLinear(attention.out, ROW, None, rank, ranks)


class ParallelBlock(nn.Module):
    """A :class:`parcourse.gpt.Block` split over the tensor group: the same names, this
    rank's parts. ``sequence_parallel``: its input and output are this rank's positions;
    ``regather``: the column-parallel layers keep only the slice of their input
    (:class:`.sequence.GatheredLinear`)."""

    def __init__(self, block: gpt.Block, rank: int, ranks: int, group=None,
                 sequence_parallel: bool = False, regather: bool = True):
        super().__init__()
        self.norm1 = block.norm1                    # the unsplit block's order of names
        self.attention = ShardedAttention(block.attention, rank, ranks)
        self.norm2 = block.norm2
        self.mlp = nn.Sequential(ShardedLinear(block.mlp[0], COLUMN, COLUMN, rank, ranks),
                                 block.mlp[1], ShardedLinear(block.mlp[2], ROW, None, rank, ranks))
        self.group, self.sequence_parallel, self.regather = group, sequence_parallel, regather

    def column(self, x: torch.Tensor, layer: ShardedLinear) -> torch.Tensor:
        """Into a column-parallel layer: f (tensor), g (sequence), or g fused with it."""
        if not self.sequence_parallel:
            return layer(IdentityForwardAllReduceBackward.apply(x, self.group))
        if self.regather:
            return seq.GatheredLinear.apply(x, layer.weight, layer.bias, self.group)
        return layer(seq.AllGatherForwardReduceScatterBackward.apply(x, self.group))

    def row(self, x: torch.Tensor, layer: ShardedLinear) -> torch.Tensor:
        """Out of a row-parallel layer: the partial sums all-reduced (tensor) or
        reduce-scattered (sequence: ḡ), then the whole bias."""
        reduce = (seq.ReduceScatterForwardAllGatherBackward if self.sequence_parallel
                  else AllReduceForwardIdentityBackward)
        return reduce.apply(layer(x, add_bias=False), self.group) + layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = gpt.attend(self.column(self.norm1(x), self.attention.qkv), self.attention.heads,
                           self.attention.kernel)
        x = x + self.row(heads, self.attention.out)
        hidden = self.mlp[1](self.column(self.norm2(x), self.mlp[0]))
        return x + self.row(hidden, self.mlp[2])

    def sequence_region_parameters(self) -> list[nn.Parameter]:
        """The replicated parameters that see only this rank's positions."""
        return [*self.norm1.parameters(), *self.norm2.parameters(),
                self.attention.out.bias, self.mlp[2].bias]


class TensorParallelGPT(nn.Sequential):
    """Layers of the GPT on one tensor rank — all of them, or a pipeline stage's slice —
    under their unsplit names (the same state_dict keys). With sequence parallelism the
    blocks see this rank's positions only: sliced after the embeddings, gathered before
    the head, so a stage without either takes and passes 1/T of the positions."""

    def __init__(self, layers: "OrderedDict[str, nn.Module]", group=None,
                 sequence_parallel: bool = False):
        super().__init__(layers)
        self.group, self.sequence_parallel = group, sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            if self.sequence_parallel and isinstance(layer, gpt.Head):
                x = seq.AllGatherForwardSliceBackward.apply(x, self.group)
            x = layer(x)
            if self.sequence_parallel and isinstance(layer, gpt.Embeddings):
                x = seq.SliceForwardAllGatherBackward.apply(x, self.group)
        return x

    def blocks(self) -> list[ParallelBlock]:
        return [layer for layer in self if isinstance(layer, ParallelBlock)]

    def sum_sequence_gradients(self) -> None:
        """After backward: the sequence region's replicated gradients summed over the
        tensor group (:func:`.sequence.sum_over_ranks`); nothing without it."""
        if self.sequence_parallel:
            seq.sum_over_ranks([p for block in self.blocks()
                                for p in block.sequence_region_parameters()], self.group)


def check_splittable(width: int, heads: int, sequence: int, ranks: int,
                     sequence_parallel: bool = False, flag: str = "--workers",
                     strategy: str = "tensor") -> None:
    """One-line errors unless T ranks split the GPT: whole heads per rank (which also
    splits d, 3d and 4d), and with sequence parallelism the window. ``flag`` names the
    option that sets T (``--workers`` for ``--strategy tensor``, ``--tensor`` in a grid)."""
    who, what = (("worker", "a number of workers") if flag == "--workers"
                 else ("tensor rank", f"a {flag}"))
    if width % ranks:
        raise ConfigError(f"--strategy {strategy} splits the GPT's --width {width} over "
                          f"{flag} {ranks}: use {what} that divides {width}")
    if heads % ranks:
        raise ConfigError(f"--strategy {strategy} gives each {who} whole heads, but --heads "
                          f"{heads} cannot be split over {flag} {ranks}: use {what} that "
                          f"divides {heads}")
    if sequence_parallel:
        seq.check_sequence(sequence, ranks, flag)


def parallelize(model: nn.Sequential, rank: int, ranks: int, group=None,
                sequence_parallel: bool = False, regather: bool = True) -> TensorParallelGPT:
    """Tensor rank ``rank``'s part of the unsplit ``model`` — the whole GPT or a slice of
    it (``gpt[a:b]``, a pipeline stage) — whose other layers it reuses."""
    blocks = [layer for layer in model if isinstance(layer, gpt.Block)]
    if blocks:
        check_splittable(blocks[0].norm1.normalized_shape[0], blocks[0].attention.heads,
                         0, ranks)
    return TensorParallelGPT(OrderedDict(
        (name, ParallelBlock(layer, rank, ranks, group, sequence_parallel, regather)
         if isinstance(layer, gpt.Block) else layer) for name, layer in model.named_children()),
        group, sequence_parallel)


def splits(model: nn.Module) -> dict[str, Split]:
    """``{state_dict key: Split}`` of the split tensors; every other key is whole."""
    return {f"{name}.{key}": split for name, layer in model.named_modules()
            if isinstance(layer, ShardedLinear) for key, split in layer.splits.items() if split}


def _gather(part: torch.Tensor, split: Split, group) -> torch.Tensor:
    parts = [torch.empty_like(part) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, part.detach().contiguous(), group=group)
    return split.join(parts)


def full_state_dict(model: nn.Module, group=None) -> dict:
    """The unsplit GPT's (or stage's) state_dict, gathered from every rank of the tensor
    ``group`` (by default the model's; every rank calls it)."""
    cut, group = splits(model), model.group if group is None else group
    return {key: (_gather(value, cut[key], group) if key in cut else value)
            .detach().cpu().clone() for key, value in model.state_dict().items()}


def _parameter_splits(model: nn.Module) -> list[Split | None]:
    cut = splits(model)
    return [cut.get(name) for name, _ in model.named_parameters()]


def full_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module,
                         world_size: int, group=None) -> dict:
    """The optimizer state of the unsplit GPT (or stage): each per-parameter tensor (Adam's
    moments) gathered like its parameter over the tensor ``group`` (by default the
    model's; every rank calls it)."""
    state, cut = optimizer.state_dict(), _parameter_splits(model)
    group = model.group if group is None else group
    full = {index: {key: (_gather(value, cut[index], group)
                          if cut[index] is not None and value.dim() > 0 else value)
                    for key, value in values.items()}
            for index, values in state["state"].items()}
    return {"state": full, "param_groups": state["param_groups"]}


def shard_state(full: dict, model: TensorParallelGPT, rank: int,
                world_size: int) -> tuple[dict, Callable[[dict], dict]]:
    """This rank's parts of the unsplit GPT's state_dict, and a function that cuts an
    unsplit optimizer state the same way (the inverse of the two gathers above)."""
    cut, by_index = splits(model), _parameter_splits(model)

    def mine(value: torch.Tensor, split: Split | None) -> torch.Tensor:
        return split.cut(value, rank, world_size) if split and value.dim() > 0 else value

    def optimizer_state(saved: dict) -> dict:
        return {"state": {i: {k: mine(v, by_index[i]) for k, v in values.items()}
                          for i, values in saved["state"].items()},
                "param_groups": saved["param_groups"]}

    return {key: mine(value, cut.get(key)) for key, value in full.items()}, optimizer_state
