"""``bench kernels`` on a CUDA GPU: FlashAttention against torch's SDPA (chapter 5,
"Attention in tiles"). GPU only; :func:`run_cuda` is called by
:func:`parcourse.kernels.bench.run_cuda`, and its rows go into the report of ``make
gpu-check`` under ``bench["attention"]``.

Every configuration (batch, heads, sequence length, head dimension, causal or not, tile
``BLOCK_M × BLOCK_N``: the default one, and at :data:`SWEEP_CASE` each of
:data:`SWEEP_TILES`) is first checked against
``torch.nn.functional.scaled_dot_product_attention`` (the largest difference of ``O`` and
of ``dQ``), then timed with ``triton.testing.do_bench`` (median): the forward, and the
backward alone (``torch.autograd.grad`` on a kept graph). TFLOPS = FLOP / time with the
conventional counts of :func:`parcourse.kernels.attention_costs.flops`: ``4 B H S² d``
forward, 2.5 times that backward, halved when causal. SDPA, timed the same way, is the
row with ``block_m`` None. A tile that fails (too much shared memory for this GPU) is
recorded with its error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import tables
from . import attention_costs, flash_attention
from .runtime import gpu_seconds

CASES = ((4, 16, 1024, 64), (4, 16, 4096, 64), (2, 16, 4096, 128))  # (B, H, S, d)
QUICK_CASES = ((2, 8, 1024, 64),)
SWEEP_CASE = (4, 16, 4096, 64)  # the tiles are swept here; the other cases use the default
SWEEP_TILES = ((64, 64), (128, 64), (128, 128))


def _time_pair(attend, q, k, v, do) -> dict:
    """Forward and backward seconds of ``attend`` (median of do_bench), and its errors."""

    out = attend(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
    forward = gpu_seconds(lambda: attend(q, k, v))
    backward = gpu_seconds(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True))
    return {"out": out.detach(), "dq": grads[0], "forward_seconds": forward, "backward_seconds": backward}


def run_cuda(quick: bool = False, dtype: torch.dtype = torch.float16) -> list[dict]:
    """One row per (case, causal, tile) and one per (case, causal) for SDPA."""
    g = torch.Generator(device="cpu").manual_seed(2)
    rows = []
    for batch, heads, seq_len, head_dim in (QUICK_CASES if quick else CASES):
        shape = (batch, heads, seq_len, head_dim)
        q, k, v, do = (torch.randn(*shape, generator=g).to("cuda", dtype) for _ in range(4))
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        for causal in (False, True):
            base = dict(batch=batch, heads=heads, seq_len=seq_len, head_dim=head_dim, causal=causal,
                        dtype=str(dtype).replace("torch.", ""))
            fwd_flops = attention_costs.flops(batch, heads, seq_len, head_dim, causal=causal)
            bwd_flops = attention_costs.flops(batch, heads, seq_len, head_dim, causal=causal, backward=True)
            reference = _time_pair(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=causal),
                                   q, k, v, do)
            swept = not quick and shape == SWEEP_CASE
            configs = [(None, None)] + (list(SWEEP_TILES) if swept else [flash_attention.default_blocks(head_dim)])
            for block_m, block_n in configs:
                row = {**base, "block_m": block_m, "block_n": block_n}
                try:
                    if block_m is None:
                        timed = reference
                    else:
                        timed = _time_pair(lambda a, b, c: flash_attention.attention(
                            a, b, c, causal=causal, block_m=block_m, block_n=block_n), q, k, v, do)
                except Exception as err:  # e.g. triton's OutOfResources: record it, go on
                    row["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
                    rows.append(row)
                    continue
                row.update(forward_seconds=timed["forward_seconds"], backward_seconds=timed["backward_seconds"],
                           forward_flops=fwd_flops, backward_flops=bwd_flops,
                           forward_tflops=fwd_flops / timed["forward_seconds"] / 1e12,
                           backward_tflops=bwd_flops / timed["backward_seconds"] / 1e12,
                           max_abs_error=(timed["out"].float() - reference["out"].float()).abs().max().item(),
                           dq_max_abs_error=(timed["dq"].float() - reference["dq"].float()).abs().max().item())
                rows.append(row)
        del q, k, v, do
    return rows


CAPTION = "attention, B×H×S×d, forward / backward TFLOPS (4BHS²d, 2.5× backward, half causal)"
HEADER = ("B×H×S×d", "dtype", "kernel", "forward TFLOPS", "backward TFLOPS", "max |ΔO|", "max |ΔdQ|")


def _what(r: dict) -> tuple[str, str]:
    size = f"{r['batch']}×{r['heads']}×{r['seq_len']}×{r['head_dim']}{' causal' if r['causal'] else ''}"
    return size, "torch SDPA" if r["block_m"] is None else f"Triton {r['block_m']}×{r['block_n']}"


def table_cells(rows: list[dict] | None) -> tuple[tuple, list[list[str]]]:
    """The rows that ran, as cells for :data:`HEADER` (those that failed: :func:`failures`)."""
    cells = []
    for r in rows or []:
        if "error" not in r:
            size, what = _what(r)
            cells.append([size, r["dtype"], what, f"{r['forward_tflops']:.1f}", f"{r['backward_tflops']:.1f}",
                          f"{r['max_abs_error']:.1e}", f"{r['dq_max_abs_error']:.1e}"])
    return HEADER, cells


def failures(rows: list[dict] | None) -> list[str]:
    """One line per configuration that did not run: what it was and the error."""
    return [f"attention {' '.join(_what(r))} {r['dtype']}: error: {r['error']}"
            for r in rows or [] if "error" in r]


def format_rows(rows: list[dict] | None) -> list[str]:
    """The attention rows as lines of the benchmark's report (none without rows): the
    caption, the table of :func:`table_cells` and :func:`failures`, each a comment line."""
    if not rows:
        return []
    return ([f"# {CAPTION}"] + [f"#   {line}" for line in tables.text(*table_cells(rows)).splitlines()]
            + [f"#   {line}" for line in failures(rows)])
