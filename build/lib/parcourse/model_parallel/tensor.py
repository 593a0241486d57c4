"""Tensor parallelism in the style of Megatron-LM (Shoeybi et al., 2019) (chapters 3 and 5).

A linear layer y = x Wᵀ + b with W of shape (out, in) can be split over K workers in two
ways:

* **column-parallel**: worker k holds rows k of W (out/K output features). Every worker
  needs the whole input x and produces its slice y_k = x W_kᵀ + b_k of the output.
* **row-parallel**: worker k holds columns k of W (in/K input features). Worker k gets
  the matching slice x_k of the input and computes a partial product x_k W_kᵀ; the
  output is their sum Σ_k x_k W_kᵀ + b, one all-reduce.

A column-parallel layer before an elementwise activation and a row-parallel one after it
need nothing in between: an MLP block Linear → ReLU → Linear costs one all-reduce forward
(of the output, B × out numbers) and one backward (of the input's gradient, B × in).
Attention splits by heads: QKV column-parallel, the output projection row-parallel. The
communication is small autograd functions named for what runs in each direction;
:data:`COMMUNICATION` counts the bytes they move.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

# bytes moved and calls made by each collective of this module, in this process
COMMUNICATION: dict[str, list[int]] = defaultdict(lambda: [0, 0])


def _all_reduce(t: torch.Tensor, group, name: str) -> torch.Tensor:
    t = t.contiguous()
    dist.all_reduce(t, group=group)
    record = COMMUNICATION[name]
    record[0] += t.numel() * t.element_size()
    record[1] += 1
    return t


class IdentityForwardAllReduceBackward(torch.autograd.Function):
    """Forward: x as is (every worker needs all of it). Backward: all-reduce the
    gradient, because each worker's column slice contributes a part of ∂L/∂x."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad.clone(), ctx.group, "backward all-reduce"), None


class AllReduceForwardIdentityBackward(torch.autograd.Function):
    """Forward: all-reduce the partial sums x_k W_kᵀ into the output. Backward: the
    gradient as is (the sum's gradient with respect to each term is the same)."""

    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x.clone(), group, "forward all-reduce")

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _shard(size: int, rank: int, world_size: int, what: str) -> slice:
    if size % world_size:
        raise ConfigError(f"{what} has {size} features, which cannot be split evenly over "
                          f"{world_size} workers: use a number of workers that divides {size}")
    part = size // world_size
    return slice(rank * part, (rank + 1) * part)


class ColumnParallelLinear(nn.Module):
    """This worker's rows of a Linear layer: output features ``out_features/K · k …``."""

    def __init__(self, linear: nn.Linear, rank: int, world_size: int, group=None):
        super().__init__()
        rows = _shard(linear.out_features, rank, world_size, "a Linear layer's output")
        self.weight = nn.Parameter(linear.weight.detach()[rows].clone())
        self.bias = (nn.Parameter(linear.bias.detach()[rows].clone())
                     if linear.bias is not None else None)
        self.group, self.world_size = group, world_size

    def forward(self, x):
        x = IdentityForwardAllReduceBackward.apply(x, self.group)
        return F.linear(x, self.weight, self.bias)

    def full_state(self) -> dict:
        """The unsplit layer's weight and bias, gathered from every worker."""
        return {"weight": _gather(self.weight, 0, self.world_size, self.group),
                **({"bias": _gather(self.bias, 0, self.world_size, self.group)}
                   if self.bias is not None else {})}


class RowParallelLinear(nn.Module):
    """This worker's columns of a Linear layer; its input is this worker's feature slice.
    The bias is added once, after the all-reduce."""

    def __init__(self, linear: nn.Linear, rank: int, world_size: int, group=None):
        super().__init__()
        cols = _shard(linear.in_features, rank, world_size, "a Linear layer's input")
        self.weight = nn.Parameter(linear.weight.detach()[:, cols].clone())
        self.bias = (nn.Parameter(linear.bias.detach().clone())
                     if linear.bias is not None else None)
        self.group, self.world_size = group, world_size

    def forward(self, x_slice):
        y = AllReduceForwardIdentityBackward.apply(F.linear(x_slice, self.weight), self.group)
        return y + self.bias if self.bias is not None else y

    def full_state(self) -> dict:
        return {"weight": _gather(self.weight, 1, self.world_size, self.group),
                **({"bias": self.bias.detach().clone()} if self.bias is not None else {})}


def _gather(t: torch.Tensor, dim: int, world_size: int, group) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(world_size)]
    dist.all_gather(parts, t.detach().contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def megatron_pairs(model: nn.Sequential) -> list[tuple[int, int]]:
    """Indices (i, j) of Linear layers to split as column (i) then row (j): a Linear,
    elementwise layers only (activations, dropout), then a Linear. Pairs do not overlap;
    other layers stay whole on every worker."""
    elementwise = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.Dropout, nn.Identity)
    pairs, i, layers = [], 0, list(model)
    while i < len(layers):
        if isinstance(layers[i], nn.Linear):
            j = i + 1
            while j < len(layers) and isinstance(layers[j], elementwise):
                j += 1
            if j < len(layers) and j > i + 1 and isinstance(layers[j], nn.Linear):
                pairs.append((i, j))
                i = j + 1
                continue
        i += 1
    return pairs


def check_splittable(model: nn.Sequential, world_size: int) -> list[tuple[int, int]]:
    """The Megatron pairs of ``model``; a clear error if there are none or if K does not
    divide their hidden width."""
    pairs = megatron_pairs(model)
    if not pairs:
        raise ConfigError(f"{type(model).__name__} has no Linear → activation → Linear block "
                          f"to split over workers")
    for i, _ in pairs:
        _shard(model[i].out_features, 0, world_size, f"layer {i}")
    return pairs


def parallelize(model: nn.Sequential, rank: int, world_size: int, group=None) -> nn.Sequential:
    """Replace each Megatron pair of ``model`` (in place) by this worker's column- and
    row-parallel halves; every other layer is kept whole (replicated)."""
    for i, j in check_splittable(model, world_size):
        model[i] = ColumnParallelLinear(model[i], rank, world_size, group)
        model[j] = RowParallelLinear(model[j], rank, world_size, group)
    return model


def full_state_dict(model: nn.Sequential) -> dict:
    """The unsplit model's state_dict (plain key names), gathered from every worker; every
    worker must call it."""
    state = {}
    for name, layer in model.named_children():
        if isinstance(layer, (ColumnParallelLinear, RowParallelLinear)):
            items = layer.full_state().items()
        else:
            items = layer.state_dict().items()
        state.update({f"{name}.{key}": value.detach().cpu().clone() for key, value in items})
    return state


def attention(x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor,
              heads: int, head_dim: int) -> torch.Tensor:
    """softmax(Q Kᵀ/√d) V for each of ``heads`` heads; the projection's rows are
    [Q heads; K heads; V heads]. x: (batch, sequence, width) → (batch, sequence, heads·d)."""
    b, s, _ = x.shape
    q, k, v = F.linear(x, qkv_weight, qkv_bias).view(b, s, 3, heads, head_dim).unbind(2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))                  # (b, heads, s, d)
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, heads * head_dim)


def split_dims(model: nn.Module) -> list:
    """For each parameter of ``model`` (in ``parameters()`` order): the dimension along
    which it is split over the workers, or None if every worker holds all of it."""
    dims = []
    for layer in model.modules():
        own = list(layer.parameters(recurse=False))
        if isinstance(layer, ColumnParallelLinear):
            dims += [0] * len(own)
        elif isinstance(layer, RowParallelLinear):
            dims += [1] + [None] * (len(own) - 1)
        else:
            dims += [None] * len(own)
    return dims


def full_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module, world_size: int,
                         group=None) -> dict:
    """The optimizer state of the unsplit model: each per-parameter tensor (Adam's
    moments) gathered along its parameter's split dimension; every worker must call it."""
    state = optimizer.state_dict()
    dims = split_dims(model)
    full = {}
    for index, values in state["state"].items():
        full[index] = {key: (_gather(value, dims[index], world_size, group)
                             if dims[index] is not None and value.dim() > 0 else value)
                       for key, value in values.items()}
    return {"state": full, "param_groups": state["param_groups"]}


def shard_state(full: dict, model: nn.Module, rank: int,
                world_size: int) -> tuple[dict, Callable[[dict], dict]]:
    """This worker's slices of an unsplit model's state_dict, and a function that slices
    an unsplit optimizer state the same way (the inverse of the two gathers above)."""
    dims = split_dims(model)

    def mine(value, dim):
        if dim is None or value.dim() == 0:
            return value
        part = _shard(value.shape[dim], rank, world_size, "a saved tensor")
        return value.narrow(dim, part.start, part.stop - part.start)

    names = [name for name, _ in model.named_parameters()]
    by_name = dict(zip(names, dims))
    model_state = {k: mine(v, by_name.get(k)) for k, v in full.items()}

    def optimizer_state(saved: dict) -> dict:
        return {"state": {i: {k: mine(v, dims[i]) for k, v in values.items()}
                          for i, values in saved["state"].items()},
                "param_groups": saved["param_groups"]}

    return model_state, optimizer_state


class SelfAttention(nn.Module):
    """Plain multi-head self-attention, the single-device reference."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.heads, self.head_dim = heads, width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x):
        return self.out(attention(x, self.qkv.weight, self.qkv.bias, self.heads, self.head_dim))


class ParallelSelfAttention(nn.Module):
    """This worker's heads of a :class:`SelfAttention`: its rows of the Q, K and V
    projections (column-parallel) and its columns of the output projection (row-parallel,
    whole heads). One all-reduce forward, one backward, as in the MLP block."""

    def __init__(self, reference: SelfAttention, rank: int, world_size: int, group=None):
        super().__init__()
        mine = _shard(reference.heads, rank, world_size, "an attention layer's heads")
        width, d = reference.out.in_features, reference.head_dim
        rows = torch.cat([torch.arange(mine.start * d, mine.stop * d) + part * width
                          for part in range(3)])                        # my Q, K and V rows
        self.heads, self.head_dim, self.group = mine.stop - mine.start, d, group
        self.qkv_weight = nn.Parameter(reference.qkv.weight.detach()[rows].clone())
        self.qkv_bias = nn.Parameter(reference.qkv.bias.detach()[rows].clone())
        self.out = RowParallelLinear(reference.out, rank, world_size, group)

    def forward(self, x):
        x = IdentityForwardAllReduceBackward.apply(x, self.group)
        return self.out(attention(x, self.qkv_weight, self.qkv_bias, self.heads, self.head_dim))


def mlp_block_traffic(rank: int, world_size: int, batch: int = 64, width: int = 256,
                      hidden: int = 1024) -> dict:
    """Run one forward and backward of a Linear(width, hidden) → ReLU → Linear(hidden,
    width) block split over the workers (a :func:`parcourse.launch.run` worker); return
    the bytes each collective moved and the largest difference from the unsplit block's
    output and input gradient."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))
    x = torch.randn(batch, width, requires_grad=True)
    block(x).square().sum().backward()
    expected_y, expected_grad = block(x).detach(), x.grad.clone()
    x.grad = None
    COMMUNICATION.clear()
    y = parallelize(block, rank, world_size)(x)
    y.square().sum().backward()
    return {"bytes": {name: record[0] for name, record in COMMUNICATION.items()},
            "output_error": (y - expected_y).abs().max().item(),
            "input_gradient_error": (x.grad - expected_grad).abs().max().item()}
