"""What this machine offers for parallel work (chapter 7; timings in every chapter).

:func:`report` lists the versions and capabilities that decide which chapters run
where: the torch build, the ``torch.distributed`` backends compiled in (gloo for
CPU processes, NCCL for NVIDIA GPUs, MPI), the CUDA devices, and whether Triton and
Horovod import. :func:`describe` is the one-line summary that labels every timing in
the book ("2 cores · AMD EPYC · torch 2.13.0+cpu"), because a number without its
machine means nothing.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys

import torch
import torch.distributed as dist

from . import tables
from .launch import available_cores


def processor() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), or the best the platform says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def gpus() -> list[str]:
    """Names of the visible CUDA devices, in index order (empty without CUDA)."""
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def probe(module: str) -> tuple[bool, str]:
    """Try ``import module``; return (True, version) or (False, why it failed)."""
    try:
        imported = importlib.import_module(module)
    except Exception as err:  # ImportError, or a broken native extension
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        return False, message[:120]
    top = sys.modules.get(module.split(".")[0], imported)
    return True, str(getattr(top, "__version__", "version unknown"))


def describe() -> str:
    """One line naming the hardware and torch version that a timing came from."""
    parts = [f"{available_cores()} core{'s' if available_cores() != 1 else ''}", processor()]
    parts += gpus()
    parts.append(f"torch {torch.__version__}")
    return " · ".join(parts)


def report() -> dict:
    """Versions and parallel capabilities of this machine, as an ordered dict of strings/values."""
    triton_ok, triton_info = probe("triton")
    horovod_ok, horovod_info = probe("horovod.torch")
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "processor": processor(),
        "cpu cores available": available_cores(),
        "torch": torch.__version__,
        "torch threads": torch.get_num_threads(),
        "gloo backend": dist.is_available() and dist.is_gloo_available(),
        "NCCL backend": dist.is_available() and dist.is_nccl_available(),
        "MPI backend": dist.is_available() and dist.is_mpi_available(),
        "CUDA available": cuda,
        "CUDA version (torch build)": torch.version.cuda or "none (CPU build)",
        "cuDNN version": torch.backends.cudnn.version() if cuda else None,
        "GPUs": gpus(),
        "triton": triton_info if triton_ok else f"not importable ({triton_info})",
        "horovod": horovod_info if horovod_ok else f"not importable ({horovod_info})",
        "environment": _launcher(),
    }


def _launcher() -> str:
    if "COLAB_RELEASE_TAG" in os.environ or "COLAB_GPU" in os.environ:
        return "Google Colab"
    if "KAGGLE_KERNEL_RUN_TYPE" in os.environ:
        return "Kaggle"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return f"launched as rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}"
    return "local"


def as_markdown(info: dict) -> str:
    """Render a :func:`report` as a two-column Markdown table."""
    def cell(value) -> str:
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, list):
            return ", ".join(value) if value else "none"
        if value is None:
            return "–"
        return str(value)

    return tables.markdown(("what", "this machine"),
                           [(key, cell(value)) for key, value in info.items()])
