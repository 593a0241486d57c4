"""A reader's environment, as on Colab, for tests/site/test_notebooks_alone.py.

Colab gives a reader a Python that has torch (and the Triton its torch ships with) and
nothing of this repository. The reader opens one notebook; its first cell pip-installs
the package. :func:`create` builds that: a fresh virtual environment, torch and Triton at
this environment's versions, then only ``pip install`` of the repository (a wheel built
from a clean copy of its files, which pulls ``requirements.txt``) and what executes a
notebook (nbclient, ipykernel). No dev requirements, no Horovod, no checkout beside the notebook.

:func:`share_with_book` hands a reader run's outputs to the book's build (Jupyter Book's
execution cache, keyed on the notebook's code), so that ``make test`` executes each
notebook once: the page then shows what the reader's run printed on this machine.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
EXECUTE = Path(__file__).with_name("execute_alone.py")
BOOK_CACHE = ROOT / "_build" / ".jupyter_cache"  # jupyter-book's execute_notebooks: cache
RUNNERS = ["nbclient>=0.9", "ipykernel>=6.20"]  # what executes a notebook


def pinned(name: str) -> str:
    """``name==version`` as installed here (torch's local tag, e.g. ``+cpu``, dropped: the
    index that pip is configured with, or ``TORCH_INDEX``, picks the build)."""
    return f"{name}=={metadata.version(name).split('+')[0]}"


def create(folder: Path) -> Path:
    """The reader's environment in ``folder``; returns its Python. Raises
    ``RuntimeError`` with pip's last lines when an installation fails."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = folder / "bin" / "python"
    index = os.environ.get("TORCH_INDEX")
    preinstalled = [pinned("torch")] + ([pinned("triton")] if _installed("triton") else [])
    source = clean_copy(folder.parent / "repository")
    steps = [([*preinstalled, *(["--index-url", index] if index else [])], "torch"),
             ([str(source), *RUNNERS], "the repository")]
    for args, what in steps:
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", *args],
                              capture_output=True, text=True, cwd=folder)
        if done.returncode != 0:
            raise RuntimeError(f"installing {what} into the reader's environment failed:\n"
                               + (done.stdout + done.stderr)[-3000:])
    return python


def clean_copy(target: Path) -> Path:
    """The repository's files as a clone has them (tracked, and new files git does not
    ignore) copied to ``target``: pip builds its wheel there, as from a fresh clone, and
    writes nothing (``build/``, ``*.egg-info``) into the working tree."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        path = ROOT / name
        if path.is_file():  # a deleted but still tracked file is skipped
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / name)
    return target


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def reader_environ(python: Path) -> dict[str, str]:
    """The environment a reader's kernel sees: the venv first on PATH, nothing of this
    repository on PYTHONPATH, a Jupyter data folder of its own (no kernel spec from
    elsewhere), and the static figures the book's build asks for."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "JUPYTER_PATH")}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(python.parent.parent)
    env["JUPYTER_DATA_DIR"] = tempfile.mkdtemp(prefix="parcourse-jupyter-")
    env["PARCOURSE_FIGURES"] = "static"  # as book/_ext/offline_js.py sets for the build
    return env


def run_alone(python: Path, notebook: Path, folder: Path, timeout: int
              ) -> tuple[subprocess.CompletedProcess, Path]:
    """Copy ``notebook`` alone into the empty ``folder`` and execute it there with the
    reader's Python; returns the finished process and the executed notebook's path."""
    folder.mkdir(parents=True)
    copy = folder / notebook.name
    shutil.copyfile(notebook, copy)
    executed = folder / f"executed-{notebook.name}"
    done = subprocess.run([str(python), str(EXECUTE), copy.name, executed.name, str(timeout)],
                          cwd=folder, env=reader_environ(python), capture_output=True,
                          text=True, timeout=timeout * 4)
    return done, executed


def output_text(nb) -> str:
    """Everything the notebook's cells printed or displayed, as text (streams, plain text,
    Markdown, HTML, error messages), for the checks on what a page says."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            data = out.get("data", {})
            parts += [data.get(kind, "") for kind in ("text/plain", "text/markdown",
                                                      "text/html")]
            parts += [out.get("ename", ""), out.get("evalue", "")]
    return "\n".join("".join(p) if isinstance(p, list) else str(p) for p in parts)


def share_with_book(source: Path, executed_path: Path, seconds: float) -> None:
    """Store the reader run's outputs in the book's execution cache under ``source``'s
    code: the build then shows them instead of executing ``source`` again. The outputs
    go into a copy of ``source`` itself, so that its metadata (which the cache hashes) is
    the build's."""
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    original = nbformat.read(source, as_version=4)
    executed = nbformat.read(executed_path, as_version=4)
    code = [c for c in original.cells if c.cell_type == "code"]
    ran = [c for c in executed.cells if c.cell_type == "code"]
    if [c.source for c in code] != [c.source for c in ran]:
        raise ValueError(f"{source.name}: the executed notebook's code is not the source's")
    for cell, run in zip(code, ran):
        cell.outputs, cell.execution_count = run.outputs, run.execution_count
    for key in ("language_info", "widgets"):
        if key in executed.metadata:
            original.metadata[key] = executed.metadata[key]
    BOOK_CACHE.parent.mkdir(exist_ok=True)
    get_cache(str(BOOK_CACHE)).cache_notebook_bundle(
        CacheBundleIn(original, str(source), data={"execution_seconds": seconds}),
        check_validity=False, overwrite=True)
