"""A mixture-of-experts MLP for the GPT (chapter 5, "Many experts: expert parallelism";
Shazeer et al., 2017; Lepikhin et al., 2020, GShard; Fedus et al., 2021, Switch).

The dense block's MLP, W₂ GELU(W₁ x), becomes E experts of the same shape (d → 4d → d,
GELU) and a router, a Linear d → E without bias. For a token x (a position of a window):

* **router**: p(x) = softmax(W_r x), E probabilities;
* **top-k**: the token's k choices e₁ … e_k are its k most probable experts, ties broken
  by the lower expert number (a stable sort), so the same token picks the same experts
  on every rank that computes the same p(x);
* **output**: MoE(x) = Σ_j p_{e_j}(x) · Expert_{e_j}(x) over the choices that fit, with the
  router's probabilities as the gates (not renormalised over the k: the gate is the
  router's own confidence, as in Switch, whose k is 1). The block adds it to the residual
  stream, x + MoE(LN₂(x)), so a token whose choices are all dropped passes through the
  residual only.

**Capacity, per group.** Each expert takes at most C assignments per *group*, where a
group is one window of T tokens (GShard's groups): C = ⌈c · k · T / E⌉ for capacity
factor c (c = 1: room for a perfectly balanced window). Within a window the assignments
queue by choice first (every token's first choice before any second choice, as in
GShard), then by position; an assignment whose place in its expert's queue is ≥ C is
*dropped*. Why per window: a window is what every strategy keeps whole — a data shard is
a set of windows, a micro-batch too — so whether a token is dropped depends on its own
window only, never on how many windows a worker holds or on the number of ranks K. The
expert-parallel run (:mod:`parcourse.model_parallel.experts`) therefore drops exactly the
tokens the single run drops. A capacity over the whole batch would change with K.

**Load-balancing loss** (Switch's auxiliary loss, per window, then averaged): with f_i
the fraction of the window's k·T assignments routed to expert i (before the capacity
cut; a count, without gradient) and P_i = (1/T) Σ_x p_i(x) the router's mean probability,
ℓ_aux = E · Σ_i f_i · P_i, which is 1 when the window is spread evenly and E when every
token goes to one expert. The training loss is

    L = cross-entropy (mean over the N·T positions) + α · Σ_blocks (1/N) Σ_windows ℓ_aux,

α = :data:`AUX_WEIGHT` = 0.01 (Switch's value). Both terms are means over windows, so a
worker's shard weighted by B_k/B sums to the full batch's loss, as in data parallelism
(chapter 4); :func:`balance_loss` collects the second term after a forward.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

AUX_WEIGHT = 0.01   # α: the weight of the load-balancing loss in the training loss


class Routing(NamedTuple):
    """One MoE layer's decisions for N windows of T tokens, each token k choices."""

    experts: torch.Tensor   # (N, T, k) int64: the chosen expert of each choice
    gates: torch.Tensor     # (N, T, k): the router's probability of that expert
    slots: torch.Tensor     # (N, T, k) int64: the choice's place in its expert's queue
    kept: torch.Tensor      # (N, T, k) bool: slot < capacity (False: dropped)

    def detach(self) -> "Routing":
        return Routing(*(t.detach() for t in self))

    def tokens_per_expert(self, experts: int, kept: bool = False) -> torch.Tensor:
        """Assignments each expert received (``kept``: after the capacity cut), (E,)."""
        chosen = self.experts[self.kept] if kept else self.experts.flatten()
        return torch.bincount(chosen.flatten(), minlength=experts)

    @property
    def dropped(self) -> int:
        """Assignments over capacity: their token skips that expert."""
        return int((~self.kept).sum())


def capacity(tokens: int, experts: int, top_k: int, factor: float) -> int:
    """C = ⌈c · k · T / E⌉: assignments each expert takes per window of ``tokens``."""
    return math.ceil(factor * top_k * tokens / experts)


def route(probabilities: torch.Tensor, top_k: int, capacity_per_window: int) -> Routing:
    """Top-k choices of each token and their places in the queues, from the router's
    probabilities (N, T, E). The queue of a window: first choices by position, then second
    choices by position, …; places from 0."""
    n, t, e = probabilities.shape
    order = torch.sort(probabilities, dim=-1, descending=True, stable=True).indices
    experts = order[..., :top_k]                                   # (N, T, k)
    gates = probabilities.gather(-1, experts)
    queue = F.one_hot(experts.transpose(1, 2).reshape(n, top_k * t), e)   # (N, kT, E)
    slots = ((queue.cumsum(dim=1) - 1) * queue).sum(-1)            # place in its queue
    slots = slots.view(n, top_k, t).transpose(1, 2)
    return Routing(experts, gates, slots, slots < capacity_per_window)


def window_balance(probabilities: torch.Tensor, routing: Routing) -> torch.Tensor:
    """ℓ_aux = E · Σ_i f_i · P_i of each window, (N,)."""
    n, t, e = probabilities.shape
    counts = F.one_hot(routing.experts, e).sum(dim=(1, 2))          # (N, E)
    fractions = counts.to(probabilities.dtype) / counts.sum(-1, keepdim=True)
    return e * (fractions * probabilities.mean(dim=1)).sum(-1)


def expert_mlp(width: int) -> nn.Sequential:
    """An expert: the dense block's MLP, d → 4d → GELU → d."""
    return nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))


class MixtureOfExperts(nn.Module):
    """Router and E experts in place of a block's MLP: (N, T, d) → (N, T, d).

    After each forward: ``aux_loss`` (the mean of ℓ_aux over the windows, with its
    gradient) and ``routing`` (the layer's :class:`Routing`, detached). Every expert runs
    every step, on no tokens if none reach it, so each expert parameter always gets a
    gradient (zero if unused; DistributedDataParallel expects one for every parameter).
    """

    def __init__(self, width: int, experts: int, top_k: int = 1, capacity_factor: float = 1.0):
        super().__init__()
        if not 1 <= top_k <= experts:
            raise ValueError(f"top-k {top_k} must be between 1 and the {experts} experts")
        if not capacity_factor > 0:
            raise ValueError(f"the capacity factor must be positive (got {capacity_factor})")
        self.top_k, self.capacity_factor = top_k, capacity_factor
        self.router = nn.Linear(width, experts, bias=False)
        self.experts = nn.ModuleList(expert_mlp(width) for _ in range(experts))
        self.aux_loss: torch.Tensor | None = None
        self.routing: Routing | None = None

    @property
    def num_experts(self) -> int:
        """E (a rank of expert parallelism holds some of them, but routes over all)."""
        return self.router.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        probabilities = self.router(x).softmax(dim=-1)
        routing = route(probabilities, self.top_k,
                        capacity(t, self.num_experts, self.top_k, self.capacity_factor))
        self.aux_loss = window_balance(probabilities, routing).mean()
        self.routing = routing.detach()
        kept = routing.kept.flatten()                  # assignments in (window, token, choice)
        tokens = torch.arange(n * t, device=x.device).repeat_interleave(self.top_k)[kept]
        chosen = routing.experts.flatten()[kept]
        flat = x.reshape(n * t, d)
        outputs = self.run_experts(flat[tokens], chosen)            # (A, d)
        weighted = routing.gates.flatten()[kept].unsqueeze(-1) * outputs
        return torch.zeros_like(flat).index_add(0, tokens, weighted).view(n, t, d)

    def run_experts(self, inputs: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """Expert ``chosen[a]`` applied to ``inputs[a]`` for every assignment a: here all
        experts on this device; expert parallelism overrides it."""
        order = torch.argsort(chosen, stable=True)
        counts = torch.bincount(chosen, minlength=self.num_experts).tolist()
        parts = inputs[order].split(counts)
        outputs = torch.cat([expert(part) for expert, part in zip(self.experts, parts)])
        return outputs[torch.argsort(order)]


def layers(model: nn.Module) -> list[MixtureOfExperts]:
    """The model's MoE layers, in order (none for a dense model)."""
    return [m for m in model.modules() if isinstance(m, MixtureOfExperts)]


def balance_loss(model: nn.Module) -> torch.Tensor | float:
    """α · Σ over the model's MoE layers of their last forward's mean ℓ_aux; 0.0 for a
    model without any (the term :func:`parcourse.training.loop.replica_loss` adds)."""
    found = [m.aux_loss for m in layers(model) if m.aux_loss is not None]
    return AUX_WEIGHT * sum(found) if found else 0.0


def check(experts: int, top_k: int, capacity_factor: float, defaults) -> str | None:
    """Why the MoE options cannot build a model (None if they can); ``defaults`` holds
    the options' defaults (a TrainConfig)."""
    if experts < 0:
        return f"--experts must be 0 (the dense MLP) or more (got {experts})"
    if experts == 0:
        given = [f"--{name.replace('_', '-')}" for name, value in
                 (("top_k", top_k), ("capacity_factor", capacity_factor))
                 if value != getattr(defaults, name)]
        if given:
            verbs = "need --experts E: they choose" if len(given) > 1 else \
                "needs --experts E: it chooses"
            return (f"{' and '.join(given)} {verbs} how tokens reach the experts of a "
                    f"mixture (got --experts 0, the dense MLP)")
        return None
    if top_k < 1:
        return f"--top-k must be at least 1 (got {top_k})"
    if top_k > experts:
        return (f"--top-k {top_k} is larger than --experts {experts}: each token picks "
                f"k different experts")
    if not (capacity_factor > 0 and math.isfinite(capacity_factor)):
        return f"--capacity-factor must be a positive number (got {capacity_factor})"
    return None
