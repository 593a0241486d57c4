"""The ledger of what each rank holds under DDP and ZeRO, as formulas (chapter 5, "When the
model does not fit").

With Ψ parameters, e bytes per element and Adam's two moments, one rank holds

==========  ==========  ===========  =================  ====================
variant     parameters  gradients    optimizer state    sent per step
==========  ==========  ===========  =================  ====================
DDP         Ψe          Ψe           2Ψe                2(K−1)/K · Ψe
ZeRO-1      Ψ'e         Ψ'e          2Ψ'e / K           (K−1)/K · 2Ψ'e
ZeRO-2      Ψ'e         Ψ'e / K      2Ψ'e / K           (K−1)/K · 2Ψ'e
ZeRO-3      Ψ'e / K     Ψ'e / K      2Ψ'e / K           (K−1)/K · 3Ψ'e
==========  ==========  ===========  =================  ====================

where Ψ' = Σ_g K·⌈N_g/K⌉ is Ψ padded group by group (:mod:`.flat_shards`), plus Adam's
``step`` counter, one 4-byte scalar per optimizer tensor. ZeRO-3 sends 1.5× what DDP
sends: two all-gathers (forward, backward) and a reduce-scatter against a reduce-scatter
and an all-gather — a little less here, since the last block, whose backward comes right
after its forward, stays whole in between and is gathered once. :func:`ideal_bytes_per_parameter` is the same ledger per parameter
without padding, also for mixed precision (Rajbhandari et al., 2020: 2 + 2 + 12 bytes:
fp16/bf16 parameters and gradients, fp32 master weights and moments).
"""

from __future__ import annotations

import torch

from ..models import build_model
from .flat_shards import group_parameters

VARIANTS = ("ddp", "zero1", "zero2", "zero3")
STEP_BYTES = 4  # Adam's step counter: a float32 scalar tensor per optimizer tensor


def _groups(model_name: str, variant: str, bucket_bytes: int, dtype: torch.dtype):
    model = build_model(model_name, dtype=dtype)
    if variant == "ddp":
        return [p.numel() for p in model.parameters()]
    grouped = group_parameters(model, None if variant == "zero3" else bucket_bytes)
    return [sum(p.numel() for p in params) for _, params in grouped]


def state_bytes(model_name: str, variant: str, world_size: int, optimizer: str = "adam",
                dtype: torch.dtype = torch.float32, bucket_bytes: int = 1 << 20) -> dict:
    """Exact bytes of parameters, gradients and optimizer state on one rank at the step."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    e, k = torch.empty(0, dtype=dtype).element_size(), world_size
    sizes = _groups(model_name, variant, bucket_bytes, dtype)
    moments, steps = (2, STEP_BYTES) if optimizer == "adam" else (0, 0)
    if variant == "ddp":
        psi = sum(sizes)
        return {"parameters": psi * e, "gradients": psi * e,
                "optimizer state": moments * psi * e + steps * len(sizes)}
    padded = sum(-(-n // k) * k for n in sizes)
    shard = padded // k
    return {"parameters": (shard if variant == "zero3" else padded) * e,
            "gradients": (padded if variant == "zero1" else shard) * e,
            "optimizer state": moments * shard * e + steps * len(sizes)}


def bytes_sent(model_name: str, variant: str, world_size: int,
               dtype: torch.dtype = torch.float32, bucket_bytes: int = 1 << 20) -> float:
    """Bytes one rank sends per step with ring collectives (the table above)."""
    e, k = torch.empty(0, dtype=dtype).element_size(), world_size
    sizes = _groups(model_name, variant, bucket_bytes, dtype)
    if variant == "ddp":
        return 2 * (k - 1) / k * sum(sizes) * e
    padded = [-(-n // k) * k for n in sizes]
    if variant == "zero3":   # the last block stays whole from its forward to its backward
        return (k - 1) / k * e * (3 * sum(padded) - padded[-1])
    return (k - 1) / k * sum(padded) * e * 2


def ideal_bytes_per_parameter(stage: int, world_size: int, mixed: bool = False) -> dict:
    """Bytes per parameter by kind for ZeRO ``stage`` (0: DDP), Adam, no padding."""
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0 (DDP), 1, 2 or 3, got {stage!r}")
    p, g, o = (2, 2, 12) if mixed else (4, 4, 8)
    k = world_size
    return {"parameters": p / k if stage >= 3 else p,
            "gradients": g / k if stage >= 2 else g,
            "optimizer state": o / k if stage >= 1 else o}


def between_steps_bytes(model_name: str, variant: str, world_size: int, optimizer: str = "adam",
                        dtype: torch.dtype = torch.float32, bucket_bytes: int = 1 << 20) -> int:
    """What a rank keeps from one step to the next (gradients set to None in between,
    except ZeRO-1's flat buffer; DDP keeps its buckets, a second Ψe: its default
    ``gradient_as_bucket_view=False``)."""
    held = state_bytes(model_name, variant, world_size, optimizer, dtype, bucket_bytes)
    keep = held["parameters"] + held["optimizer state"]
    if variant == "zero1":
        keep += held["gradients"]
    if variant == "ddp":
        keep += held["gradients"]            # the buckets
    return keep


def predicted_peak(single_peak: int, model_name: str, variant: str, world_size: int,
                   optimizer: str = "adam", dtype: torch.dtype = torch.float32,
                   bucket_bytes: int = 1 << 20) -> int:
    """A rank's peak, predicted from the single-device peak on the same local batch.

    One device peaks in backward at P + O + (activations and gradients alive then). A
    sharded rank computes the same forward and backward on its samples, so only what it
    keeps between steps differs (:func:`between_steps_bytes`), and: ZeRO-1 accumulates the
    gradients into its kept flat buffer instead of new tensors (−Ψe); ZeRO-3 holds the
    block that computes gathered. The peak comes where the activations are widest; for the
    book's models (and any whose first layers see the largest tensors) that is the first
    block's backward, so ZeRO-3 adds the first block, with nothing left to prefetch.
    """
    e = torch.empty(0, dtype=dtype).element_size()
    sizes = _groups(model_name, "ddp", bucket_bytes, dtype)
    single = state_bytes(model_name, "ddp", 1, optimizer, dtype, bucket_bytes)
    peak = (single_peak - single["parameters"] - single["optimizer state"]
            + between_steps_bytes(model_name, variant, world_size, optimizer, dtype,
                                  bucket_bytes))
    if variant == "zero1":
        peak -= sum(sizes) * e
    if variant == "zero3":
        peak += _groups(model_name, "zero3", bucket_bytes, dtype)[0] * e
    return peak
