"""parcourse.kernels.compiled: the kernels compiled for NVIDIA GPUs on this CPU, and the
cubin read back (chapter 5, "Reading the compiler's output").

The launch specialization is checked against Triton's own (``native_specialize_impl``,
what its runtime calls on every launch). The compiled kernels are checked against facts
of the hardware and of the kernel's arithmetic, not against stored numbers: a T4
(compute capability 7.5) has no tensor-core path in Triton, an A100 uses warp-level
``HMMA``, an H100 warpgroup ``HGMMA``; exact float32 products run on the CUDA cores, TF32
ones on the tensor cores; a 256 × 256 float32 accumulator over 8 warps needs 256
registers per thread, one more than a thread may have, so it spills, and a 128 × 128 one
(64 per thread) need not; sizes that are not multiples of 16 forbid wide loads. The same
claims are checked on every survey stored in ``parcourse/measurements/compiled/`` (other
Tritons).
"""

from types import SimpleNamespace

import pytest
import torch

from parcourse import kernels
from parcourse.kernels import compiled, vecadd
from parcourse.kernels.runtime import tl

needs_triton = pytest.mark.skipif(not kernels.AVAILABLE, reason="Triton is not installed")

RESOURCE_USAGE = """
Resource usage:
 Common:
  GLOBAL:0
 Function matmul_kernel:
  REG:255 STACK:2304 SHARED:1024 LOCAL:0 CONSTANT[0]:608 TEXTURE:0 SURFACE:0 SAMPLER:0
"""

SASS = """
        /*0a10*/                   HGMMA.64x128x16.F32 R24, gdesc[UR8], RZ, !UPT ;
        /*0a20*/                   HMMA.16816.F32 R4, R8, R12, R4 ;
        /*0a30*/                   FFMA R1, R2, R3, R1 ;
        /*0a40*/                   DFFMA R1, R2, R3, R1 ;
        /*0a50*/                   STL.64 [R1+0x10], R4 ;
        /*0a60*/                   LDL.128 R8, [R1+0x10] ;
        /*0a70*/                   LDL R9, [R1+0x20] ;
        /*0a80*/                   LDGSTS.E.BYPASS.LTC128B.128 [R3], desc[UR6][R4.64] ;
        /*0a90*/                   LDG.E.U16 R5, desc[UR6][R6.64] ;
"""


def test_resource_usage_is_read_field_by_field():
    assert compiled.parse_resource_usage(RESOURCE_USAGE) == {
        "REG": 255, "STACK": 2304, "SHARED": 1024, "LOCAL": 0, "CONSTANT[0]": 608,
        "TEXTURE": 0, "SURFACE": 0, "SAMPLER": 0}
    with pytest.raises(ValueError, match="no function in cuobjdump's resource usage"):
        compiled.parse_resource_usage("Resource usage:\n Common:\n  GLOBAL:0\n")


def test_instructions_are_counted_by_opcode_with_modifiers_and_not_inside_other_opcodes():
    assert compiled.count_instructions(SASS) == {"HGMMA": 1, "HMMA": 1, "FFMA": 1, "LDL": 2, "STL": 1,
                                                 "LDGSTS": 1}


def test_the_widest_global_load_is_read_from_its_modifiers():
    assert compiled.widest_global_load(SASS) == 128  # LDGSTS….128; LTC128B is a cache hint
    assert compiled.widest_global_load("LDG.E.U16 R5, [R6.64] ;\nLDG.E R7, [R8.64] ;") == 32
    assert compiled.widest_global_load("LDG.E.64 R4, [R6.64] ;\nLDG.E.U8 R7, [R8.64] ;") == 64
    assert compiled.widest_global_load("LDG.E.S16 R5, [R6.64] ;") == 16
    assert compiled.widest_global_load("FFMA R1, R2, R3, R1 ;") == 0


def _program(registers, warps, **fields):
    return compiled.Compiled(**{**dict(capability=90, num_warps=warps, registers=registers,
                                       stack_bytes=0, shared_bytes=0, instructions={}, load_bits=0),
                                **fields})


def test_programs_per_sm_round_registers_up_to_the_allocation_granule():
    assert _program(255, 8).programs_per_sm_by_registers == 1     # 256 × 256 threads = 65,536
    assert _program(255, 4).programs_per_sm_by_registers == 2
    assert _program(40, 4).programs_per_sm_by_registers == 12     # 65,536 // (40 × 128)
    assert _program(33, 4).programs_per_sm_by_registers == 12     # 33 is allocated as 40
    assert _program(32, 4).programs_per_sm_by_registers == 16


def test_global_loads_say_width_and_whether_they_are_asynchronous_copies():
    assert _program(40, 4, load_bits=128, instructions={"LDGSTS": 24}).global_loads == "128-bit async"
    assert _program(40, 4, load_bits=16, instructions={"LDGSTS": 0}).global_loads == "16-bit"


@needs_triton
@pytest.mark.parametrize("value", [1, 0, 16, 4096, 1000, 2**31 - 16, 2**31 + 16, -32])
def test_integers_are_specialized_as_tritons_runtime_does(value):
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import native_specialize_impl

    assert compiled.specialization(value) == native_specialize_impl(BaseBackend, value, False, True, True)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_pointers_are_specialized_as_tritons_runtime_does(dtype):
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import native_specialize_impl

    tensor = torch.empty(64, dtype=dtype)
    name = {torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    for view, aligned in ((tensor, True), (tensor[1:], False)):
        assert view.data_ptr() % 16 == (0 if aligned else view.element_size())
        assert (compiled.specialization(compiled.Pointer(name, aligned))
                == native_specialize_impl(BaseBackend, view, False, True, True))


@needs_triton
@pytest.mark.parametrize("value", [0.125, 1.0])
def test_floats_are_specialized_as_tritons_runtime_does(value):
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import native_specialize_impl

    assert compiled.specialization(value) == native_specialize_impl(BaseBackend, value, False, True, True)


def test_a_launch_argument_must_be_a_pointer_an_int_or_a_float():
    with pytest.raises(TypeError) as error:
        compiled.specialization("2.5")
    assert str(error.value) == "a launch argument is a Pointer, an int or a float, got '2.5'"


def test_a_launch_of_contiguous_4096_matrices_makes_unit_strides_constants_and_the_rest_divisible():
    job = compiled.matmul_job(90, 64)
    signature, constants, divisible = compiled.launch_signature(job["kernel"], job["args"], job["constexprs"])
    assert signature == {
        "a_ptr": "*fp16", "b_ptr": "*fp16", "c_ptr": "*fp16", "M": "i32", "N": "i32", "K": "i32",
        "stride_am": "i32", "stride_ak": "constexpr", "stride_bk": "i32", "stride_bn": "constexpr",
        "stride_cm": "i32", "stride_cn": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
        "BLOCK_K": "constexpr", "GROUP_M": "constexpr", "IEEE": "constexpr"}
    assert constants == {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8, "IEEE": False,
                         "stride_ak": 1, "stride_bn": 1, "stride_cn": 1}
    assert divisible == [0, 1, 2, 3, 4, 5, 6, 8, 10]  # the pointers, M, N, K and the strides n
    job = compiled.matmul_job(90, 64, 1000)
    assert compiled.launch_signature(job["kernel"], job["args"], job["constexprs"])[2] == [0, 1, 2]


def test_a_launch_with_missing_or_unknown_arguments_names_them():
    args = dict(x_ptr=compiled.Pointer("fp32"), y_ptr=compiled.Pointer("fp32"), size=10)
    with pytest.raises(ValueError) as error:
        compiled.launch_signature(vecadd.add_kernel, args, {"BLOCK": 256})
    assert str(error.value) == "add_kernel takes x_ptr, y_ptr, z_ptr, n, BLOCK: missing z_ptr, n; unknown size"


@needs_triton
def test_a_triton_without_knobs_is_refused_with_the_version_needed(monkeypatch):
    monkeypatch.setattr(compiled.runtime, "triton", SimpleNamespace(__version__="3.3.1"))
    for call in (compiled.toolchain, lambda: compiled.compile_kernels([compiled.add_job(90, 256, 64)])):
        with pytest.raises(RuntimeError) as error:
            call()
        assert str(error.value) == ("parcourse.kernels.compiled needs Triton 3.4 or newer (its "
                                    "triton.knobs names the ptxas and cuobjdump it ships); this is "
                                    "Triton 3.3.1")


@needs_triton
def test_an_unknown_compute_capability_is_refused_with_the_ones_known():
    with pytest.raises(ValueError) as error:
        compiled.compile_kernel(**compiled.add_job(70, 256, 1 << 20))
    assert str(error.value) == ("capability must be one of [75, 80, 90] (compute capability × 10: "
                                "75 = T4 (Turing), 80 = A100 (Ampere), 90 = H100 (Hopper)), got 70")


@needs_triton
def test_a_kernel_defined_in_a_notebook_is_refused_with_what_to_do():
    def my_kernel(x_ptr, BLOCK: tl.constexpr):
        pass
    my_kernel.__module__ = "__main__"
    with pytest.raises(ValueError) as error:
        compiled.compile_kernel(SimpleNamespace(fn=my_kernel), 90, args={"x_ptr": compiled.Pointer("fp32")},
                                constexprs={"BLOCK": 16})
    assert str(error.value) == ("my_kernel is defined in __main__ (a notebook or a script), which the "
                                "compiling process cannot import: put the kernel in a .py file and "
                                "import it from there")


@needs_triton
def test_a_kernel_that_does_not_compile_reports_the_configuration_and_the_compilers_message():
    with pytest.raises(RuntimeError) as error:
        compiled.compile_kernel(**compiled.add_job(90, 100, 1 << 20))
    message = str(error.value)
    assert message.startswith("compiling vecadd.add_kernel (BLOCK=100; num_warps=4, num_stages=3) "
                              "for compute capability 9.0 failed: CompilationError:")
    assert message.endswith("arange's range must be a power of 2")  # tl.arange(0, 100)


@needs_triton
def test_a_compilation_past_its_time_limit_is_stopped_with_a_hint():
    with pytest.raises(RuntimeError) as error:
        compiled.compile_kernels([compiled.add_job(90, 256, 1 << 20)], timeout=0.01)
    assert str(error.value) == ("compiling 1 kernel configuration took more than 0.01 s; "
                                "compile fewer at once, or allow more time (timeout=...)")


CLAIMED = ["T4 fp16 tile 64", "A100 fp16 tile 64", "H100 fp16 tile 32", "H100 fp16 tile 64",
           "H100 fp16 tile 128", "H100 fp16 tile 256", "H100 fp16 tile 64, n=1000",
           "H100 fp32 exact tile 128", "H100 fp32 TF32 tile 128", "H100 vector add BLOCK 64",
           "H100 vector add BLOCK 1024"]
SOURCES = ["this machine's Triton"] + [s["file"] for s in compiled.stored_surveys()]


@pytest.fixture(scope="module")
def compiled_here():
    jobs = compiled.survey_jobs()
    return dict(zip(CLAIMED, compiled.compile_kernels([jobs[label] for label in CLAIMED])))


@pytest.fixture(params=SOURCES)
def built(request):
    """The claimed rows compiled now, and as stored by other Triton versions: the chapter's
    claims must hold for both."""
    if request.param == SOURCES[0]:
        if not kernels.AVAILABLE:
            pytest.skip("Triton is not installed")
        return request.getfixturevalue("compiled_here")
    return next(s["rows"] for s in compiled.stored_surveys() if s["file"] == request.param)


def test_a_stored_survey_is_complete_and_says_what_compiled_it():
    assert SOURCES[1:], "parcourse/measurements/compiled/ holds the survey of the H100 run's Triton"
    for stored in compiled.stored_surveys():
        assert stored["file"] == f"triton-{stored['triton']}.json"
        assert stored["toolchain"].startswith(f"Triton {stored['triton']} (ptxas ")
        assert list(stored["rows"]) == list(compiled.survey_jobs())
        for label, row in stored["rows"].items():
            assert row.capability == {"T4": 75, "A100": 80, "H100": 90}[label.split()[0]]
            assert 0 < row.registers <= compiled.MAX_REGISTERS_PER_THREAD


def test_tl_dot_on_a_t4_runs_on_the_cuda_cores_and_spills(built):
    t4 = built["T4 fp16 tile 64"]
    assert t4.capability == 75
    assert t4.instructions["HMMA"] == t4.instructions["HGMMA"] == 0
    assert t4.instructions["FFMA"] > 0
    assert t4.math_unit == "CUDA cores (FFMA)"
    assert t4.spills  # the chapter says so: ptxas keeps few registers and spills the rest


def test_tl_dot_uses_warp_mma_on_an_a100_and_warpgroup_mma_on_an_h100(built):
    a100, h100 = built["A100 fp16 tile 64"], built["H100 fp16 tile 64"]
    assert a100.instructions["HMMA"] > 0 and a100.instructions["HGMMA"] == 0
    assert h100.instructions["HGMMA"] > 0 and h100.math_unit == "tensor cores, warpgroup (HGMMA)"
    small = built["H100 fp16 tile 32"]  # a warpgroup instruction covers 64 rows; 32 get HMMA
    assert small.instructions["HMMA"] > 0 and small.instructions["HGMMA"] == 0


def test_exact_float32_products_avoid_the_tensor_cores_and_tf32_ones_use_them(built):
    exact, tf32 = built["H100 fp32 exact tile 128"], built["H100 fp32 TF32 tile 128"]
    assert exact.instructions["HGMMA"] == exact.instructions["HMMA"] == 0 and exact.instructions["FFMA"] > 0
    assert tf32.instructions["HGMMA"] > 0


def test_a_256_tile_spills_and_a_128_tile_does_not(built):
    big, fits = built["H100 fp16 tile 256"], built["H100 fp16 tile 128"]
    assert (big.num_warps, fits.num_warps) == (8, 8)
    assert 256 * 256 // (32 * big.num_warps) > compiled.MAX_REGISTERS_PER_THREAD
    assert big.registers == compiled.MAX_REGISTERS_PER_THREAD and big.spills
    assert big.stack_bytes > 0 and big.instructions["STL"] > 0 and big.instructions["LDL"] > 0
    assert fits.registers < compiled.MAX_REGISTERS_PER_THREAD and not fits.spills
    assert fits.shared_bytes < big.shared_bytes


def test_sizes_that_are_multiples_of_16_get_wide_asynchronous_loads_and_1000_does_not(built):
    aligned, unaligned = built["H100 fp16 tile 64"], built["H100 fp16 tile 64, n=1000"]
    assert aligned.load_bits == 128 and aligned.instructions["LDGSTS"] > 0
    assert unaligned.load_bits == 16 and unaligned.instructions["LDGSTS"] == 0  # one fp16 at a time
    assert unaligned.global_loads == "16-bit"


def test_the_vector_add_loads_wider_with_bigger_blocks_and_never_spills(built):
    small, big = built["H100 vector add BLOCK 64"], built["H100 vector add BLOCK 1024"]
    assert small.load_bits == 32 and big.load_bits == 128  # 64 floats over 128 threads: one each
    for add in (small, big):
        assert add.math_unit == "none counted" and not add.spills and add.shared_bytes == 0


@needs_triton
def test_the_command_line_prints_the_table_and_stores_what_stored_surveys_reads(tmp_path, monkeypatch, capsys):
    row = compiled.Compiled(capability=90, num_warps=8, registers=255, stack_bytes=1024,
                            shared_bytes=196608, load_bits=128,
                            instructions=dict(HGMMA=8, HMMA=0, FFMA=0, LDL=286, STL=414, LDGSTS=48))
    monkeypatch.setattr(compiled, "survey", lambda: {"H100 fp16 tile 256": row})
    target = tmp_path / "surveys" / f"triton-{compiled.runtime.triton.__version__}.json"
    compiled.main(["--json", str(target)])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"compiled by {compiled.toolchain()}"
    assert printed[2].split() == ["H100", "fp16", "tile", "256", "tensor", "cores,", "warpgroup",
                                  "(HGMMA)", "255", "1,024", "700", "128-bit", "async", "192", "1"]
    assert printed[3] == f"written: {target}"
    (stored,) = compiled.stored_surveys(target.parent)
    assert stored["rows"] == {"H100 fp16 tile 256": row} and stored["file"] == target.name
