"""Tests of parcourse.chapters.recsys: a row-sharded embedding equals nn.Embedding (chapter 6)."""

import pytest
import torch

from parcourse.chapters import recsys


def test_shards_of_the_table_agree_with_the_whole_table():
    whole = recsys.init_rows(0, 2500, 3, seed=4)
    for start, end in [(0, 10), (1000, 1030), (1020, 2500), (7, 7)]:
        assert torch.equal(recsys.init_rows(start, end, 3, seed=4), whole[start:end])
    assert not torch.equal(recsys.init_rows(0, 10, 3, seed=5), whole[:10])


def test_owners_follow_the_row_shards():
    # 10 rows over 3 workers: rows 0–3, 4–6, 7–9
    assert recsys.owners(torch.arange(10), 10, 3).tolist() == [0] * 4 + [1] * 3 + [2] * 3


@pytest.mark.parametrize("num_rows, ids", [
    (10, [[0, 5, 9, 5, 2], [7, 1], []]),          # duplicates; a worker with no ids
    (2100, [[2099, 0, 1024, 1023], [3, 3, 3]]),   # rows from several random blocks
    (7, [[6, 0, 3]]),                              # one worker: no communication at all
])
def test_sharded_lookup_and_gradient_equal_nn_embedding(num_rows, ids):
    ids = [torch.tensor(i, dtype=torch.long) for i in ids]
    reports = recsys.sharded_lookup(num_rows, 4, ids, seed=2, verbose=False)
    rows, grad = recsys.reference_lookup(num_rows, 4, ids, seed=2)
    bounds = [r["shard"] for r in reports]
    assert [b for r in bounds for b in r] == [v for b in bounds for v in b]  # well-formed
    assert bounds[0][0] == 0 and bounds[-1][1] == num_rows
    for report, expected in zip(reports, rows):
        assert torch.equal(report["rows"], expected)           # lookups are exact copies
        start, end = report["shard"]
        torch.testing.assert_close(report["grad"], grad[start:end], rtol=1e-6, atol=1e-6)


def test_traffic_counts_what_crosses_between_workers():
    ids = [torch.tensor([0, 5, 9, 5, 2]), torch.tensor([7, 1]), torch.tensor([], dtype=torch.long)]
    reports = recsys.sharded_lookup(10, 4, ids, verbose=False)
    # rank 0 owns rows 0–3: it asks others for 5, 9, 5 (3 ids) and serves row 1 to rank 1
    assert reports[0]["traffic"] == {"ids": 3 * 8, "rows": 1 * 4 * 4, "counts": 2 * 8,
                                     "row gradients": 3 * 4 * 4}
    # rank 2 owns rows 7–9: it serves 9 to rank 0 and 7 to rank 1, and asks nothing
    assert reports[2]["traffic"] == {"ids": 0, "rows": 2 * 4 * 4, "counts": 2 * 8,
                                     "row gradients": 0}
    assert [r["shard bytes"] for r in reports] == [4 * 16, 3 * 16, 3 * 16]


def test_expected_bytes_formula():
    assert recsys.expected_bytes(1000, 16, 4) == {"ids": 750 * 8, "rows": 750 * 64,
                                                  "counts": 24}
    assert recsys.expected_bytes(1000, 16, 1) == {"ids": 0, "rows": 0, "counts": 0}


def test_bad_ids_are_refused_with_the_range():
    with pytest.raises(Exception, match=r"ids must lie in \[0, 10\), got values from 0 to 10"):
        recsys.sharded_lookup(10, 2, [torch.tensor([0, 10])], verbose=False)
    with pytest.raises(ValueError, match="a table of 1 rows cannot give each of 2 workers"):
        recsys.sharded_lookup(1, 2, [torch.tensor([0]), torch.tensor([0])], verbose=False)
