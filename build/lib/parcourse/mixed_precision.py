"""Mixed precision: compute in bf16 or fp16, keep master weights in fp32 (chapter 5, "When
the model does not fit"; Micikevicius et al., 2018).

The matrix products run in a 16-bit format (``torch.autocast``), the parameters that the
optimizer updates stay in float32, and the loss is computed from float32 logits. The two
16-bit formats differ where it matters:

* **bf16** keeps float32's 8 exponent bits (range up to 3.4e38, smallest normal 1.2e-38)
  with 8 significant bits: each rounding is off by at most 2⁻⁸ ≈ 0.4 % relative, but
  nothing overflows or underflows that would not in float32. No loss scaling.
* **fp16** has 5 exponent bits and 11 significant bits: finer, but the largest value is
  65504 and anything below 2⁻²⁴ ≈ 6e-8 becomes 0. Late in training many gradients are
  that small, so the loss is multiplied by a scale S before backward (every gradient is
  then S times larger, lifted out of the underflow), and the gradients are divided by S
  before the optimizer step. If a gradient overflowed (inf or NaN anywhere, on any
  worker), the step is skipped and S halved; after ``growth_interval`` good steps S
  doubles (dynamic loss scaling). :func:`underflow_fraction` shows what it saves.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch

PRECISIONS = ("full", "bf16", "fp16")   # full: compute in the parameters' own dtype
COMPUTE = {"bf16": torch.bfloat16, "fp16": torch.float16}


def compute_dtype(precision: str) -> torch.dtype | None:
    """The 16-bit dtype of the products, or None for full precision."""
    return COMPUTE.get(precision)


def unsupported(precision: str, device: torch.device) -> str | None:
    """Why ``device`` cannot compute in ``precision``, or None when it can."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported(
            including_emulation=False):
        name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        return f"--precision bf16 needs a GPU with bfloat16 arithmetic (compute capability " \
               f"8.0 or later); {name} has {major}.{minor}: use --precision fp16"
    return None


def autocast(precision: str, device: torch.device):
    """The context in which forward runs: ``torch.autocast`` for bf16/fp16, else nothing."""
    dtype = compute_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class LossScaler:
    """Dynamic loss scaling for fp16; a scale of 1 that never changes otherwise."""

    def __init__(self, precision: str, initial: float = 2.0 ** 16, growth_interval: int = 200):
        self.enabled = precision == "fp16"
        self.scale = initial if self.enabled else 1.0
        self.growth_interval, self.good_steps, self.skipped = growth_interval, 0, 0

    def unscale(self, grads: Iterable[torch.Tensor],
                agree: Callable[[torch.Tensor], None] | None = None) -> bool:
        """Divide the gradients by the scale; True when all are finite on every worker.

        ``agree`` sums a one-element tensor over the workers (their gradients may be
        different shards, so all must learn of an overflow anywhere)."""
        if not self.enabled:
            return True
        grads = [g for g in grads if g is not None]
        bad = torch.zeros(1, dtype=torch.float32, device=grads[0].device if grads else "cpu")
        for g in grads:
            local = g.to_local() if hasattr(g, "to_local") else g   # FSDP2: this shard
            bad += (~torch.isfinite(local)).any().float()
            local.div_(self.scale)
        if agree is not None:
            agree(bad)
        return bad.item() == 0

    def update(self, finite: bool) -> None:
        """Halve the scale after an overflow; double it after enough good steps."""
        if not self.enabled:
            return
        if not finite:
            self.scale, self.good_steps, self.skipped = self.scale / 2, 0, self.skipped + 1
            return
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            self.scale, self.good_steps = self.scale * 2, 0


def underflow_fraction(grads: Iterable[torch.Tensor], scale: float = 1.0,
                       dtype: torch.dtype = torch.float16) -> float:
    """Fraction of the non-zero gradient entries that ``dtype`` rounds to zero once
    multiplied by ``scale`` (what loss scaling saves in fp16; nothing in bf16)."""
    flat = torch.cat([g.detach().reshape(-1).float() for g in grads])
    nonzero = flat[flat != 0]
    if nonzero.numel() == 0:
        return 0.0
    return float(((nonzero * scale).to(dtype) == 0).float().mean())
