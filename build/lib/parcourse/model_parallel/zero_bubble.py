"""The backward pass split in two: B, the input gradient, now; W, the weight gradients,
later (chapter 5, zero-bubble pipelines; Qi et al., 2024).

For a layer y = f(x; θ) with upstream gradient g = ∂L/∂y, back-propagation computes two
things: ∂L/∂x = (∂f/∂x)ᵀ g, which the layer below needs next, and ∂L/∂θ = (∂f/∂θ)ᵀ g,
which nothing else waits for (for a linear layer y = xWᵀ + b: ∂L/∂x = gW, and
∂L/∂W = gᵀx, ∂L/∂b = Σ g). A pipeline stage that sends ∂L/∂x to the previous stage as
soon as it has it, and forms ∂L/∂θ later, shortens the critical path by the W passes;
ZB-H1 (:mod:`parcourse.model_parallel.schedules`) puts them into the bubble.

How, with autograd: :func:`defer_weight_gradients` makes every *unit* of a module — a
layer with parameters of its own (a Linear, a LayerNorm, an Embedding, the GPT's head
with its norm) — run on a detached copy of its input, x̃, inside one autograd function:

* forward: y = unit(x̃), with its own small graph from y back to x̃ and θ;
* the outer backward (B) reaches the function with g and returns
  ``torch.autograd.grad(y, x̃, g, retain_graph=True)``: the input gradient only, so no
  parameter's gradient is formed; it keeps (y, g) for later;
* W, later: ``torch.autograd.grad(y, θ, g)`` for all kept pairs of the micro-batch at
  once, added to θ.grad, and the small graphs are freed.

Layers without parameters (ReLU, attention's softmax, residual sums) stay in the outer
graph and run in B. Every product of the ordinary backward is computed once, in B or in
W: the gradients are the same as ``loss.backward()``'s up to the order of rounding.
A tied weight (the GPT's token table used by the embeddings and the head) gets one
contribution from each unit that uses it.
"""

from __future__ import annotations

import torch
from torch import nn


class WeightGradients:
    """The (y, g, parameters) triples that W passes turn into parameter gradients.

    The stage calls :meth:`collect` before the forward pass of a micro-batch: the
    returned list fills during that micro-batch's B pass, and :meth:`apply` runs its W.
    """

    def __init__(self):
        self.current: list | None = None
        self.units: list[nn.Module] = []
        self.anchor = torch.zeros((), requires_grad=True)  # makes every unit's output
        # require grad, even one whose input does not (token ids)

    def collect(self) -> list:
        self.current = []
        return self.current

    def restore(self) -> None:
        """Give the units back their own forward (and backward)."""
        for unit in self.units:
            del unit.forward
        self.units.clear()

    @staticmethod
    def apply(pending: list) -> None:
        """The W pass of one micro-batch: ∂L/∂θ = Σ (∂y/∂θ)ᵀ g over the kept unit calls,
        in one call of the autograd engine (the units' small graphs share no tensor but
        their parameters, so the sum is each unit's own weight gradient, and a tied
        weight's is the sum of its uses)."""
        if not pending:
            return
        outputs, grads, parameters = [], [], {}
        for y, g, owned in pending:
            outputs.append(y)
            grads.append(g)
            parameters.update((id(p), p) for p in owned)
        pending.clear()
        parameters = list(parameters.values())
        results = torch.autograd.grad(outputs, parameters, grads, allow_unused=True)
        for p, grad in zip(parameters, results):
            if grad is None:
                continue
            if p.grad is None:
                p.grad = grad
            else:
                p.grad += grad


class _Unit(torch.autograd.Function):
    """x → unit(x) with the unit's own graph kept aside: backward gives ∂L/∂x only."""

    @staticmethod
    def forward(ctx, anchor, x, run, parameters, pending):
        leaf = x.detach().requires_grad_(x.requires_grad)
        with torch.enable_grad():
            y = run(leaf)
        ctx.leaf, ctx.y, ctx.parameters, ctx.pending = leaf, y, parameters, pending
        return y.detach()

    @staticmethod
    def backward(ctx, g):
        leaf, y = ctx.leaf, ctx.y
        grad_x = None
        if leaf.requires_grad:
            (grad_x,) = torch.autograd.grad(y, leaf, g, retain_graph=True)
        ctx.pending.append((y, g, ctx.parameters))
        ctx.leaf = ctx.y = None
        return None, grad_x, None, None, None


def units(module: nn.Module) -> list[nn.Module]:
    """The modules that have parameters of their own (with their children), outermost
    first; modules without any are looked into."""
    if any(p is not None for p in module._parameters.values()):
        return [module]
    return [u for child in module.children() for u in units(child)]


def defer_weight_gradients(module: nn.Module) -> WeightGradients:
    """Make ``module``'s backward compute input gradients only; its weight gradients wait
    in the returned :class:`WeightGradients` (see the module's docstring)."""
    store = WeightGradients()
    for unit in units(module):
        parameters = tuple(p for p in unit.parameters() if p.requires_grad)
        run = unit.forward

        def forward(x, run=run, parameters=parameters):
            if store.current is None:
                raise RuntimeError("call WeightGradients.collect() before the forward pass")
            return _Unit.apply(store.anchor, x, run, parameters, store.current)

        unit.forward = forward
        store.units.append(unit)
    return store
