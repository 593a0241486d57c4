"""Chapter 3's ring table is the package's ring: read from Ring's plans, it follows the
rule the ring's docstring states, for every K."""

import pytest

from parcourse.chapters import ring_figure


@pytest.mark.parametrize("k", [2, 3, 4, 5, 8])
def test_the_table_follows_the_rings_rule(k):
    table = ring_figure.schedule(k)
    assert len(table) == k and all(len(row) == 2 * (k - 1) for row in table)
    for r, row in enumerate(table):
        for s in range(k - 1):   # reduce-scatter: chunk r − s − 1, s + 1 copies summed
            assert row[s] == ("RS", (r - s - 1) % k, s + 1)
        for s in range(k - 1):   # all-gather: the finished chunk r − s
            assert row[k - 1 + s] == ("AG", (r - s) % k, k)
    # what rank r sends at a step is what rank r + 1 adds to at the next one
    for r in range(k):
        for s in range(k - 2):
            assert table[r][s][1] == table[(r + 1) % k][s + 1][1]
