"""Every notebook as a Colab reader runs it: opened alone from the repository, in a Python
that has torch and gets only ``pip install`` of this repository (tests/site/reader_env.py).

Each notebook is copied alone into an empty folder and executed there. It fails on an
error, and on a page that silently degrades: one that says a stored GPU report or Triton
is missing (package data that a wheel must carry; the Triton that Colab's torch ships).
Horovod is not in the reader's environment (chapter 5 tells the reader how to build it):
its cells must say so, and a notebook that printed that notice is executed again, in the
tree with Horovod, by the book's build. Every other notebook's outputs go to the book's
execution cache, so ``make test`` executes it once (conftest.py runs this module before
the book is built).
"""

import shutil
import tempfile
import time
from pathlib import Path

import nbformat
import pytest

import reader_env

NOTEBOOKS = sorted(reader_env.ROOT.glob("book/**/*.ipynb"))
CELL_TIMEOUT = 600  # seconds per cell, as _config.yml's execute.timeout
DEGRADED = {  # what a page prints when a reader's install lacks something it must have
    "No GPU report": "the stored GPU reports (parcourse/measurements/gpu/, package data)",
    "only the torch references run": "Triton, which Colab's torch ships",
}
WITHOUT_HOROVOD = ("Skipped: Horovod is not installed", "Horovod is not installed here")


@pytest.fixture(scope="module")
def reader_python():
    """The reader's environment (created once for this module, removed after it)."""
    folder = Path(tempfile.mkdtemp(prefix="parcourse-reader-"))
    try:
        yield reader_env.create(folder / "venv")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_the_readers_environment_has_the_package_but_no_checkout_and_no_dev_tools(
        reader_python, tmp_path):
    import subprocess

    probe = ("import importlib.util as u, parcourse, torch; "
             "print(parcourse.__file__); "
             "print([m for m in ('horovod', 'nbmake', 'jupyter_book', 'pytest') if u.find_spec(m)])")
    done = subprocess.run([str(reader_python), "-c", probe], capture_output=True, text=True,
                          cwd=tmp_path, env=reader_env.reader_environ(reader_python))
    assert done.returncode == 0, done.stderr
    where, extra = done.stdout.splitlines()
    assert "site-packages" in where and not where.startswith(str(reader_env.ROOT))
    assert extra == "[]"


@pytest.mark.parametrize("notebook", NOTEBOOKS,
                         ids=[str(p.relative_to(reader_env.ROOT)) for p in NOTEBOOKS])
def test_a_notebook_runs_alone_as_a_colab_reader_runs_it(reader_python, notebook, tmp_path):
    start = time.perf_counter()
    done, executed = reader_env.run_alone(reader_python, notebook, tmp_path / "alone",
                                          CELL_TIMEOUT)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    text = reader_env.output_text(nbformat.read(executed, as_version=4))
    degraded = [f"{marker!r} ({why})" for marker, why in DEGRADED.items() if marker in text]
    assert degraded == [], f"{notebook.name} degrades in a reader's install: {degraded}"
    if not any(notice in text for notice in WITHOUT_HOROVOD):
        reader_env.share_with_book(notebook, executed, seconds)
