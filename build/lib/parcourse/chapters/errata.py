"""The source document's mathematical errors, computed (appendix "Errata").

* **§4.1, the data-parallel loss.** The source writes
  ``L = (1/N) Σ_{k=1}^{K} (1/B) Σ_{i=kB}^{(k+1)B−1} ℓ_i`` with ``N = K·B``. Two things
  are wrong: it divides by the sample count twice (``1/N`` and ``1/B``), which makes the
  loss — and every gradient — ``B`` times too small; and with ``k = 1 … K`` its ranges
  cover ``i = B … (K+1)B − 1``: they skip the first shard and run past the last sample.
  :func:`seed_ranges`, :func:`seed_loss` and :func:`correct_loss` compute both.
  The correct loss is ``Σ_{k=0}^{K−1} (B_k/N) · (1/B_k) Σ_{i ∈ shard k} ℓ_i = (1/N) Σ_i ℓ_i``.
* **§3.2.2, §4.2, §4.3.2, model parallelism.** A model split into stages has one loss,
  computed after the last stage; backward runs through the stages in reverse, each stage
  receiving the gradient of its output from the next. :func:`split_backward` runs this
  in one process and matches the unsplit model's gradients. The source instead averages
  "the K sub-models' losses": only the last stage has a loss (the others have nothing to
  compare their output with), so the average is ``L/K`` and every gradient is ``K`` times
  too small — :func:`averaged_stage_losses_backward` measures it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data import shard_bounds


def seed_ranges(K: int, B: int) -> list[range]:
    """The index ranges of the source's formula: ``i = kB … (k+1)B − 1`` for ``k = 1 … K``."""
    return [range(k * B, (k + 1) * B) for k in range(1, K + 1)]


def seed_loss(losses: torch.Tensor, K: int, B: int) -> dict:
    """The source's formula applied to per-sample losses ``ℓ_0 … ℓ_{N−1}`` (``N = K·B``).

    Returns the value over the indices that exist, which indices the ranges skip and
    which they ask for beyond the data. The value uses both of the source's factors,
    ``1/N`` and ``1/B``.
    """
    n = len(losses)
    if n != K * B:
        raise ValueError(f"the source's formula assumes N = K·B; got N = {n}, K = {K}, B = {B}")
    wanted = [i for r in seed_ranges(K, B) for i in r]
    present = [i for i in wanted if i < n]
    value = sum(losses[i] for i in present) / (n * B)
    return {"value": float(value), "skipped": sorted(set(range(n)) - set(wanted)),
            "beyond the data": [i for i in wanted if i >= n]}


def double_normalised_loss(losses: torch.Tensor, K: int) -> torch.Tensor:
    """The source's two factors with the index range corrected: ``(1/N) Σ_k mean_k``."""
    n = len(losses)
    means = [losses[slice(*shard_bounds(n, k, K))].mean() for k in range(K)]
    return torch.stack(means).sum() / n


def correct_loss(losses: torch.Tensor, K: int) -> torch.Tensor:
    """``Σ_k (B_k/N) · mean_k``: the data-parallel loss, equal to ``mean(ℓ)`` for any shards."""
    n = len(losses)
    parts = []
    for k in range(K):
        start, end = shard_bounds(n, k, K)
        parts.append((end - start) / n * losses[start:end].mean())
    return torch.stack(parts).sum()


def stages(model: nn.Sequential, cut: int) -> tuple[nn.Sequential, nn.Sequential]:
    """The model split after layer ``cut``: stage 0 = ``model[:cut]``, stage 1 the rest."""
    if not 0 < cut < len(model):
        raise ValueError(f"cut must lie between 1 and {len(model) - 1}, got {cut}")
    return model[:cut], model[cut:]


def _gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def unsplit_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """The reference: one model, one loss, one backward; gradients by parameter name."""
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return _gradients(model)


def split_backward(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, cut: int) -> dict:
    """Model parallelism as two stages would run it on two devices, in one process.

    Stage 0 computes its activation ``a`` and "sends" a detached copy; stage 1 computes
    the one loss and backward to its input, and "sends" ``∂L/∂a`` back; stage 0 finishes
    backward with ``a.backward(∂L/∂a)``. Each stage touches only its own parameters.
    """
    first, second = stages(model, cut)
    model.zero_grad()
    a = first(x)
    received = a.detach().requires_grad_()          # what crosses to the next device
    F.cross_entropy(second(received), y).backward()
    a.backward(received.grad)                       # what crosses back
    return _gradients(model)


def averaged_stage_losses_backward(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor,
                                   cut: int) -> dict:
    """The source's recipe: average "each sub-model's loss" over the K = 2 stages.

    Stage 0 has no loss of its own (its output is an activation, not a prediction), so
    its term is 0 and the average is ``L/2``; backward then gives half of every gradient.
    """
    first, second = stages(model, cut)
    model.zero_grad()
    stage_losses = [torch.zeros(()), F.cross_entropy(second(first(x)), y)]
    (sum(stage_losses) / len(stage_losses)).backward()
    return _gradients(model)

