"""What the tests share: the command-line runner, train-and-load, the comparison with the
single run (float64, :mod:`parcourse.compare`), and the book built once per test run."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from parcourse import compare

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"unit": "unit", "distributed": "distributed", "site": "site"}  # folder → marker


FIRST = "test_notebooks_alone.py"  # its reader runs fill the book's execution cache


def pytest_collection_modifyitems(items):
    """Mark each test by its folder: ``-m unit``, ``-m distributed``, ``-m site``; and run
    the notebooks alone (tests/site/test_notebooks_alone.py) before the rest of the site
    tests, so that the book's build shows their outputs instead of executing them again."""
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        if folder in FOLDERS:
            item.add_marker(FOLDERS[folder])
    site = [i for i, item in enumerate(items) if Path(str(item.fspath)).parent.name == "site"]
    if site:
        block = [items[i] for i in site]
        block.sort(key=lambda item: Path(str(item.fspath)).name != FIRST)  # stable
        for i, item in zip(site, block):
            items[i] = item

def launched_workers(pid: int) -> list:
    """The live workers that ``parcourse.launch`` started under process ``pid``: those
    forked from its fork server (parcourse.launch_start), or spawned ones. The server
    itself is no worker: it lives as long as its launcher."""
    import psutil

    found = []
    for process in psutil.Process(pid).children(recursive=True):
        try:
            line = " ".join(process.cmdline())
            parent = " ".join(process.parent().cmdline())
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.Error, AttributeError):  # gone meanwhile
            continue
        if "multiprocessing.spawn" in line or "multiprocessing.forkserver" in parent:
            found.append(process)
    return found


HTML = ROOT / "_build" / "html"
# The runs that prove a strategy equal to --strategy single: float64, so that the
# tolerance has a reason (parcourse.compare.FLOAT64_TOLERANCE) and holds on any machine.
COMMON = ["--steps", "20", "--batch-size", "32", "--seed", "3", "--quiet", "--dtype", "float64"]
FLOAT32 = [*COMMON[:-2], "--dtype", "float32"]
OPTIMIZERS = {"sgd": ["--optimizer", "sgd", "--lr", "0.05"],
              "adam": ["--optimizer", "adam", "--lr", "0.002"]}
ERR = "python -m parcourse train: error: "


def parcourse(*args, launcher=(sys.executable, "-m", "parcourse"), timeout=180, env=None):
    """Run the command line (``python -m parcourse ...``) from the repository's root."""
    return subprocess.run([*launcher, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)


@pytest.fixture
def in_process(capsys, monkeypatch):
    """``in_process(*args)`` runs the command line's ``main(args)`` in this process from
    the repository's root; returns ``(exit status, stdout, stderr)``. For input refused
    before any work starts it prints what ``python -m parcourse`` prints (the tables of
    bad input use it; one case of each also runs as a real command, to prove that), without
    starting an interpreter per case."""
    from parcourse.__main__ import main

    monkeypatch.chdir(ROOT)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "HOROVOD_RANK"):
        monkeypatch.delenv(name, raising=False)  # as a command started by hand

    def run(*args):
        capsys.readouterr()
        try:
            status = main(list(args))
        except SystemExit as stop:
            status = stop.code
        out = capsys.readouterr()
        return status, out.out, out.err

    return run


def train_and_load(folder, name, *args, launcher=(sys.executable, "-m", "parcourse"),
                   common=COMMON, env=None):
    """Train with ``common + args``, save to ``folder/name.pt`` and return the state_dict."""
    path = folder / f"{name}.pt"
    done = parcourse("train", *common, *args, "--save", str(path), launcher=launcher, env=env)
    assert done.returncode == 0, done.stderr
    return torch.load(path, weights_only=True)


def assert_same_parameters(actual, expected, atol=compare.FLOAT64_TOLERANCE):
    """The same keys in the same order, every value within ``atol`` (float64 runs)."""
    assert list(actual) == list(expected)  # plain key names, same order
    return compare.assert_close(actual, expected, atol)


@pytest.fixture(scope="session")
def book_build() -> subprocess.CompletedProcess:
    """``jupyter-book build`` of the whole book with Sphinx warnings as errors, run once.

    Notebooks run again only where ``_build/.jupyter_cache`` holds no output for their
    current code (in ``make test``, tests/site/test_notebooks_alone.py has just put there
    the outputs of each notebook's run in a reader's environment). tests/site/test_book.py asserts that the build succeeded and what it wrote;
    tests/site/test_site_browser.py opens every page of it in a real browser.
    """
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    return subprocess.run([str(jupyter_book), "build", str(ROOT), "--warningiserror",
                           "--nitpick", "--keep-going"],
                          capture_output=True, text=True, timeout=1800, cwd=ROOT)


@pytest.fixture(scope="session")
def built_html(book_build) -> Path:
    """The built site's folder; fails (rather than skips) when the book did not build."""
    if book_build.returncode != 0:
        pytest.fail("the book did not build (tests/site/test_book.py shows why):\n"
                    + book_build.stdout[-2000:] + book_build.stderr[-2000:])
    return HTML
