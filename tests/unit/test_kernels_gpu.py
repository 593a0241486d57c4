"""The kernels compiled for a real CUDA GPU (pytest -m gpu; make gpu-check runs them).

Skipped on a machine without one: there the same kernels are tested in Triton's
interpreter (tests/unit/test_kernels.py). Sizes are large enough to launch thousands of
programs and not multiples of the blocks. Tolerances as in tests/unit/test_kernels.py; the
float16 matmul with K = 1000 sums in float32 on the GPU, and its entries have size ≈ √K ≈ 32,
where a float16 ulp is 2⁻⁵: rtol 1e-2.
"""

import pytest
import torch

from parcourse import kernels
from parcourse.kernels import compiled, tiled_matmul

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not (kernels.AVAILABLE and kernels.DEVICE == "cuda"),
    reason="needs a CUDA GPU and Triton: these tests compile the kernels for the GPU "
           "(on a CPU the interpreter tests in tests/unit/test_kernels.py run instead)")]


def rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(*shape, generator=g, device="cuda").to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_vector_add_on_the_gpu(dtype):
    x, y = rand(10_000_003, dtype=dtype, seed=1), rand(10_000_003, dtype=dtype, seed=2)
    torch.testing.assert_close(kernels.vector_add(x, y), x + y, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(4096, 4096), (1823, 781), (3, 20000)])
def test_softmax_and_layer_norm_on_the_gpu(shape, dtype):
    x = rand(*shape, dtype=dtype, seed=3)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(kernels.softmax(x), kernels.softmax_reference(x), **tol)
    w, b = rand(shape[1], dtype=dtype, seed=4), rand(shape[1], dtype=dtype, seed=5)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(kernels.layer_norm(x, w, b), kernels.layer_norm_reference(x, w, b), **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m, n, k", [(1000, 777, 1000), (4096, 4096, 512)])
def test_autotuned_matmul_on_the_gpu(m, n, k, dtype):
    a, b = rand(m, k, dtype=dtype, seed=6), rand(k, n, dtype=dtype, seed=7)
    tol = dict(rtol=1e-4, atol=1e-3) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-1)
    torch.testing.assert_close(kernels.matmul(a, b), kernels.matmul_reference(a, b), **tol)


def test_matmul_with_explicit_blocks_on_the_gpu():
    a, b = rand(300, 200, dtype=torch.float16), rand(200, 500, dtype=torch.float16, seed=1)
    c = kernels.matmul(a, b, block_m=64, block_n=64, block_k=32, group_m=4)
    torch.testing.assert_close(c, kernels.matmul_reference(a, b), rtol=1e-2, atol=1e-1)


def test_gpu_timing_works():
    from parcourse.kernels import bench

    x = rand(1 << 20)
    assert bench.gpu_seconds(lambda: kernels.vector_add(x, x)) > 0


@pytest.mark.parametrize("n, block", [(1024, 128), (1024, 256), (1000, 64)])
def test_the_compiled_survey_predicts_the_kernel_that_a_launch_compiles(n, block):
    """parcourse.kernels.compiled compiles ahead of time, on any machine, what a launch
    compiles (chapter 5, "Reading the compiler's output"): here a real launch's kernel must
    have the registers and the local memory (spills) predicted for this GPU."""
    major, minor = torch.cuda.get_device_capability()
    capability = 10 * major + minor
    if capability not in compiled.TARGETS:
        pytest.skip(f"compute capability {major}.{minor} is not one the survey compiles for")
    job = compiled.matmul_job(capability, block, n)
    (predicted,) = compiled.compile_kernels([job])
    a, b = rand(n, n, dtype=torch.float16, seed=8), rand(n, n, dtype=torch.float16, seed=9)
    c = torch.empty(n, n, dtype=torch.float16, device="cuda")
    grid = ((-(-n // block)) ** 2,)  # ⌈n / block⌉² tiles
    launched = tiled_matmul.matmul_kernel[grid](a, b, c, n, n, n, *a.stride(), *b.stride(), *c.stride(),
                                                **job["constexprs"], num_warps=job["num_warps"],
                                                num_stages=job["num_stages"])
    torch.testing.assert_close(c, kernels.matmul_reference(a, b), rtol=1e-2, atol=1e-1)
    launched._init_handles()  # loads the cubin: registers and local memory per thread
    assert launched.n_regs == predicted.registers
    assert launched.n_spills * 4 == predicted.stack_bytes  # Triton reports local bytes / 4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_flash_attention_on_the_gpu(dtype, causal):
    # float16/bfloat16 outputs are averages of values below ~5: a few ulps (2⁻⁸, 2⁻⁵ there)
    q, k, v, do = (rand(2, 4, 1000, 64, dtype=dtype, seed=s) for s in (10, 11, 12, 13))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = kernels.attention(q, k, v, causal=causal)
    grads = torch.autograd.grad(out, (q, k, v), do)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    expected_grads = torch.autograd.grad(expected, (q, k, v), do)
    tol = dict(rtol=0, atol=2 ** -5 if dtype == torch.float16 else 2 ** -3)
    torch.testing.assert_close(out, expected, **tol)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=4 * tol["atol"])


def test_the_gpt_trains_with_flash_attention_within_the_noise_floor_on_the_gpu():
    """``--attention triton`` on CUDA (the compiled kernels) against the torch attention,
    float32, bounded by the floor of the same run (the batch added in two halves), as
    tests/distributed/test_gpt_attention.py does in the interpreter."""
    from parcourse import compare
    from parcourse.training import TrainConfig, train

    common = dict(model="gpt", steps=5, batch_size=8, seed=3, optimizer="adam", lr=0.002,
                  quiet=True)
    reference = train(TrainConfig(**common)).state_dict
    floor = train(TrainConfig(**common, accumulation=2)).state_dict
    flash = train(TrainConfig(**common, attention="triton")).state_dict
    gap, noise = compare.within_noise(flash, reference, floor, what="--attention triton")
    print(f"--attention triton on {torch.cuda.get_device_name()}: {gap}; noise floor "
          f"{noise.absolute:.2e}")
