"""What each rank holds, measured against the formula: ``python -m parcourse bench memory``
(chapter 5, "When the model does not fit").

On K workers, for DDP and each ZeRO stage: the bytes of parameters, gradients and optimizer
state counted from the tensors themselves at the optimizer step, beside the exact formula
of :mod:`parcourse.data_parallel.zero_ledger` (padding included); the peak of a whole step
(:class:`parcourse.memory_meter.PeakMemory`) beside its prediction; the step time relative
to DDP's; and the bytes each rank sends per step.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from .. import collectives, launch
from ..data_parallel import zero_ledger
from ..data_parallel.zero import Zero
from ..memory_meter import PeakMemory, tensor_bytes
from ..models import IMAGE_SHAPE, NUM_CLASSES, build_model
from ..training.loop import make_optimizer

VARIANTS = ("ddp", "zero1", "zero2", "zero3")
KINDS = ("parameters", "gradients", "optimizer state")


def _batch(batch_size: int, dtype: torch.dtype, device, seed: int):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size, *IMAGE_SHAPE, generator=generator).to(device, dtype)
    return x, torch.randint(NUM_CLASSES, (batch_size,), generator=generator).to(device)


class _Run:
    """One variant's training step in three parts, and what it holds."""

    def __init__(self, model: nn.Module, optimizer, forward, zero_grad, update, held, live,
                 close=lambda: None):
        self.model, self.optimizer, self.forward = model, optimizer, forward
        self.zero_grad, self.update, self.held, self.live, self.close = \
            zero_grad, update, held, live, close

    def step(self, x, y) -> None:
        self.zero_grad()
        F.cross_entropy(self.forward(x), y).backward()
        self.update()


def _optimizer_tensors(optimizer) -> list[torch.Tensor]:
    return [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]


def _ddp(model: nn.Module, optimizer_name: str, device) -> _Run:
    """DDP with its default ``gradient_as_bucket_view=False``: its buckets hold a second
    copy of the gradients while they are all-reduced."""
    replica = nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(optimizer_name, replica.parameters(), 1e-3)
    params = list(model.parameters())

    def held():
        return {"parameters": tensor_bytes(params),
                "gradients": tensor_bytes(p.grad for p in params if p.grad is not None),
                "optimizer state": tensor_bytes(_optimizer_tensors(optimizer))}

    def live():
        return [*params, *(p.grad for p in params if p.grad is not None),
                *_optimizer_tensors(optimizer)]

    return _Run(model, optimizer, replica, optimizer.zero_grad, optimizer.step, held, live)


def _zero(stage: int):
    def build(model: nn.Module, optimizer_name: str, device) -> _Run:
        rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        engine = Zero(model, stage, lambda shards: make_optimizer(optimizer_name, shards, 1e-3),
                      rank, world_size)

        def live():
            return [*engine.full, *engine.masters, *(g for g in engine.grads if g is not None),
                    *_optimizer_tensors(engine.optimizer)]

        return _Run(model, engine.optimizer, model, engine.zero_grad, engine.step,
                    lambda: engine.held, live, engine.close)
    return build


BUILDERS = {"ddp": _ddp, "zero1": _zero(1), "zero2": _zero(2), "zero3": _zero(3)}


def _single_peak(model_name: str, optimizer_name: str, x, y, device) -> int:
    """The peak of one process's step on this rank's samples, the whole model (no
    communication): what :func:`~parcourse.data_parallel.zero_ledger.predicted_peak`
    starts from."""
    model = build_model(model_name, seed=0, dtype=x.dtype).to(device)
    optimizer = make_optimizer(optimizer_name, model.parameters(), 1e-3)
    run = _Run(model, optimizer, model, optimizer.zero_grad, optimizer.step, None, None)
    run.step(x, y)
    with PeakMemory(device, track=[*model.parameters(), *_optimizer_tensors(optimizer),
                                   x, y]) as peak:
        run.step(x, y)
    return peak.peak


def memory_worker(rank: int, world_size: int, model_name: str, optimizer_name: str,
                  dtype: str, batch_size: int, variants=VARIANTS, repeats: int = 5) -> dict:
    """Per variant: held bytes by kind, the formula, the measured and predicted peak, the
    median step time and the bytes this rank sent in one step."""
    device = launch.device()
    torch_dtype = getattr(torch, dtype)
    x, y = _batch(batch_size // world_size, torch_dtype, device, seed=rank)
    out = {"single": _single_peak(model_name, optimizer_name, x, y, device)}
    for variant in variants:
        model = build_model(model_name, seed=0, dtype=torch_dtype).to(device)
        run = BUILDERS[variant](model, optimizer_name, device)
        run.step(x, y)                                # the optimizer state exists from now
        collectives.reset_bytes_sent()
        with PeakMemory(device, track=[*run.live(), x, y]) as peak:
            run.zero_grad()
            loss = F.cross_entropy(run.forward(x), y)
            after_forward = peak.current()
            loss.backward()
            del loss
            run.update()
        sent = collectives.bytes_sent()
        times = []
        for _ in range(repeats):
            torch.distributed.barrier()
            start = time.perf_counter()
            run.step(x, y)
            times.append(time.perf_counter() - start)
        run.close()
        formula = zero_ledger.state_bytes(model_name, variant, world_size, optimizer_name,
                                          torch_dtype)
        predicted = zero_ledger.predicted_peak(out["single"], model_name, variant, world_size,
                                               optimizer_name, torch_dtype)
        out[variant] = {"held": run.held(), "formula": formula, "peak": peak.peak,
                        "predicted_peak": predicted,
                        "after_forward": after_forward, "method": peak.method,
                        "seconds": statistics.median(times), "sent": sent,
                        "sent_formula": zero_ledger.bytes_sent(model_name, variant,
                                                               world_size, torch_dtype)}
    return out


def measure(world_size: int = 2, model_name: str = "complex", optimizer_name: str = "adam",
            dtype: str = "float32", batch_size: int = 64, variants=VARIANTS,
            verbose: bool = False) -> list[dict]:
    """:func:`memory_worker` on ``world_size`` workers: one result per rank."""
    return launch.run(memory_worker, world_size, verbose=verbose,
                      args=(model_name, optimizer_name, dtype, batch_size, tuple(variants)))


def format_table(per_rank: list[dict]) -> str:
    """Rank 0's measured bytes beside the formula, the peak, time against DDP, bytes sent."""
    rows = per_rank[0]
    reference = rows["ddp"]["seconds"] if "ddp" in rows else \
        next(r for v, r in rows.items() if v != "single")["seconds"]
    head = (f"{'variant':<8}" + "".join(f"{k + ' (KiB)':>24}" for k in KINDS)
            + f"{'peak KiB':>10}{'predicted':>10}{'step ×DDP':>10}{'sent KiB':>10}"
              f"{'formula':>10}")
    lines = [head]
    for variant, row in rows.items():
        if variant == "single":
            continue
        cells = "".join(f"{row['held'][k] / 1024:>11,.1f} = {row['formula'][k] / 1024:>10,.1f}"
                        if row['held'][k] == row['formula'][k]
                        else f"{row['held'][k] / 1024:>11,.1f} ≠ {row['formula'][k] / 1024:>10,.1f}"
                        for k in KINDS)
        lines.append(f"{variant:<8}{cells}{row['peak'] / 1024:>10,.0f}"
                     f"{row['predicted_peak'] / 1024:>10,.0f}"
                     f"{row['seconds'] / reference:>10.2f}{row['sent'] / 1024:>10,.1f}"
                     f"{row['sent_formula'] / 1024:>10,.1f}")
    return "\n".join(lines)
