"""Sequence parallelism (Korthikanti et al., 2022): the communication between the regions
of a transformer block (chapter 5, "Parallelism for transformers").

Tensor parallelism (:mod:`.tensor`) splits the attention and the MLP over T ranks, but
leaves every rank a whole copy of what lies between them: the LayerNorms, the residual
additions and their activations, (b, s, h) numbers each. Those operations work on each
position by itself, so they can be split along the *sequence* instead: rank r keeps
positions r·s/T … (r+1)·s/T − 1. The two regions then meet through two operators, each a
small autograd function below, which replace Megatron's f and g:

* **g** (:class:`AllGatherForwardReduceScatterBackward`), before a column-parallel
  layer: forward, all-gather the sequence slices (every rank needs all positions);
  backward, reduce-scatter the gradient (each rank's heads contributed a part of every
  position's gradient: sum them, and keep the own slice);
* **ḡ** (:class:`ReduceScatterForwardAllGatherBackward`), after a row-parallel layer:
  forward, reduce-scatter the partial sums (sum over ranks, keep the own slice);
  backward, all-gather the slices of the gradient.

A ring all-reduce of n bytes is a reduce-scatter followed by an all-gather, each moving
(T − 1)/T · n bytes per rank, so an all-reduce forward and one backward become an
all-gather and a reduce-scatter each way: the same bytes, and 1/T of the activations
between the layers.

The paper keeps only the slice of the gathered input of a column-parallel layer too,
and all-gathers it again in backward for the weight's gradient (§4.2.2): that is
:class:`GatheredLinear`, g fused with the layer. It saves s·b·h·(1 − 1/T) numbers per
such layer and costs one more all-gather in backward.

**Replicated parameters in the sequence region** (the LayerNorms' weights and biases, the
bias added after ḡ) see only their rank's positions, so each rank's gradient is its
slice's part of the sum over positions: the full gradient is the sum over the tensor
group, one all-reduce after backward (:func:`sum_over_ranks`). The replicated layers
outside it (embeddings, head) see every position on every rank and need nothing.

:data:`parcourse.model_parallel.tensor.COMMUNICATION` counts each collective by the size
of the whole tensor: the one all-reduced, the gathered output, the reduce-scattered input.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..errors import ConfigError
from .tensor import COMMUNICATION

# torch 2.13 names them all_gather_single / reduce_scatter_single; earlier releases
# all_gather_into_tensor / reduce_scatter_tensor (2.0 …), _all_gather_base before.
_ALL_GATHER = next(getattr(dist, name) for name in
                   ("all_gather_single", "all_gather_into_tensor", "_all_gather_base")
                   if hasattr(dist, name))
_REDUCE_SCATTER = next(getattr(dist, name) for name in
                       ("reduce_scatter_single", "reduce_scatter_tensor", "_reduce_scatter_base")
                       if hasattr(dist, name))
SEQUENCE = 1   # the sequence dimension of the (batch, sequence, width) activations


def _count(name: str, whole: torch.Tensor) -> None:
    record = COMMUNICATION[name]
    record[0] += whole.numel() * whole.element_size()
    record[1] += 1


def _ranks(group) -> tuple[int, int]:
    return dist.get_rank(group), dist.get_world_size(group)


def gather_sequence(part: torch.Tensor, group, name: str) -> torch.Tensor:
    """(b, s/T, h) slices → (b, s, h), rank order along the sequence: one all-gather."""
    _, ranks = _ranks(group)
    local = part.transpose(0, SEQUENCE).contiguous()      # the collective joins along dim 0
    whole = local.new_empty((ranks * local.shape[0], *local.shape[1:]))
    _ALL_GATHER(whole, local, group=group)
    _count(name, whole)
    return whole.transpose(0, SEQUENCE)


def reduce_scatter_sequence(whole: torch.Tensor, group, name: str) -> torch.Tensor:
    """(b, s, h) partial sums on every rank → this rank's (b, s/T, h) slice of their sum."""
    _, ranks = _ranks(group)
    full = whole.transpose(0, SEQUENCE).contiguous()
    part = full.new_empty((full.shape[0] // ranks, *full.shape[1:]))
    _REDUCE_SCATTER(part, full, group=group)
    _count(name, full)
    return part.transpose(0, SEQUENCE)


def own_slice(whole: torch.Tensor, group) -> torch.Tensor:
    """This rank's positions of a (b, s, h) tensor every rank holds whole (a copy, so the
    whole tensor can be freed)."""
    rank, ranks = _ranks(group)
    size = whole.shape[SEQUENCE] // ranks
    return whole.narrow(SEQUENCE, rank * size, size).contiguous()


class AllGatherForwardReduceScatterBackward(torch.autograd.Function):
    """g. Forward: all-gather the sequence slices. Backward: reduce-scatter the gradient
    (each rank's column slice contributes a part of ∂L/∂x at every position)."""

    @staticmethod
    def forward(ctx, part, group):
        ctx.group = group
        return gather_sequence(part, group, "forward all-gather")

    @staticmethod
    def backward(ctx, grad):
        return reduce_scatter_sequence(grad, ctx.group, "backward reduce-scatter"), None


class ReduceScatterForwardAllGatherBackward(torch.autograd.Function):
    """ḡ. Forward: reduce-scatter the row-parallel partial sums. Backward: all-gather the
    slices of the gradient (the sum's gradient is the same for every term)."""

    @staticmethod
    def forward(ctx, whole, group):
        ctx.group = group
        return reduce_scatter_sequence(whole, group, "forward reduce-scatter")

    @staticmethod
    def backward(ctx, grad):
        return gather_sequence(grad, ctx.group, "backward all-gather"), None


class SliceForwardAllGatherBackward(torch.autograd.Function):
    """Into the sequence region from a replicated layer (the embeddings). Forward: keep
    this rank's positions (no communication). Backward: all-gather the slices of the
    gradient, so the replicated layer gets the whole gradient on every rank."""

    @staticmethod
    def forward(ctx, whole, group):
        ctx.group = group
        return own_slice(whole, group)

    @staticmethod
    def backward(ctx, grad):
        return gather_sequence(grad, ctx.group, "backward all-gather (embeddings)"), None


class AllGatherForwardSliceBackward(torch.autograd.Function):
    """Out of the sequence region into a replicated layer (the head). Forward: all-gather
    the slices. Backward: keep this rank's positions of the gradient, which every rank
    computed whole and alike (no communication)."""

    @staticmethod
    def forward(ctx, part, group):
        ctx.group = group
        return gather_sequence(part, group, "forward all-gather (head)")

    @staticmethod
    def backward(ctx, grad):
        return own_slice(grad, ctx.group), None


class GatheredLinear(torch.autograd.Function):
    """g fused with the column-parallel product after it, keeping only the slice
    (Korthikanti et al., 2022, §4.2.2). Forward: all-gather x_s into x, y = x Wᵀ + b;
    saved: x_s, not x. Backward: all-gather x_s again, ∂W = ∂yᵀ x, ∂b = Σ ∂y, and
    reduce-scatter ∂x = ∂y W along the sequence (as g's backward)."""

    @staticmethod
    def forward(ctx, part, weight, bias, group):
        ctx.group = group
        ctx.save_for_backward(part, weight)
        return F.linear(gather_sequence(part, group, "forward all-gather"), weight, bias)

    @staticmethod
    def backward(ctx, grad):
        part, weight = ctx.saved_tensors
        whole = gather_sequence(part, ctx.group, "backward all-gather (re-gather)")
        rows, inputs = grad.reshape(-1, grad.shape[-1]), whole.reshape(-1, whole.shape[-1])
        grad_input = reduce_scatter_sequence(grad @ weight, ctx.group, "backward reduce-scatter")
        grad_bias = rows.sum(0) if ctx.needs_input_grad[2] else None
        return grad_input, rows.t() @ inputs, grad_bias, None


def sum_over_ranks(parameters, group) -> None:
    """Replace each parameter's gradient by its sum over the tensor group: one all-reduce
    of all of them, flattened (the rule for replicated parameters in the sequence region);
    nothing for none (a pipeline stage that holds no block)."""
    grads = [p.grad for p in parameters]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    _count("gradient all-reduce (sequence region)", flat)
    for g, summed in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(summed.view_as(g))


def check_sequence(sequence: int, ranks: int, flag: str = "--workers") -> None:
    """A clear error unless the T ranks split each window evenly (``flag`` sets T)."""
    if sequence % ranks:
        lower = sequence - sequence % ranks
        raise ConfigError(f"--sequence-parallel splits each window of --sequence {sequence} "
                          f"tokens over {flag} {ranks}: use a --sequence that is a "
                          f"multiple of {ranks}, e.g. {lower or ranks} or {lower + ranks}")
