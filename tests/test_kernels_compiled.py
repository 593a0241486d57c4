"""parcourse.kernels.compiled: the kernels compiled for NVIDIA GPUs on this CPU, and the
cubin read back (chapter 5, "Reading the compiler's output").

The compiled kernels are checked against facts of the hardware and of the kernel's own
arithmetic, not against stored numbers: a T4 (compute capability 7.5) has no tensor-core
path in Triton, an A100 uses warp-level ``HMMA``, an H100 warpgroup ``HGMMA``; exact
float32 products run on the CUDA cores, TF32 ones on the tensor cores; a 256 × 256
float32 accumulator over 8 warps needs 256 registers per thread, one more than a thread
may have, so it spills, and a 128 × 128 one (64 per thread) need not.
"""

from types import SimpleNamespace

import pytest

from parcourse import kernels
from parcourse.kernels import compiled, tiled_matmul, vecadd
from parcourse.kernels._triton import tl

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
"""


def test_resource_usage_is_read_field_by_field():
    assert compiled.parse_resource_usage(RESOURCE_USAGE) == {
        "REG": 255, "STACK": 2304, "SHARED": 1024, "LOCAL": 0, "CONSTANT[0]": 608,
        "TEXTURE": 0, "SURFACE": 0, "SAMPLER": 0}
    with pytest.raises(ValueError, match="no function in cuobjdump's resource usage"):
        compiled.parse_resource_usage("Resource usage:\n Common:\n  GLOBAL:0\n")


def test_instructions_are_counted_by_opcode_with_modifiers_and_not_inside_other_opcodes():
    assert compiled.count_instructions(SASS) == {"HGMMA": 1, "HMMA": 1, "FFMA": 1, "LDL": 2, "STL": 1}


def test_programs_per_sm_round_registers_up_to_the_allocation_granule():
    def program(registers, warps):
        return compiled.Compiled(capability=90, num_warps=warps, registers=registers, stack_bytes=0,
                                 shared_bytes=0, instructions={})
    assert program(255, 8).programs_per_sm_by_registers == 1     # 256 × 256 threads = 65,536
    assert program(255, 4).programs_per_sm_by_registers == 2
    assert program(40, 4).programs_per_sm_by_registers == 12     # 65,536 // (40 × 128)
    assert program(33, 4).programs_per_sm_by_registers == 12     # 33 is allocated as 40
    assert program(32, 4).programs_per_sm_by_registers == 16


def test_the_signature_follows_the_kernels_parameters():
    assert compiled.signature_of(tiled_matmul.matmul_kernel, "fp16") == {
        "a_ptr": "*fp16", "b_ptr": "*fp16", "c_ptr": "*fp16", "M": "i32", "N": "i32", "K": "i32",
        **{f"stride_{s}": "i32" for s in ("am", "ak", "bk", "bn", "cm", "cn")},
        "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr",
        "GROUP_M": "constexpr", "IEEE": "constexpr"}


@needs_triton
def test_an_unknown_compute_capability_is_refused_with_the_ones_known():
    with pytest.raises(ValueError) as error:
        compiled.compile_kernel(vecadd.add_kernel, 70, constexprs={"BLOCK": 256})
    assert str(error.value) == ("capability must be one of [75, 80, 90] (compute capability × 10: "
                                "75 = T4 (Turing), 80 = A100 (Ampere), 90 = H100 (Hopper)), got 70")


@needs_triton
def test_a_kernel_defined_in_a_notebook_is_refused_with_what_to_do():
    def my_kernel(x_ptr, BLOCK: tl.constexpr):
        pass
    my_kernel.__module__ = "__main__"
    with pytest.raises(ValueError) as error:
        compiled.compile_kernel(SimpleNamespace(fn=my_kernel), 90, constexprs={"BLOCK": 16})
    assert str(error.value) == ("my_kernel is defined in __main__ (a notebook or a script), which the "
                                "compiling process cannot import: put the kernel in a .py file and "
                                "import it from there")


@needs_triton
def test_a_kernel_that_does_not_compile_reports_the_configuration_and_the_compilers_message():
    with pytest.raises(RuntimeError) as error:
        compiled.compile_kernel(vecadd.add_kernel, 90, constexprs={"BLOCK": 100})
    message = str(error.value)
    assert message.startswith("compiling vecadd.add_kernel (BLOCK=100; num_warps=4, num_stages=3) "
                              "for compute capability 9.0 failed: CompilationError:")
    assert message.endswith("arange's range must be a power of 2")  # tl.arange(0, 100)


@needs_triton
def test_a_compilation_past_its_time_limit_is_stopped_with_a_hint():
    job = dict(kernel=vecadd.add_kernel, capability=90, constexprs={"BLOCK": 256})
    with pytest.raises(RuntimeError) as error:
        compiled.compile_kernels([job], timeout=0.01)
    assert str(error.value) == ("compiling 1 kernel configuration took more than 0.01 s; "
                                "compile fewer at once, or allow more time (timeout=...)")


CLAIMED = ["T4 fp16 tile 64", "A100 fp16 tile 64", "H100 fp16 tile 32", "H100 fp16 tile 64",
           "H100 fp16 tile 128", "H100 fp16 tile 256", "H100 fp32 exact tile 128",
           "H100 fp32 TF32 tile 128", "H100 vector add BLOCK 1024"]
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
    assert SOURCES[1:], "book/data/compiled/ holds the survey of the H100 run's Triton"
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
    assert big.registers <= compiled.MAX_REGISTERS_PER_THREAD and big.spills
    assert big.stack_bytes > 0 and big.instructions["STL"] > 0 and big.instructions["LDL"] > 0
    assert fits.registers <= compiled.MAX_REGISTERS_PER_THREAD and not fits.spills
    assert fits.programs_per_sm_by_registers == 1
    assert fits.shared_bytes < big.shared_bytes


def test_the_vector_add_has_no_products_and_no_spills(built):
    add = built["H100 vector add BLOCK 1024"]
    assert add.math_unit == "none counted" and not add.spills
    assert 0 < add.registers < 64 and add.programs_per_sm_by_registers >= 8


@needs_triton
def test_the_command_line_prints_the_table_and_stores_what_stored_surveys_reads(tmp_path, monkeypatch, capsys):
    row = compiled.Compiled(capability=90, num_warps=8, registers=255, stack_bytes=2304,
                            shared_bytes=65536, instructions=dict(HGMMA=8, HMMA=0, FFMA=0, LDL=532, STL=697))
    monkeypatch.setattr(compiled, "survey", lambda: {"H100 fp16 tile 256": row})
    target = tmp_path / "surveys" / f"triton-{compiled._triton.triton.__version__}.json"
    compiled.main(["--json", str(target)])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"compiled by {compiled.toolchain()}"
    assert printed[2].split() == ["H100", "fp16", "tile", "256", "tensor", "cores,", "warpgroup",
                                  "(HGMMA)", "255", "2304", "1229", "64", "1"]
    assert printed[3] == f"written: {target}"
    (stored,) = compiled.stored_surveys(target.parent)
    assert stored["rows"] == {"H100 fp16 tile 256": row} and stored["file"] == target.name
