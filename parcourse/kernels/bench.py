"""``python -m parcourse bench kernels``: every kernel and size, timed, against its roof.

Formulas (each kernel module states its counts):

* GB/s = bytes moved / time (vector add ``3 n s``; softmax ``2 M N s``; layer norm
  ``(2 M N + 2 N) s``) — for the memory-bound kernels;
* TFLOPS = ``2 M N K`` / time — for the matrix product;
* fraction of peak = achieved / the device's roof (this CPU: measured STREAM bandwidth
  and matmul FLOP/s; a GPU: its datasheet, :mod:`parcourse.kernels.devices`);
* ratio to torch = torch's time / Triton's time (above 1: the Triton kernel is faster).

**On a CPU** the torch ops are measured against the CPU's measured roofline; the Triton
kernels run in the interpreter, whose timings are *not* performance (one is shown to make
the point). **On a CUDA GPU** the compiled kernels and the torch ops are timed with
``triton.testing.do_bench`` (median), and the H100 targets are checked (:data:`TARGETS`).
"""

from __future__ import annotations

import datetime
import platform

import torch

from .. import roofline
from .runtime import gpu_seconds  # noqa: F401 (bench.gpu_seconds, as the tests call it)
from . import runtime, bench_attention, devices, fused_softmax, layernorm, tiled_matmul, vecadd

TARGETS = {  # name: (kernel, size label, what, threshold) — evaluated on an H100
    "vector add ≥ 80% of peak HBM bandwidth at 64M elements": ("vector_add", "67108864", "fraction", 0.8),
    "softmax ≥ 1.0× torch.softmax at 4096×4096 fp32": ("softmax", "4096×4096", "ratio", 1.0),
    "fp16 matmul ≥ 0.7× torch.matmul at 4096³": ("matmul", "4096×4096×4096", "ratio", 0.7),
}
INTERPRETER_NOTE = ("Triton interpreter timings are not performance: the interpreter runs each "
                    "program instance in turn with NumPy, to check correctness.")
# The sweep (GPU only): the measured twin of the chapter's "problem size, block size and
# device" widget. Matmul: square BLOCK × BLOCK tiles of C at the widget's sizes, float16.
SWEEP_ADD_SIZES = tuple(1 << p for p in (16, 18, 20, 22, 24, 26, 28))
SWEEP_ADD_BLOCKS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
SWEEP_MATMUL_SIZES = (200, 1000, 1024, 4096)
SWEEP_MATMUL_BLOCKS = (16, 32, 64, 128, 256)
T4_NOTE = ("compute capability {cc}: recent Triton gives tl.dot no tensor-core path below 8.0 "
           "(it falls back to FMA), so the Triton matmul is bounded by the FP32 peak, not the "
           "tensor-core one that torch.matmul (cuBLAS) uses.")


def cases(device: str, quick: bool) -> list[tuple]:
    """(kernel, shape, dtype) to run: small on CPU and in quick mode, target sizes on a GPU."""
    f32, f16 = torch.float32, torch.float16
    if device == "cuda":
        if quick:
            return [("vector_add", (1 << 20,), f32), ("softmax", (1024, 1024), f32),
                    ("layer_norm", (1024, 1024), f32), ("matmul", (1024, 1024, 1024), f16)]
        return [("vector_add", (1 << 20,), f32), ("vector_add", (1 << 24,), f32),
                ("vector_add", (1 << 26,), f32), ("softmax", (4096, 4096), f32),
                ("layer_norm", (4096, 4096), f32), ("matmul", (2048, 2048, 2048), f16),
                ("matmul", (4096, 4096, 4096), f16), ("matmul", (2048, 2048, 2048), f32)]
    if quick:
        return [("vector_add", (1 << 16,), f32), ("softmax", (128, 256), f32),
                ("layer_norm", (128, 256), f32), ("matmul", (128, 128, 128), f32)]
    return [("vector_add", (1 << 20,), f32), ("vector_add", (1 << 24,), f32),
            ("softmax", (1024, 1024), f32), ("softmax", (4096, 1024), f32),
            ("layer_norm", (1024, 1024), f32), ("matmul", (512, 512, 512), f32),
            ("matmul", (1024, 1024, 1024), f32)]


def _problem(kernel: str, shape: tuple, dtype, device: str):
    """Inputs, the Triton call, the torch call, FLOP and bytes of one case."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*size):
        return torch.randn(*size, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)

    s = torch.empty((), dtype=dtype).element_size()
    if kernel == "vector_add":
        (n,) = shape
        x, y = rand(n), rand(n)
        return (lambda: vecadd.vector_add(x, y), lambda: x + y,
                vecadd.flops(n), vecadd.bytes_moved(n, s))
    if kernel == "softmax":
        x = rand(*shape)
        return (lambda: fused_softmax.softmax(x), lambda: torch.softmax(x, dim=-1),
                fused_softmax.flops(*shape), fused_softmax.bytes_moved(*shape, s))
    if kernel == "layer_norm":
        x, w, b = rand(*shape), rand(shape[1]), rand(shape[1])
        return (lambda: layernorm.layer_norm(x, w, b),
                lambda: torch.nn.functional.layer_norm(x, (shape[1],), w, b),
                layernorm.flops(*shape), layernorm.bytes_moved(*shape, s))
    m, n, k = shape
    a, b = rand(m, k), rand(k, n)
    return (lambda: tiled_matmul.matmul(a, b), lambda: a @ b, tiled_matmul.flops(m, n, k),
            tiled_matmul.bytes_moved(m, n, k, s))


def matmul_launch(block: int) -> dict:
    """Launch settings of a square ``block`` tile in the sweep: ``BLOCK_K = min(block, 64)``,
    8 warps from 128 up (a 128 × 128 float32 accumulator is 128 registers per thread over
    4 warps), Triton's default 3 pipeline stages."""
    return dict(block_m=block, block_n=block, block_k=min(block, 64),
                num_warps=8 if block >= 128 else 4, num_stages=3)


def sweep_cuda() -> dict:
    """Vector add over problem size × BLOCK, and the float16 matmul over n × tile size.

    Every configuration is checked against torch before it is timed; one that fails to
    compile or run (a tile too big for the GPU's shared memory) is recorded with its error.
    """
    g = torch.Generator(device="cpu").manual_seed(1)
    add = []
    for n in SWEEP_ADD_SIZES:
        x, y = (torch.randn(n, generator=g).cuda() for _ in range(2))
        for block in SWEEP_ADD_BLOCKS:
            z = vecadd.vector_add(x, y, block=block)
            row = {"n": n, "block": block, "exact": bool(torch.equal(z, x + y))}
            seconds = gpu_seconds(lambda: vecadd.vector_add(x, y, block=block))
            row.update(seconds=seconds, gbs=vecadd.bytes_moved(n, 4) / seconds / 1e9)
            add.append(row)
        del x, y
    matmul, torch_matmul = [], []
    for n in SWEEP_MATMUL_SIZES:
        a, b = (torch.randn(n, n, generator=g).cuda().half() for _ in range(2))
        reference = tiled_matmul.matmul_reference(a, b)
        for block in SWEEP_MATMUL_BLOCKS:
            launch = matmul_launch(block)
            row = {"n": n, "block": block, "num_warps": launch["num_warps"]}
            try:
                error = (tiled_matmul.matmul(a, b, **launch).float() - reference.float()).abs().max().item()
                seconds = gpu_seconds(lambda: tiled_matmul.matmul(a, b, **launch))
            except Exception as err:  # e.g. triton's OutOfResources: record it, go on
                row["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            else:
                row.update(max_abs_error=error, seconds=seconds,
                           tflops=tiled_matmul.flops(n, n, n) / seconds / 1e12)
            matmul.append(row)
        seconds = gpu_seconds(lambda: a @ b)
        torch_matmul.append({"n": n, "seconds": seconds, "tflops": tiled_matmul.flops(n, n, n) / seconds / 1e12})
    return {"vector_add": add, "matmul": matmul, "torch_matmul": torch_matmul}


def _row(kernel, shape, dtype, flops, nbytes) -> dict:
    return {"kernel": kernel, "size": "×".join(map(str, shape)),
            "dtype": str(dtype).replace("torch.", ""), "flops": flops, "bytes": nbytes}


def run_cpu(quick: bool = False) -> dict:
    """Torch ops on this CPU against its measured roofline (+ one interpreter timing)."""
    cpu = roofline.measure_cpu(quick=quick)
    rows = []
    for kernel, shape, dtype in cases("cpu", quick):
        _, torch_op, flops, nbytes = _problem(kernel, shape, dtype, "cpu")
        seconds = roofline.best_seconds(torch_op, repeats=3 if quick else 5)
        row = _row(kernel, shape, dtype, flops, nbytes)
        row.update(torch_seconds=seconds, intensity=flops / nbytes,
                   torch_gbs=nbytes / seconds / 1e9, torch_tflops=flops / seconds / 1e12,
                   roof_fraction=(flops / seconds) / cpu.attainable(flops / nbytes))
        rows.append(row)
    interpreter = None
    if runtime.AVAILABLE and runtime.INTERPRETED:
        triton_op, torch_op, _, _ = _problem("vector_add", (1 << 16,), torch.float32, "cpu")
        interpreter = {"kernel": "vector_add", "size": str(1 << 16),
                       "triton_seconds": roofline.best_seconds(triton_op, repeats=3),
                       "torch_seconds": roofline.best_seconds(torch_op, repeats=3)}
    return {"device": "cpu", "quick": quick, "cpu": cpu.as_dict(), "rows": rows,
            "interpreter": interpreter, "notes": [INTERPRETER_NOTE]}


def run_cuda(quick: bool = False) -> dict:
    """Compiled Triton kernels against the torch ops on this GPU, and the H100 targets."""
    name = torch.cuda.get_device_name()
    cc = torch.cuda.get_device_capability()
    sheet = devices.datasheet_for(name)
    rows = []
    for kernel, shape, dtype in cases("cuda", quick):
        triton_op, torch_op, flops, nbytes = _problem(kernel, shape, dtype, "cuda")
        error = (triton_op().float() - torch_op().float()).abs().max().item()  # also compiles
        t_triton, t_torch = gpu_seconds(triton_op), gpu_seconds(torch_op)
        row = _row(kernel, shape, dtype, flops, nbytes)
        row.update(max_abs_error=error, triton_seconds=t_triton, torch_seconds=t_torch,
                   triton_gbs=nbytes / t_triton / 1e9, torch_gbs=nbytes / t_torch / 1e9,
                   triton_tflops=flops / t_triton / 1e12, torch_tflops=flops / t_torch / 1e12,
                   ratio_to_torch=t_torch / t_triton, intensity=flops / nbytes)
        if sheet is not None:
            peak = sheet.fp16_flops if dtype == torch.float16 else sheet.fp32_flops
            row["peak_fraction"] = (nbytes / t_triton / sheet.bandwidth if kernel != "matmul"
                                    else flops / t_triton / peak)
        rows.append(row)
    notes = []
    if cc < (8, 0):
        notes.append(T4_NOTE.format(cc=f"{cc[0]}.{cc[1]}"))
    return {"device": name, "compute_capability": f"{cc[0]}.{cc[1]}",
            "datasheet": None if sheet is None else sheet.source, "quick": quick, "rows": rows,
            "targets": evaluate_targets(rows, name), "notes": notes,
            "sweep": None if quick else sweep_cuda(), "attention": bench_attention.run_cuda(quick)}


def evaluate_targets(rows: list[dict], device_name: str) -> list[dict]:
    """Each target with its measured value and whether it is met (None: not evaluated)."""
    results = []
    for label, (kernel, size, what, threshold) in TARGETS.items():
        row = next((r for r in rows if r["kernel"] == kernel and r["size"] == size
                    and (kernel != "matmul" or r["dtype"] == "float16")), None)
        value = None if row is None else row.get("peak_fraction" if what == "fraction" else "ratio_to_torch")
        if "H100" not in device_name.upper():
            met, why = None, "the targets are set for an H100"
        elif value is None:
            met, why = None, "size not run (quick mode) or no datasheet peak"
        else:
            met, why = value >= threshold, ""
        results.append({"target": label, "value": value, "threshold": threshold, "met": met,
                        "why_not_evaluated": why})
    return results


def run(quick: bool = False) -> dict:
    """The CPU or the GPU benchmark, whichever this machine runs, with its context."""
    result = run_cuda(quick) if runtime.DEVICE == "cuda" else run_cpu(quick)
    result.update(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  torch=torch.__version__, python=platform.python_version(),
                  triton=runtime.triton.__version__ if runtime.AVAILABLE else None,
                  kernels=runtime.mode())
    return result
