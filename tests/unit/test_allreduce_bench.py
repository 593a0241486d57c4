"""The collective benchmark's tables (parcourse.bench.allreduce), from made-up rows."""

from parcourse.bench import allreduce as bench


def _row(k, collective, nbytes, implementation, seconds, gloo_seconds):
    return {"world_size": k, "collective": collective, "bytes": nbytes,
            "implementation": implementation, "seconds": seconds, "bus_GBps": 1e-3 / seconds,
            "vs_gloo": gloo_seconds / seconds}


def test_one_collective_prints_one_table_as_before():
    rows = [_row(2, "all_reduce", 4096, i, s, 2e-4) for i, s in
            (("gloo", 2e-4), ("ring", 4e-4))]
    header, cells = bench.table_cells(rows)
    assert header == ("K", "size", "gloo GB/s", "ring GB/s", "ring/gloo")
    assert cells == [["2", "4 KiB", "5.00", "2.50", "0.50"]]
    lines = bench.format_table(rows).splitlines()
    assert lines == ["K   size  gloo GB/s  ring GB/s  ring/gloo",
                     "2  4 KiB       5.00       2.50       0.50"]
    # rows without a "collective" (as written before it existed) are all-reduces
    assert bench.format_table([{k: v for k, v in r.items() if k != "collective"}
                               for r in rows]) == "\n".join(lines)


def test_each_collective_gets_its_table_with_ratios_to_its_own_gloo():
    rows = [_row(k, c, 1024, i, s, 1e-4) for k in (2, 4) for c in bench.COLLECTIVE_NAMES
            for i, s in (("gloo", 1e-4), ("ring", 1.25e-4))]
    text = bench.format_table(rows)
    header, cells = bench.table_cells(rows, "reduce_scatter")
    assert header == ("K", "size", "gloo GB/s", "ring GB/s", "ring/gloo")
    assert cells == [["2", "1 KiB", "10.0", "8.00", "0.80"], ["4", "1 KiB", "10.0", "8.00", "0.80"]]
    tables = text.split("\n\n")
    assert [t.splitlines()[0] for t in tables] == ["# all-reduce", "# reduce-scatter",
                                                  "# all-gather"]
    for table in tables:
        body = table.splitlines()[2:]
        assert [line.split()[0] for line in body] == ["2", "4"]
        assert all(line.split()[-1] == "0.80" for line in body)


def test_the_whole_tensor_of_a_reduce_scatter_is_a_multiple_of_k():
    assert bench._whole_numel("all_reduce", 1024, 3) == 256
    assert bench._whole_numel("reduce_scatter", 1024, 3) == 255
    output, source = bench._tensors("all_gather", 1024, 4)
    assert (output.numel(), source.numel()) == (256, 64)
