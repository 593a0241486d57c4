"""The kernel benchmark's report (parcourse.kernels.bench_report) as tables: the same header and
cells for a terminal (format_report) and for the book's page (report_markdown), from the
stored H100 report and a made-up attention row."""

from parcourse import tables
from parcourse.kernels import bench_attention, bench_report, devices

(H100,) = [r for r in devices.stored_reports() if "H100" in r["device"] and "bench" in r]
ATTENTION = [{"batch": 4, "heads": 16, "seq_len": 4096, "head_dim": 64, "causal": False, "dtype": "float16",
              "block_m": 128, "block_n": 64, "forward_tflops": 412.5, "backward_tflops": 201.0,
              "max_abs_error": 1e-3, "dq_max_abs_error": 2e-3},
             {"batch": 4, "heads": 16, "seq_len": 4096, "head_dim": 64, "causal": True, "dtype": "float16",
              "block_m": 256, "block_n": 128, "error": "OutOfResources: shared memory"}]


def test_the_gpu_rows_carry_their_units_in_the_header():
    header, cells = bench_report.row_cells(H100["bench"])
    assert header == bench_report.GPU_HEADER == ("kernel", "size", "dtype", "Triton ms", "torch ms", "GB/s",
                                          "TFLOPS", "of peak", "vs torch")
    add = next(c for c in cells if c[:2] == ["vector_add", "67108864"])
    row = next(r for r in H100["bench"]["rows"] if (r["kernel"], r["size"]) == ("vector_add", "67108864"))
    assert add == ["vector_add", "67108864", "float32", tables.significant(row["triton_seconds"] * 1e3),
                   tables.significant(row["torch_seconds"] * 1e3), "2979.6", "0.25", "89%", "1.00×"]


def test_the_sweep_is_two_tables_of_sizes_by_block():
    (add_caption, add_header, add), (mm_caption, mm_header, mm) = bench_report.sweep_tables(H100["bench"]["sweep"])
    assert add_caption == "sweep, vector add float32, GB/s by BLOCK"
    assert add_header == ("n", *map(str, bench_report.SWEEP_ADD_BLOCKS), "exact")
    assert [row[0] for row in add] == ["2¹⁶", "2¹⁸", "2²⁰", "2²²", "2²⁴", "2²⁶", "2²⁸"]
    assert all(row[-1] == "yes" for row in add)
    assert mm_header == ("n", *map(str, bench_report.SWEEP_MATMUL_BLOCKS), "torch")
    assert [row[0] for row in mm] == [str(n) for n in bench_report.SWEEP_MATMUL_SIZES]
    assert bench_report.sweep_tables(None) == []


def test_text_and_markdown_show_the_same_tables_and_notes_and_only_the_text_the_targets():
    result = {**H100["bench"], "attention": ATTENTION}
    text, page = bench_report.format_report(result), bench_report.report_markdown(result)
    for header, cells in [bench_report.row_cells(result)] + [(h, c) for _, h, c in bench_report.report_tables(result)]:
        assert tables.text(header, cells) in "\n".join(line.removeprefix("#   ") for line in text.splitlines())
        assert tables.markdown(header, cells) in page
    assert bench_report.report_tables(result)[-1][0] == bench_attention.CAPTION
    failure = bench_attention.failures(ATTENTION)
    assert failure == ["attention 4×16×4096×64 causal Triton 256×128 float16: error: OutOfResources: "
                       "shared memory"]
    assert f"# {failure[0]}" in text.splitlines() and f"* {failure[0]}" in page.splitlines()
    targets = [line for line in text.splitlines() if line.startswith("target: ")]
    assert len(targets) == 3 and "target" not in page.lower()   # the README keeps them
