"""Horovod 0.28.1, built from its source release for PyTorch ≥ 2.1 with Gloo (chapter 5,
"Why Horovod needs a patch"): ``python -m parcourse install-horovod``.

Horovod's last release (0.28.1, 2023) compiles its PyTorch extension as C++14, but
PyTorch ≥ 2.1 needs C++17 to compile against its headers. Changing
``CMAKE_CXX_STANDARD 14`` to ``17`` in the top-level ``CMakeLists.txt`` and in
``horovod/torch/CMakeLists.txt`` is enough. The steps, into the environment of
``python`` (by default this one):

1. nothing to do if ``import horovod.torch`` already works;
2. the build tools: CMake (below 4, which refuses gloo's old CMakeLists), packaging,
   setuptools, wheel;
3. the source release from PyPI, refused unless its SHA-256 is :data:`SHA256` (the one
   PyPI lists), before it is unpacked or built;
4. the two-line patch, then ``pip install`` with PyTorch and Gloo, no MPI, TensorFlow or
   MXNet, on every core.

The same function serves ``make`` (the Makefile calls it) and a Colab or Kaggle reader
(one cell: ``!python -m parcourse install-horovod``, a few minutes, then restart the
runtime).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.28.1"
SHA256 = "92a43f5a94c43907a56805bad15f19700c62ffc83b7ca483f9e104e229f67ef0"
PATCHED = ("CMakeLists.txt", "horovod/torch/CMakeLists.txt")
BUILD = {"HOROVOD_WITH_PYTORCH": "1", "HOROVOD_WITH_GLOO": "1", "HOROVOD_WITHOUT_MPI": "1",
         "HOROVOD_WITHOUT_TENSORFLOW": "1", "HOROVOD_WITHOUT_MXNET": "1",
         "HOROVOD_CPU_OPERATIONS": "gloo"}


class InstallError(RuntimeError):
    """A step of the build failed; the message is one line."""


def sha256_problem(path: Path, expected: str) -> str | None:
    """The one-line refusal when ``path`` is not the pinned release, else None."""
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual == expected:
        return None
    return (f"error: {path.name} has SHA-256 {actual}, not the pinned {expected}: the "
            f"download is not the release this build pins; nothing was installed")


def patch(source: Path) -> None:
    """C++14 → C++17 in the two CMakeLists.txt; InstallError if one is not as expected."""
    for relative in PATCHED:
        path = source / relative
        text = path.read_text()
        if "CMAKE_CXX_STANDARD 14" not in text:
            raise InstallError(f"unexpected {path}: no CMAKE_CXX_STANDARD 14")
        path.write_text(text.replace("CMAKE_CXX_STANDARD 14", "CMAKE_CXX_STANDARD 17"))


def _run(command: list[str], env: dict | None = None) -> None:
    done = subprocess.run(command, env=env)
    if done.returncode:
        raise InstallError(f"`{' '.join(command)}` failed with exit code {done.returncode}")


def install(python: str = sys.executable) -> int:
    """Build and install Horovod into ``python``'s environment; 0 on success, 1 (with one
    line on stderr) on failure."""
    if subprocess.run([python, "-c", "import horovod.torch"], capture_output=True).returncode == 0:
        print("horovod.torch already importable")
        return 0
    try:
        _run([python, "-m", "pip", "install", "-q", "cmake>=3.13,<4", "packaging",
              "setuptools", "wheel"])
        with tempfile.TemporaryDirectory() as work:
            _run([python, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                  f"horovod=={VERSION}", "-d", work])
            release = Path(work) / f"horovod-{VERSION}.tar.gz"
            problem = sha256_problem(release, SHA256)
            if problem:
                print(problem, file=sys.stderr)
                return 1
            with tarfile.open(release) as archive:
                try:
                    archive.extractall(work, filter="data")
                except TypeError:  # a Python without extraction filters (the file is pinned)
                    archive.extractall(work)
            source = Path(work) / f"horovod-{VERSION}"
            patch(source)
            bin_dir = os.path.dirname(os.path.abspath(python))  # its cmake, on PATH
            env = {**os.environ, **BUILD, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
                   "MAKEFLAGS": f"-j{os.cpu_count() or 1}"}
            _run([python, "-m", "pip", "install", "-q", "--no-build-isolation",
                  "--no-cache-dir", str(source)], env=env)
        _run([python, "-c", "import horovod.torch as hvd; print('horovod built, gloo:', "
                            "hvd.gloo_built())"])
    except InstallError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
