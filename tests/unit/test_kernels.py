"""parcourse.kernels: every Triton kernel against its plain-torch reference (chapter 5).

On a machine without a CUDA GPU the kernels run in Triton's interpreter (the package sets
TRITON_INTERPRET=1 before defining them); with a GPU the same tests run compiled kernels on
it. Sizes are deliberately not multiples of the block sizes, so the masks are exercised.

Tolerances: float32 kernels compute what torch computes in another order, so results agree
to a few float32 ulps (rtol 1e-5, atol 1e-6; the matmul, with sums of up to 100 products,
1e-4 / 1e-5). float16 outputs are rounded once to float16 from a float32 result (the
reference is rounded the same way), so they agree to one float16 ulp: rtol 1e-3 (2⁻¹⁰),
atol 1e-3 for values near 0; the float16 matmul may also round its products' sum
differently (the interpreter multiplies in float16), so it gets rtol/atol 1e-2 on entries
of size ≈ √K.
"""

import subprocess
import sys

import pytest
import torch

from parcourse import kernels
from parcourse.errors import MissingDependencyError
from parcourse.kernels import runtime

needs_triton = pytest.mark.skipif(not kernels.AVAILABLE, reason="Triton is not installed")
DEVICE = kernels.DEVICE
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float16: dict(rtol=1e-3, atol=1e-3)}
DTYPES = [torch.float32, torch.float16]


def rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device=DEVICE, dtype=dtype)


def test_the_package_chose_the_interpreter_exactly_when_there_is_no_gpu():
    if torch.cuda.is_available():
        assert DEVICE == ("cpu" if kernels.INTERPRETED else "cuda")
    else:
        assert kernels.INTERPRETED and DEVICE == "cpu"


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, block", [(1, 16), (1000, 128), (4097, 1024), (300, 512)])
def test_vector_add_matches_torch(n, block, dtype):
    x, y = rand(n, dtype=dtype, seed=1), rand(n, dtype=dtype, seed=2)
    torch.testing.assert_close(kernels.vector_add(x, y, block=block),
                               kernels.vector_add_reference(x, y), rtol=0, atol=0)


@needs_triton
def test_vector_add_keeps_the_shape_and_handles_empty_tensors():
    x = rand(7, 9)
    assert kernels.vector_add(x, x).shape == (7, 9)
    torch.testing.assert_close(kernels.vector_add(x, x), 2 * x, rtol=0, atol=0)
    assert kernels.vector_add(x[:0], x[:0]).shape == (0, 9)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (37, 100), (5, 513), (64, 16)])
def test_softmax_matches_torch(shape, dtype):
    x = 3 * rand(*shape, dtype=dtype, seed=3)
    y = kernels.softmax(x)
    torch.testing.assert_close(y, kernels.softmax_reference(x), **TOL[dtype])
    torch.testing.assert_close(y.float().sum(dim=1), torch.ones(shape[0], device=DEVICE),
                               rtol=0, atol=2e-3 if dtype == torch.float16 else 1e-5)


@needs_triton
def test_softmax_does_not_overflow_where_a_naive_exp_would():
    x = torch.tensor([[1000.0, 1000.0, -1000.0]], device=DEVICE)
    torch.testing.assert_close(kernels.softmax(x), torch.tensor([[0.5, 0.5, 0.0]], device=DEVICE))


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 3), (37, 100), (4, 1000)])
def test_layer_norm_matches_torch(shape, dtype):
    x = 2 + rand(*shape, dtype=dtype, seed=4)  # a mean far from 0: masked lanes must not count
    w, b = rand(shape[1], dtype=dtype, seed=5), rand(shape[1], dtype=dtype, seed=6)
    tol = TOL[dtype] if dtype == torch.float16 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kernels.layer_norm(x, w, b),
                               kernels.layer_norm_reference(x, w, b), **tol)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, n, k, blocks", [
    (37, 53, 29, None),                 # the default blocks, every edge masked
    (64, 64, 64, (32, 32, 32)),         # exact multiples
    (50, 70, 100, (16, 32, 16)),        # many K steps, rectangular tiles
    (1, 1, 1, (16, 16, 16)),
])
def test_matmul_matches_torch(m, n, k, blocks, dtype):
    a, b = rand(m, k, dtype=dtype, seed=7), rand(k, n, dtype=dtype, seed=8)
    options = {} if blocks is None else dict(zip(("block_m", "block_n", "block_k"), blocks))
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(kernels.matmul(a, b, **options), kernels.matmul_reference(a, b), **tol)


@needs_triton
@pytest.mark.parametrize("group_m", [1, 2, 3, 8])
def test_matmul_gives_the_same_result_in_every_program_order(group_m):
    a, b = rand(70, 40, seed=9), rand(40, 90, seed=10)
    expected = kernels.matmul(a, b, block_m=16, block_n=16, block_k=16, group_m=1)
    torch.testing.assert_close(kernels.matmul(a, b, block_m=16, block_n=16, block_k=16,
                                              group_m=group_m), expected, rtol=0, atol=0)


@needs_triton
@pytest.mark.parametrize("block", [16, 128])
def test_matmul_with_the_sweeps_launch_settings(block):
    # the benchmark's sweep passes num_warps / num_stages; the result must not change
    from parcourse.kernels import bench

    a, b = rand(45, 33, seed=13), rand(33, 20, seed=14)
    torch.testing.assert_close(kernels.matmul(a, b, **bench.matmul_launch(block)),
                               kernels.matmul_reference(a, b), rtol=1e-4, atol=1e-5)


@needs_triton
def test_matmul_takes_strided_views_without_a_copy():
    a, b = rand(40, 30, seed=11), rand(50, 40, seed=12)
    torch.testing.assert_close(kernels.matmul(a.t(), b.t()), kernels.matmul_reference(a.t(), b.t()),
                               rtol=1e-4, atol=1e-5)


def test_tile_order_visits_every_tile_once_and_group_1_is_row_major():
    for num_m, num_n, group in [(4, 3, 2), (5, 7, 3), (8, 8, 8), (3, 5, 10)]:
        order = kernels.tile_order(num_m, num_n, group)
        assert sorted(order) == [(m, n) for m in range(num_m) for n in range(num_n)]
    assert kernels.tile_order(3, 4, 1) == [(m, n) for m in range(3) for n in range(4)]
    assert kernels.tile_order(4, 3, 2)[:4] == [(0, 0), (1, 0), (0, 1), (1, 1)]


def test_grouped_order_loads_fewer_panels_per_wave():
    # 8 × 8 tiles, waves of 8 programs: row-major reads 1 row + 8 columns per wave (9);
    # groups of 4 rows read 4 rows + 2 columns per wave (6).
    assert kernels.panels_loaded(kernels.tile_order(8, 8, 1), wave=8) == 8 * 9
    assert kernels.panels_loaded(kernels.tile_order(8, 8, 4), wave=8) == 8 * 6


@needs_triton
@pytest.mark.parametrize("call, error, message", [
    (lambda: kernels.vector_add([1.0], [2.0]), TypeError, "x must be a torch.Tensor, got list"),
    (lambda: kernels.vector_add(torch.ones(3, dtype=torch.int64), torch.ones(3, dtype=torch.int64)),
     ValueError, "x has dtype int64; this kernel takes float16 or float32: convert it, e.g. x.float()"),
    (lambda: kernels.vector_add(torch.ones(3), torch.ones(4)), ValueError,
     "x and y must have the same shape, got (3,) and (4,)"),
    (lambda: kernels.vector_add(torch.ones(3), torch.ones(3, dtype=torch.float16)), ValueError,
     "x and y must have the same dtype, got torch.float32 and torch.float16"),
    (lambda: kernels.vector_add(torch.ones(3), torch.ones(3), block=100), ValueError,
     "block must be a power of two ≥ 16, got 100"),
    (lambda: kernels.softmax(torch.ones(4, 6).t()), ValueError,
     "x is not contiguous (shape (6, 4), strides (1, 6)): pass x.contiguous()"),
    (lambda: kernels.softmax(torch.ones(4)), ValueError, "x must have 2 dimensions, got shape (4,)"),
    (lambda: kernels.layer_norm(torch.ones(2, 4), torch.ones(3), torch.ones(3)), ValueError,
     "weight and bias must have x.shape[1] = 4 entries, got 3 and 3"),
    (lambda: kernels.matmul(torch.ones(2, 3), torch.ones(4, 5)), ValueError,
     "a is 2 × 3 and b is 4 × 5: a's columns must match b's rows"),
    (lambda: kernels.matmul(torch.ones(2, 3), torch.ones(3, 5), block_m=16), ValueError,
     "give all three of block_m, block_n, block_k, or none of them"),
    (lambda: kernels.matmul(torch.ones(2, 3), torch.ones(3, 5), num_warps=8), ValueError,
     "num_warps and num_stages go with explicit block sizes (block_m, block_n, block_k); "
     "without them the autotuner chooses all five"),
])
def test_wrappers_reject_bad_input_with_a_clear_message(call, error, message):
    if DEVICE == "cuda":
        pytest.skip("these inputs are CPU tensors, rejected on a GPU for their device first")
    with pytest.raises(error) as caught:
        call()
    assert str(caught.value) == message


@needs_triton
def test_interpreter_rejects_gpu_tensors_and_compiled_kernels_reject_cpu_tensors():
    if DEVICE == "cpu":
        pytest.skip("needs a CUDA device to make a tensor on the other side")
    with pytest.raises(ValueError, match="x is on cpu, but the kernels are compiled for the GPU"):
        kernels.vector_add(torch.ones(3), torch.ones(3))


@pytest.mark.distributed
def test_without_triton_the_package_imports_and_a_kernel_says_how_to_install_it():
    script = ("import sys; sys.modules['triton'] = None\n"  # makes `import triton` fail
              "import torch, parcourse.kernels as k\n"
              "assert not k.AVAILABLE\n"
              "print(k.mode())\n"
              "try:\n"
              "    k.vector_add(torch.ones(3), torch.ones(3))\n"
              "except Exception as e:\n"
              "    print(type(e).__name__); print(e)\n"
              "print(k.vector_add_reference(torch.ones(2), torch.ones(2)).tolist())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "Triton is not installed: only the torch references run",
        "MissingDependencyError",
        "Triton is not installed: parcourse.kernels needs it to run its kernels (on a CPU, in "
        "Triton's interpreter). Install it with `pip install triton` (Linux; on Colab and Kaggle "
        "it comes with torch); the plain-torch references (parcourse.kernels.*_reference) work "
        "without it.",
        "[2.0, 2.0]"]
    assert issubclass(MissingDependencyError, ImportError)


def test_require_raises_the_install_hint(monkeypatch):
    monkeypatch.setattr(runtime, "AVAILABLE", False)
    with pytest.raises(MissingDependencyError) as caught:
        kernels.vector_add(torch.ones(1), torch.ones(1))
    assert str(caught.value) == kernels.INSTALL_HINT


@pytest.mark.parametrize("module, args, flops, nbytes", [
    ("vecadd", (1000,), 1000, 3 * 1000 * 4),
    ("fused_softmax", (10, 20), 5 * 200, 2 * 200 * 4),
    ("layernorm", (10, 20), 7 * 200, (2 * 200 + 2 * 20) * 4),
    ("tiled_matmul", (10, 20, 30), 2 * 10 * 20 * 30, (10 * 30 + 30 * 20 + 10 * 20) * 4),
])
def test_flop_and_byte_counts(module, args, flops, nbytes):
    import importlib

    mod = importlib.import_module(f"parcourse.kernels.{module}")
    assert mod.flops(*args) == flops
    size_args = args[:3] if module == "tiled_matmul" else args
    assert mod.bytes_moved(*size_args, 4) == nbytes


def test_tiled_traffic_shrinks_with_the_tile_and_intensity_is_block_over_itemsize():
    from parcourse.kernels import tiled_matmul

    n = 4096
    small = tiled_matmul.tiled_bytes_moved(n, n, n, 2, 64, 64)
    large = tiled_matmul.tiled_bytes_moved(n, n, n, 2, 128, 128)
    assert small == (64 * 64 * 128 * n + n * n) * 2
    assert large < small
    # 2 n³ / (n³ (2/128) s) = 128 / s = 64 FLOP/byte for float16, up to the write of C
    assert 63 < tiled_matmul.flops(n, n, n) / large < 64
