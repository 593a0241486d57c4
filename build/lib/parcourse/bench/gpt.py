"""Throughput and model FLOPs utilization of GPT training runs (chapter 5, "Parallelism
for transformers").

``python -m parcourse train --model gpt`` prints tokens/s and MFU in its summary line;
``python -m parcourse bench gpt`` trains the same GPT with each strategy and prints them
side by side. MFU = tokens/s × (6·N + 12·L·d·s) ÷ peak (:mod:`parcourse.model_flops`), where
the peak is

* on the CPU, the best FLOP/s of a square matrix product in the run's dtype, measured
  here with all cores (:func:`parcourse.roofline.peak_matmul_flops`): one machine, shared
  by however many worker processes run on it;
* on CUDA, the GPU's datasheet figure (:mod:`parcourse.kernels.devices`: FP32, or the
  dense 16-bit tensor-core peak for ``--precision bf16/fp16``) times the number of GPUs,
  one per worker; a GPU without a datasheet entry gets a measured 4096² product instead.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import torch

from .. import model_flops, perf, roofline
from ..training import TrainConfig, train

DEFAULT_STRATEGIES = ("ddp", "fsdp", "tensor")


def runs_of(strategies=DEFAULT_STRATEGIES, workers=(2,)) -> list[tuple[str, int, bool]]:
    """(strategy, workers, sequence parallel) to compare: single on one worker, then each
    strategy on each K, tensor with and without --sequence-parallel."""
    runs = [("single", 1, False)]
    for k in workers:
        for strategy in strategies:
            runs += [(strategy, k, False)] + ([(strategy, k, True)] if strategy == "tensor" else [])
    return runs


@functools.lru_cache(maxsize=None)
def device_peak(dtype: str = "float32", precision: str = "full") -> tuple[float, str]:
    """(peak FLOP/s of one device, where the figure comes from)."""
    torch_dtype = getattr(torch, dtype)
    if not torch.cuda.is_available():
        peak = max(roofline.peak_matmul_flops(n, torch_dtype, repeats=5) for n in (512, 1024))
        return peak, f"{dtype} matmul peak measured on this CPU"
    from ..kernels.devices import datasheet_for

    name = torch.cuda.get_device_name()
    sheet = datasheet_for(name)
    if sheet is not None and dtype == "float32":
        half = precision in ("bf16", "fp16")
        return ((sheet.fp16_flops, f"{sheet.name} datasheet, 16-bit tensor cores") if half
                else (sheet.fp32_flops, f"{sheet.name} datasheet, FP32"))
    n = 4096
    a = torch.rand(n, n, dtype=torch_dtype, device="cuda")
    seconds = perf.measure(lambda: a @ a, repeats=5, warmup=2, device="cuda")
    return 2 * n ** 3 / seconds, f"{dtype} matmul peak measured on {name}"


def peak_for(config: TrainConfig) -> tuple[float, str]:
    """The peak FLOP/s of the devices a run used (CUDA: one GPU per worker)."""
    peak, source = device_peak(config.dtype, config.precision)
    devices = config.workers if torch.cuda.is_available() else 1
    return peak * devices, source + (f" × {devices} GPUs" if devices > 1 else "")


def throughput(result) -> dict:
    """Tokens/s, model FLOPs per token, achieved FLOP/s, the peak and MFU of a GPT run."""
    config = result.config
    per_token = model_flops.gpt_flops_per_token(config.layers, config.width, config.heads,
                                                config.sequence)
    if config.experts:   # a token runs k experts' MLPs and the router: 6 FLOPs per parameter
        d = config.width
        per_token += 6 * config.layers * ((config.top_k - 1) * (8 * d * d + 5 * d)
                                          + d * config.experts)
    peak, source = peak_for(config)
    tokens = result.tokens_per_second
    return {"tokens_per_s": tokens, "flops_per_token": per_token,
            "achieved_flops": tokens * per_token, "peak_flops": peak, "peak_source": source,
            "mfu": model_flops.mfu(tokens, per_token, peak)}


def summary(result) -> str:
    """The part of ``train``'s summary line that a GPT run adds."""
    t = throughput(result)
    return (f", {t['tokens_per_s']:,.0f} tokens/s, MFU {t['mfu']:.2%} of "
            f"{t['peak_flops'] / 1e9:,.1f} GFLOP/s ({t['peak_source']})")


def compare(runs=None, base: TrainConfig | None = None) -> list[dict]:
    """One row per (strategy, workers, sequence parallel): throughput and MFU."""
    base = base or TrainConfig(model="gpt", steps=20, batch_size=16)
    rows = []
    for strategy, workers, sequence_parallel in runs or runs_of():
        result = train(replace(base, strategy=strategy, workers=workers, quiet=True,
                               sequence_parallel=sequence_parallel))
        figures = throughput(result)
        rows.append({"strategy": strategy + (" --sequence-parallel" if sequence_parallel else ""),
                     "workers": workers, "tokens_per_s": figures["tokens_per_s"],
                     "GFLOP_per_s": figures["achieved_flops"] / 1e9,
                     "peak_GFLOP_per_s": figures["peak_flops"] / 1e9, "MFU": figures["mfu"]})
    return rows


def format_rows(rows: list[dict]) -> str:
    """A fixed-width table of :func:`compare`."""
    lines = [f"{'strategy':>28} {'workers':>7} {'tokens/s':>10} {'GFLOP/s':>8} {'peak':>8} "
             f"{'MFU':>7}"]
    for r in rows:
        lines.append(f"{r['strategy']:>28} {r['workers']:>7} {r['tokens_per_s']:>10,.0f} "
                     f"{r['GFLOP_per_s']:>8.2f} {r['peak_GFLOP_per_s']:>8.1f} {r['MFU']:>7.2%}")
    return "\n".join(lines)
