"""Activation recomputation per block (chapter 5, "When the model does not fit"; Chen et
al., 2016, "Training deep nets with sublinear memory cost").

Backward needs what forward saved: each layer's input (and for ReLU and max-pooling, a
mask or the indices). With recomputation a block saves only its input; its backward first
runs its forward again (``torch.utils.checkpoint``, non-reentrant) and then back-propagates
through the fresh activations. Memory held between forward and backward falls from the sum
of every block's activations to the blocks' inputs plus one block's activations; time
grows by about one more forward pass (≈ a third of a step, forward being ≈ half of
backward). The function computed is the same: the second forward repeats the first
exactly (the models have no dropout, and ``torch.utils.checkpoint`` restores the random
state if they had).

A block is what :func:`blocks` says: a model's own ``blocks()`` when it defines one,
otherwise, for an ``nn.Sequential``, each layer with parameters and the parameter-free
layers after it (the leading ones join the first block).
"""

from __future__ import annotations

import types

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def blocks(model: nn.Module) -> list[nn.Sequential]:
    """The model's blocks, in order; ValueError for a model that has none."""
    if hasattr(model, "blocks"):
        return list(model.blocks())
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"{type(model).__name__} has no blocks to recompute: it is not an "
                         f"nn.Sequential and defines no blocks()")
    groups: list[list[nn.Module]] = [[]]
    for layer in model:
        if _has_parameters(layer) and any(_has_parameters(done) for done in groups[-1]):
            groups.append([])
        groups[-1].append(layer)
    if len(groups) < 2:
        raise ValueError(f"{type(model).__name__} has no blocks to recompute: it has fewer "
                         f"than two layers with parameters")
    return [nn.Sequential(*group) for group in groups]


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def recompute(model: nn.Module) -> nn.Module:
    """Make ``model``'s forward recompute each block in backward; returns ``model``
    (its parameters, names and state_dict are unchanged)."""
    parts = blocks(model)

    def forward(self, x):
        for part in parts:
            x = checkpoint(part, x, use_reentrant=False) if torch.is_grad_enabled() else part(x)
        return x

    model.forward = types.MethodType(forward, model)
    return model


def in_backward() -> bool:
    """True while autograd's backward runs (a recomputing forward, for instance)."""
    return torch._C._current_graph_task_id() != -1
