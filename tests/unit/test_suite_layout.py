"""The test suite itself: pytest imports test modules by their basename (rootdir-relative
packages are not used), so two test files with one name make `make test` stop at
collection with "import file mismatch". Checked here, in the fast loop."""

from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_no_two_test_files_share_a_basename():
    names = Counter(path.name for path in ROOT.glob("tests/**/test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []


@pytest.mark.distributed  # it runs git
def test_the_repository_tracks_no_build_output():
    """What pip, setuptools and the book's build write (build/, *.egg-info, _build/) stays
    out of the repository: .gitignore covers it, and nothing of it is committed."""
    import subprocess

    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.splitlines()
    built = [name for name in tracked
             if name.split("/")[0] in ("build", "_build", "dist", ".venv")
             or ".egg-info/" in name]
    assert built == []
