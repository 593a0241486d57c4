"""The test suite itself: pytest imports test modules by their basename (rootdir-relative
packages are not used), so two test files with one name make `make test` stop at
collection with "import file mismatch". Checked here, in the fast loop."""

from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_two_test_files_share_a_basename():
    names = Counter(path.name for path in ROOT.glob("tests/**/test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
