"""The unit tests run in this process: no worker processes, no subprocesses, no book
build. Each test here is held to it (starting a worker process, or on a machine without
CUDA any subprocess, fails), unless it is marked ``distributed``; ``make check`` runs the unit tests without those, in well under two
minutes."""

import multiprocessing.process
import subprocess

import pytest
import torch

# On a CUDA machine Triton compiles each kernel with ptxas, a subprocess: allowed there.
COMPILES = torch.cuda.is_available()


def _refuse(*args, **kwargs):
    raise AssertionError("a unit test started a process: move it to tests/distributed/ "
                         "or mark it @pytest.mark.distributed")


@pytest.fixture(autouse=True)
def no_processes(request, monkeypatch):
    if request.node.get_closest_marker("distributed") is None:
        if not COMPILES:
            monkeypatch.setattr(subprocess.Popen, "__init__", _refuse)
        monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", _refuse)
    yield
