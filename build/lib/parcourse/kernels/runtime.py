"""Import Triton if it is there, choose compiled or interpreted kernels, and check inputs.

**Compiled or interpreted.** Triton 3.x decides when ``@triton.jit`` *runs* (when a kernel
module is imported) whether the kernel becomes a GPU kernel (``JITFunction``) or a
NumPy emulation (``InterpretedFunction``): the decorator reads ``triton.knobs.runtime
.interpret``, which reads the environment variable ``TRITON_INTERPRET``. So the choice
is made here, before any kernel module is imported:

* ``TRITON_INTERPRET`` already set (to anything): respected, so ``TRITON_INTERPRET=1`` on a
  GPU machine still runs the interpreter (useful for debugging with ``print``);
* otherwise, no CUDA GPU visible to torch: it is set to ``1`` for this process, and the
  kernels run in Triton's interpreter on CPU tensors;
* otherwise (a CUDA GPU): left unset, and the kernels are compiled for that GPU.

The interpreter executes each program instance one after another with NumPy: it checks
indexing, masks and numerics, and it is slow; its timings say nothing about performance.

**Without Triton** the package still imports: ``jit`` becomes a decorator that keeps the
Python function (its source can still be shown) and calling a kernel wrapper raises
:class:`~parcourse.errors.MissingDependencyError` with an install hint.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch

from ..errors import MissingDependencyError

INSTALL_HINT = ("Triton is not installed: parcourse.kernels needs it to run its kernels "
                "(on a CPU, in Triton's interpreter). Install it with `pip install triton` "
                "(Linux; on Colab and Kaggle it comes with torch); the plain-torch references "
                "(parcourse.kernels.*_reference) work without it.")

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

try:
    import triton
    import triton.language as tl
except ImportError as _error:  # no Triton: keep importable, fail when a kernel is called
    triton = None
    _IMPORT_ERROR: ImportError | None = _error

    class _Placeholder:
        """Stands for a ``@triton.jit`` kernel when Triton is missing; ``fn`` is the source."""

        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            raise MissingDependencyError(INSTALL_HINT)

    def jit(fn=None, **_options):
        return _Placeholder(fn) if fn is not None else _Placeholder

    tl = SimpleNamespace(constexpr=object)  # only used as an annotation without Triton
else:
    _IMPORT_ERROR = None
    jit = triton.jit

AVAILABLE = triton is not None
INTERPRETED = os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")
DEVICE = "cpu" if INTERPRETED or not torch.cuda.is_available() else "cuda"


def require() -> None:
    """Raise :class:`MissingDependencyError` (with the install hint) if Triton is missing."""
    if not AVAILABLE:
        raise MissingDependencyError(INSTALL_HINT) from _IMPORT_ERROR


def mode() -> str:
    """One line saying how the kernels run on this machine."""
    if not AVAILABLE:
        return "Triton is not installed: only the torch references run"
    if INTERPRETED:
        return f"Triton {triton.__version__}, interpreter (TRITON_INTERPRET=1): CPU tensors, NumPy"
    return f"Triton {triton.__version__}, compiled for {torch.cuda.get_device_name()}"


def check_tensor(name: str, tensor, *, dims: int | None = None, dtypes=(torch.float16, torch.float32),
                 contiguous: bool = True) -> None:
    """Raise a clear ``TypeError``/``ValueError`` if ``tensor`` cannot go to a kernel."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if dims is not None and tensor.dim() != dims:
        raise ValueError(f"{name} must have {dims} dimension{'s' if dims > 1 else ''}, "
                         f"got shape {tuple(tensor.shape)}")
    if tensor.dtype not in dtypes:
        names = " or ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{name} has dtype {str(tensor.dtype).replace('torch.', '')}; "
                         f"this kernel takes {names}: convert it, e.g. {name}.float()")
    if contiguous and not tensor.is_contiguous():
        raise ValueError(f"{name} is not contiguous (shape {tuple(tensor.shape)}, strides "
                         f"{tensor.stride()}): pass {name}.contiguous()")
    if DEVICE == "cuda" and tensor.device.type != "cuda":
        raise ValueError(f"{name} is on {tensor.device}, but the kernels are compiled for the "
                         f"GPU: move it with {name}.cuda() (or set TRITON_INTERPRET=1 before "
                         f"importing parcourse.kernels to run them in Triton's interpreter)")
    if DEVICE == "cpu" and tensor.device.type != "cpu":
        raise ValueError(f"{name} is on {tensor.device}, but the kernels run in Triton's "
                         f"interpreter on CPU tensors: pass {name}.cpu()")


def check_same(names: tuple[str, ...], *tensors) -> None:
    """All ``tensors`` share one dtype and one device."""
    first = tensors[0]
    for name, tensor in zip(names[1:], tensors[1:]):
        if tensor.dtype != first.dtype:
            raise ValueError(f"{names[0]} and {name} must have the same dtype, got "
                             f"{first.dtype} and {tensor.dtype}")
        if tensor.device != first.device:
            raise ValueError(f"{names[0]} and {name} must be on the same device, got "
                             f"{first.device} and {tensor.device}")


def check_block(name: str, value: int, *, smallest: int = 16) -> None:
    """A block size is a power of two ≥ ``smallest`` (``tl.arange`` needs a power of two)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < smallest \
            or value & (value - 1):
        raise ValueError(f"{name} must be a power of two ≥ {smallest}, got {value!r}")


def gpu_seconds(fn) -> float:
    """Median time of ``fn`` on the GPU by ``triton.testing.do_bench`` (GPU only)."""
    if DEVICE != "cuda":
        raise RuntimeError("triton.testing.do_bench needs a CUDA GPU (it times with the active "
                           "Triton driver); on a CPU use parcourse.perf.measure")
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
