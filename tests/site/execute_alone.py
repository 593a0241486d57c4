"""Run by the reader's Python (tests/site/reader_env.py): execute the notebook
``argv[1]`` in the current folder with nbclient, each cell within ``argv[3]`` seconds,
and write it, executed, to ``argv[2]``. A failing cell exits 1 with its traceback."""

import sys
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

source, target, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3])
# the kernel must be this Python (jupyter_client puts sys.executable for a bare "python")
command = KernelSpecManager().get_kernel_spec("python3").argv[0]
if command != "python" and Path(command).resolve() != Path(sys.executable).resolve():
    sys.exit(f"the python3 kernel runs {command}, not this environment's {sys.executable}")
notebook = nbformat.read(source, as_version=4)
try:
    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": "."}}).execute()
finally:
    nbformat.write(notebook, target)
