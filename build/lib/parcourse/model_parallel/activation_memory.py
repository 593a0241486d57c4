"""Activation memory of one pipeline stage under GPipe and 1F1B, measured in bytes
(chapter 5, model parallelism in practice).

Between the forward pass F_m of micro-batch m and its backward pass B_m, a stage keeps
what autograd saved for B_m: the activations of its layers for that micro-batch, plus the
tensor it received from the stage before. :func:`parcourse.model_parallel.pipeline.peak_in_flight`
counts how many micro-batches are alive at once (GPipe: M; 1F1B: at most P − s). This
module measures the bytes, on a CUDA GPU, with ``torch.cuda.max_memory_allocated``:

* :func:`replay` runs one stage's list of actions alone, in order. What the other stages
  would send, the activation received before F_m and the gradient received before B_m,
  is drawn at random with the boundary shapes (:func:`parcourse.model_parallel.partition.boundary_shapes`),
  at the moment it would arrive; the last stage computes its share of the loss instead.
* :func:`stage_peak` replays once to create the gradient buffers and warm up the
  libraries, then again, and reports the peak allocated *above* what was held before
  the second replay (parameters, gradients), and the bytes one forward pass leaves held.

Prediction: peak ≈ (micro-batches in flight) × (bytes per micro-batch), plus the
transient buffers of one backward pass. The stage's time is not measured here (see
:mod:`parcourse.bench.pipeline`); only memory, which depends on the order of the actions
alone, so one device can replay each stage in turn.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import partition as partitioning
from . import pipeline, zero_bubble
from ..models import IMAGE_SHAPE, NUM_CLASSES, build_model

NO_CUDA = ("parcourse.model_parallel.activation_memory measures with torch.cuda.max_memory_allocated, which needs "
           "a CUDA GPU; on a CPU, parcourse.model_parallel.pipeline.peak_in_flight counts the micro-batches "
           "held instead of their bytes")


def replay(module: nn.Module, actions: list, input_shape: torch.Size,
           output_shape: torch.Size, is_first: bool, is_last: bool, batch_size: int,
           device: torch.device, seed: int = 0) -> None:
    """Run ``actions`` (F, B and W of micro-batches, one chunk) of one stage on ``device``.

    Inputs and incoming gradients are drawn from a generator seeded per micro-batch, so
    every order of the same actions computes the same gradients (up to the order of the
    floating-point sums that accumulate them). A schedule with W passes runs B as the
    input gradient only and W as the weight gradients (:mod:`parcourse.model_parallel.zero_bubble`).
    """
    split = any(a.kind == "W" for a in actions)
    deferred = zero_bubble.defer_weight_gradients(module) if split else None
    alive: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    pending: dict[int, list] = {}
    try:
        for kind, m, _chunk in actions:
            g = torch.Generator().manual_seed(seed * 1_000_003 + m)
            if kind == "W":
                deferred.apply(pending.pop(m))
                continue
            if kind == "F":
                x = torch.randn(input_shape, generator=g).to(device)
                x.requires_grad_(not is_first)  # a received activation: its gradient goes back
                if split:
                    pending[m] = deferred.collect()
                alive[m] = (x, module(x))
                continue
            x, out = alive.pop(m)
            torch.randn(input_shape, generator=g)  # the same draw as F_m, to reach the next ones
            if is_last:
                labels = torch.randint(NUM_CLASSES, output_shape[:1], generator=g).to(device)
                (F.cross_entropy(out, labels) * (out.shape[0] / batch_size)).backward()
            else:
                out.backward(torch.randn(output_shape, generator=g).to(device))
            del x, out  # the stage would send x.grad back, then let both go
    finally:
        if split:
            deferred.restore()


def stage_peak(module: nn.Module, actions: list[tuple[str, int]], input_shape: torch.Size,
               output_shape: torch.Size, is_first: bool, is_last: bool, batch_size: int,
               device: torch.device) -> dict:
    """Peak bytes above the held state while the stage runs ``actions``, and the bytes
    one forward pass of one micro-batch leaves held (CUDA only)."""
    if device.type != "cuda":
        raise RuntimeError(NO_CUDA)
    args = (input_shape, output_shape, is_first, is_last, batch_size, device)
    replay(module, actions, *args)  # creates .grad buffers, cuDNN/cuBLAS workspaces
    torch.cuda.synchronize(device)
    held = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    replay(module, actions, *args)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - held
    x = torch.randn(input_shape, device=device, requires_grad=not is_first)
    out = module(x)
    per_microbatch = torch.cuda.memory_allocated(device) - held
    del x, out
    return {"peak_bytes": peak, "microbatch_bytes": per_microbatch}


def measure(model_name: str = "complex", stages: int = 2, microbatches: int = 8,
            batch_size: int = 512, cuts: str = "parameters",
            schedules: tuple[str, ...] = ("gpipe", "1f1b", "zb-h1")) -> list[dict]:
    """Every stage under every schedule: in flight, bytes per micro-batch, measured peak."""
    if not torch.cuda.is_available():
        raise RuntimeError(NO_CUDA)
    if batch_size % microbatches:
        raise ValueError(f"batch size {batch_size} does not split into {microbatches} micro-batches")
    device = torch.device("cuda")
    model = build_model(model_name, seed=0)
    micro = batch_size // microbatches
    example = torch.zeros(micro, *IMAGE_SHAPE)
    ranges = partitioning.partition(model, stages, cuts, example=example)
    shapes = partitioning.boundary_shapes(model, ranges, example)
    rows = []
    for name in schedules:
        for s, (start, end) in enumerate(ranges):
            module = model[start:end].to(device)
            actions = pipeline.schedule(name, s, stages, microbatches)
            figures = stage_peak(module, actions, shapes[s], shapes[s + 1], s == 0,
                                 s == stages - 1, batch_size, device)
            module.to("cpu").zero_grad(set_to_none=True)
            in_flight = pipeline.peak_in_flight(actions)
            rows.append({"schedule": name, "stage": s, "layers": [start, end],
                         "in_flight": in_flight, **figures,
                         "predicted_bytes": in_flight * figures["microbatch_bytes"]})
            torch.cuda.empty_cache()
    return rows


def format_rows(rows: list[dict]) -> str:
    """The measurement as a table (MiB)."""
    mib = 2 ** 20
    lines = [f"{'schedule':8s} {'stage':>5s} {'in flight':>9s} {'per micro-batch':>15s} "
             f"{'predicted':>10s} {'measured peak':>13s}"]
    for r in rows:
        lines.append(f"{r['schedule']:8s} {r['stage']:5d} {r['in_flight']:9d} "
                     f"{r['microbatch_bytes'] / mib:11.2f} MiB {r['predicted_bytes'] / mib:6.1f} MiB "
                     f"{r['peak_bytes'] / mib:9.1f} MiB")
    return "\n".join(lines)
