"""parcourse.kernels.compiled_attention: the FlashAttention kernels compiled for NVIDIA GPUs
on this CPU (chapter 5, "Attention in tiles").

Checked against facts of the hardware, not stored numbers: Triton gives a T4 (compute
capability 7.5) no tensor-core path, an A100 gets warp-level ``HMMA``, an H100 warpgroup
``HGMMA``. A configuration that does not compile is a row with the compiler's message, and
the others still compile. Four compilations, a few seconds each.
"""

import pytest

from parcourse import kernels
from parcourse.kernels import compiled, compiled_attention
from parcourse.kernels.compiled import Compiled

needs_triton = pytest.mark.skipif(not kernels.AVAILABLE, reason="Triton is not installed")


def test_a_forward_launch_on_4096_keys_is_specialized_like_the_wrappers():
    job = compiled_attention.attention_job(90, dtype="bf16", block_m=128)
    signature, constants, divisible = compiled.launch_signature(job["kernel"], job["args"], job["constexprs"])
    assert signature["q_ptr"] == "*bf16" and signature["lse_ptr"] == "*fp32"
    assert signature["seq_len"] == "i32" and signature["scale"] == "fp32"
    assert divisible == [0, 1, 2, 3, 4, 5]  # five pointers and S = 4096
    assert constants == dict(HEAD_DIM=64, BLOCK_M=128, BLOCK_N=64, CAUSAL=True, IEEE=False, UPCAST=False)
    assert (job["num_warps"], job["num_stages"]) == (8, 2)
    for which in compiled_attention.KERNELS:  # every kernel's arguments are named
        job = compiled_attention.attention_job(80, which)
        compiled.launch_signature(job["kernel"], job["args"], job["constexprs"])


def test_an_unknown_kernel_and_an_unknown_failure_mode_are_refused():
    with pytest.raises(ValueError) as error:
        compiled_attention.attention_job(90, "sideways")
    assert str(error.value) == ("which must be one of 'forward', 'backward dK dV', 'backward dQ', "
                                "got 'sideways'")
    if kernels.AVAILABLE:
        with pytest.raises(ValueError) as error:
            compiled.compile_kernels([], failures="ignore")
        assert str(error.value) == "failures must be 'raise' or 'keep', got 'ignore'"


@pytest.fixture(scope="module")
def built():
    if not kernels.AVAILABLE:
        pytest.skip("Triton is not installed")
    jobs = {label: compiled_attention.survey_jobs()[label]
            for label in ("T4 fp16 fwd d64 64×64", "A100 fp16 fwd d64 64×64", "H100 fp16 fwd d64 128×64")}
    jobs["H100 tile 100"] = compiled_attention.attention_job(90, block_m=100)  # not a power of 2
    return compiled_attention.survey(jobs)


def test_the_forward_uses_the_tensor_cores_of_an_a100_and_an_h100_and_not_of_a_t4(built):
    t4, a100, h100 = (built[label] for label in ("T4 fp16 fwd d64 64×64", "A100 fp16 fwd d64 64×64",
                                                 "H100 fp16 fwd d64 128×64"))
    assert t4.math_unit == "CUDA cores (FFMA)" and t4.instructions["HMMA"] == t4.instructions["HGMMA"] == 0
    assert a100.instructions["HMMA"] > 0 and a100.instructions["HGMMA"] == 0
    assert h100.math_unit == "tensor cores, warpgroup (HGMMA)"
    for c in (a100, h100):  # the tiles of K and V arrive by asynchronous copies, no spills
        assert c.instructions["LDGSTS"] > 0 and not c.spills and c.shared_bytes > 0


def test_a_configuration_that_does_not_compile_is_a_row_with_the_reason(built):
    failed = built["H100 tile 100"]
    assert isinstance(failed, str)
    assert failed.startswith("compiling flash_attention.attention_forward_kernel (HEAD_DIM=64, BLOCK_M=100, ")
    assert failed.endswith("arange's range must be a power of 2")
    assert sum(isinstance(c, Compiled) for c in built.values()) == 3  # the others compiled
    lines = compiled_attention.format_rows(built)
    assert len(lines) == 1 + 4
    assert lines[-1].split() == ["H100", "tile", "100", "did", "not", "compile:", "CompilationError:",
                                 "arange's", "range", "must", "be", "a", "power", "of", "2"]
