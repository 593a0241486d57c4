"""Chapter 3's first experiment, timed: where a data-parallel training step spends its time.

The runs of one training problem (``{strategy: TrainResult}``, ``"single"`` among them)
carry their loop's wall time; ``dp-manual`` also the time in its all-reduce.
:func:`step_rows` sets each strategy's step against the single process (as cells:
:func:`step_cells`, for :data:`STEP_HEADER`); :func:`report_notes` adds the split of
``dp-manual``'s step into all-reduce and compute, and its all-reduce against the α–β model
and the all-reduce benchmark; :func:`format_report` puts them together for a terminal.
"""

from __future__ import annotations

import os

import torch

from .. import env, launch, tables
from . import scaling


def step_rows(results: dict, steps: int, workers: int) -> list[dict]:
    """Per strategy: ``name``, ``where`` it ran, ``seconds_per_step``,
    ``samples_per_second`` and ``speed_vs_single`` (the single step's time over its own)."""
    single = results["single"].seconds / steps
    return [{"name": name, "where": "1 process" if name == "single" else f"{workers} workers",
             "seconds_per_step": result.seconds / steps,
             "samples_per_second": result.samples_per_second,
             "speed_vs_single": single / (result.seconds / steps)}
            for name, result in results.items()]


STEP_HEADER = ("strategy", "where", "ms per step", "samples/s", "speed vs single")


def step_cells(results: dict, steps: int, workers: int) -> list[list[str]]:
    """:func:`step_rows` as cells for :data:`STEP_HEADER`."""
    return [[r["name"], r["where"], tables.significant(1e3 * r["seconds_per_step"]),
             f"{r['samples_per_second']:,.0f}", f"{r['speed_vs_single']:.2f}×"]
            for r in step_rows(results, steps, workers)]


def report_heading(*, steps: int, batch: int, parameters: int) -> str:
    """The line above the table: this machine and the training problem."""
    return (f"{env.describe()}; SimpleModel, P = {parameters:,} parameters, "
            f"global batch {batch}, {steps} steps")


def report_notes(results: dict, *, steps: int, batch: int, workers: int, parameters: int,
                 alpha: float, beta: float, benchmark_seconds: float, backend: str) -> list[str]:
    """The lines below the table: ``dp-manual``'s step split into all-reduce and the rest;
    its all-reduce against the α–β ring and ``benchmark_seconds`` (the benchmark's ring
    all-reduce of 256 KiB on ``workers``); this machine's load; and a note where the
    single run had a GPU that the ``backend`` (gloo) workers did not."""
    manual = results["dp-manual"]
    communication = manual.communication_seconds / steps
    rest = manual.seconds / steps - communication
    single_step = results["single"].seconds / steps
    lines = [f"dp-manual, per step: all-reduce {1e3 * communication:.2f} ms; forward, backward and "
             f"update of {batch // workers} samples with {launch.threads_per_worker(workers)} "
             f"thread(s): {1e3 * rest:.2f} ms",
             f"single process, per step: {1e3 * single_step:.2f} ms for {batch} samples with "
             f"{torch.get_num_threads()} threads",
             f"ring all-reduce of {4 * parameters / 1e3:.0f} kB on {workers} workers: "
             f"α–β model {1e3 * scaling.allreduce_seconds(parameters, workers, alpha, beta):.2f} ms; "
             f"benchmark above, 256 KiB: {1e3 * benchmark_seconds:.2f} ms; in training: "
             f"{1e3 * communication:.2f} ms"]
    if hasattr(os, "getloadavg"):
        lines.append(f"load average of the last minute: {os.getloadavg()[0]:.1f} "
                     f"on {launch.available_cores()} cores")
    if torch.cuda.is_available() and backend == "gloo":
        lines.append("note: the single run used the GPU and the workers the CPU, so this is no like-for-like "
                     "comparison; the map below compares like with like")
    return lines


def format_report(results: dict, *, steps: int, batch: int, workers: int, parameters: int,
                  alpha: float, beta: float, benchmark_seconds: float, backend: str) -> list[str]:
    """The chapter's lines for a terminal: :func:`report_heading`, the table of
    :func:`step_cells`, a blank line and :func:`report_notes`."""
    return [report_heading(steps=steps, batch=batch, parameters=parameters),
            *tables.text(STEP_HEADER, step_cells(results, steps, workers)).splitlines(), "",
            *report_notes(results, steps=steps, batch=batch, workers=workers, parameters=parameters,
                          alpha=alpha, beta=beta, benchmark_seconds=benchmark_seconds,
                          backend=backend)]
