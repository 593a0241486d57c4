"""Fixtures shared by the book's tests: the whole book is built once per test run."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"


@pytest.fixture(scope="session")
def book_build() -> subprocess.CompletedProcess:
    """``jupyter-book build`` of the whole book with Sphinx warnings as errors, run once.

    Notebooks run again only where ``_build/.jupyter_cache`` holds no output for their
    current code. tests/test_book.py asserts that the build succeeded and what it wrote;
    tests/test_site_browser.py opens every page of it in a real browser.
    """
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    return subprocess.run([str(jupyter_book), "build", str(ROOT), "--warningiserror",
                           "--nitpick", "--keep-going"],
                          capture_output=True, text=True, timeout=1800, cwd=ROOT)


@pytest.fixture(scope="session")
def built_html(book_build) -> Path:
    """The built site's folder; fails (rather than skips) when the book did not build."""
    if book_build.returncode != 0:
        pytest.fail("the book did not build (tests/test_book.py shows why):\n"
                    + book_build.stdout[-2000:] + book_build.stderr[-2000:])
    return HTML
