"""Tests of parcourse.env: the machine report of chapter 7."""

import pytest
import torch
import torch.distributed as dist

from parcourse import env
from parcourse.launch import available_cores


@pytest.mark.distributed
def test_report_matches_what_torch_says():
    info = env.report()
    assert info["torch"] == torch.__version__
    assert info["cpu cores available"] == available_cores()
    assert info["gloo backend"] is dist.is_gloo_available()
    assert info["NCCL backend"] is dist.is_nccl_available()
    assert info["MPI backend"] is dist.is_mpi_available()
    assert info["CUDA available"] is torch.cuda.is_available()
    assert len(info["GPUs"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    for module in ("triton", "horovod"):
        assert isinstance(info[module], str) and info[module]


def test_probe_reports_success_and_failure():
    ok, version = env.probe("torch")
    assert ok and version == torch.__version__
    ok, why = env.probe("no_such_module_parcourse_test")
    assert not ok and "no_such_module_parcourse_test" in why


def test_describe_names_cores_processor_and_torch():
    line = env.describe()
    assert f"{available_cores()} core" in line
    assert env.processor() in line
    assert f"torch {torch.__version__}" in line


@pytest.mark.distributed
def test_as_markdown_has_one_row_per_entry():
    info = {"a": True, "b": False, "c": [], "d": ["x", "y"], "e": None, "f": "p|q"}
    table = env.as_markdown(info).splitlines()
    assert table[:2] == ["| what | this machine |", "|---|---|"]
    assert table[2:] == ["| a | yes |", "| b | no |", "| c | none |", "| d | x, y |",
                         "| e | – |", "| f | p\\|q |"]
    assert len(env.as_markdown(env.report()).splitlines()) == len(env.report()) + 2
