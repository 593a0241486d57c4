"""parcourse.kernels.compiled_findings: what chapter 5 reads from a compiled survey, here
from the stored survey (compiling needs ptxas, a subprocess) and the stored H100 report."""

import pytest

from parcourse.kernels import compiled, compiled_findings, devices

STORED = compiled.stored_surveys()
ROWS = STORED[-1]["rows"]
H100 = next(r for r in devices.stored_reports() if "H100" in r["device"])


def refuse():
    raise RuntimeError("Triton 3.2 cannot compile for another GPU")


def test_a_survey_that_compiles_here_is_used(monkeypatch):
    monkeypatch.setattr(compiled, "toolchain", lambda: "Triton 9 (ptxas 99)")  # it asks ptxas
    rows, where = compiled_findings.survey_or_stored(lambda: {"a": 1}, stored=STORED)
    assert rows == {"a": 1} and where == "compiled on this machine by Triton 9 (ptxas 99)"


def test_where_nothing_compiles_the_newest_stored_survey_is_shown_with_the_reason():
    rows, where = compiled_findings.survey_or_stored(refuse, stored=STORED)
    assert rows is ROWS
    assert where == f"Triton 3.2 cannot compile for another GPU; stored, compiled by {STORED[-1]['toolchain']}"
    with pytest.raises(RuntimeError, match="cannot compile"):
        compiled_findings.survey_or_stored(refuse, stored=[])


def test_registers_and_spills_of_tile_256_and_128():
    big, small = ROWS["H100 fp16 tile 256"], ROWS["H100 fp16 tile 128"]
    assert compiled_findings.registers_and_spills(big) == (
        f"{big.registers} registers, stack {big.stack_bytes} B, {big.spill_instructions} STL/LDL")
    assert big.spill_instructions > 0 and small.spill_instructions == 0


def test_measured_tiles_come_from_the_first_report_with_a_sweep():
    report, tiles = compiled_findings.measured_tiles([{"bench": {}}, H100])
    assert report is H100 and len(tiles) == len(H100["bench"]["sweep"]["matmul"])
    assert compiled_findings.measured_tiles([]) == (None, {})


def test_findings_of_the_stored_survey():
    lines = compiled_findings.findings(ROWS, [H100], stored=STORED)
    assert lines[0] == ("T4: tl.dot compiles to ['CUDA cores (FFMA)'] at every tile; tensor-core "
                        "instructions in all 5 kernels: 0")
    assert lines[1].startswith("H100 tile 128: accumulator 128² float32 over 256 threads = 64 values per thread")
    assert lines[2].startswith("H100 tile 256: accumulator 256² float32 over 256 threads = 256 values per thread")
    assert lines[3].startswith(f"  compiled by {STORED[-1]['toolchain']} ({STORED[-1]['file']}): tile 128:")
    assert lines[4].startswith(f"  measured ({H100['device']}, Triton {H100['triton']}): n = 4096, tile 128")
    assert lines[5].startswith("H100 tile 64: n a multiple of 16 (4096, 1024) loads 128-bit async, "
                               "n = 1000 loads 16-bit; measured ")
    assert lines[6] == "H100 vector add: BLOCK 64 loads 32-bit per thread and instruction, BLOCK 1024 128-bit"
    assert lines[7] == ("H100 float32: exact products on CUDA cores (FFMA), "
                        "TF32 products on tensor cores, warpgroup (HGMMA)")
    assert len(lines) == 4 + len(STORED) + 3
    without = compiled_findings.findings(ROWS, [], stored=[])
    assert len(without) == 6 and "measured" not in without[3]
