"""PyTorch's sharding engines as strategies: ``fsdp`` (FSDP2) and ``torch-zero1`` (DDP +
ZeroRedundancyOptimizer) save the parameters of ``--strategy single`` in float64
(tests/conftest.py's COMMON: 20 steps, B = 32), and their checkpoints hold the unsplit
model, so a run saved by one strategy resumes under another.

Each run is a subprocess of several seconds (three workers share this machine's two
cores), so the cases are chosen to cover, between them, SGD and Adam, K = 2 and 3
(uneven batch shards 11, 11, 10 and uneven parameter pieces 22, 22, 20), resharding on
and off, and saving and loading through each adapter.
"""

import sys
from pathlib import Path

import pytest
import torch

from conftest import (ERR, OPTIMIZERS, assert_same_parameters, parcourse,
                      train_and_load)

TORCHRUN = Path(sys.executable).with_name("torchrun")
NUMBERED = list(range(6))  # the simple model's parameters, numbered in model order


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The single-device reference for each optimizer, with its checkpoint at step 20."""
    folder = tmp_path_factory.mktemp("single")
    runs = {}
    for name, args in OPTIMIZERS.items():
        checkpoint = folder / f"{name}.ckpt"
        runs[name] = (train_and_load(folder, name, *args, "--checkpoint", str(checkpoint),
                                     "--checkpoint-every", "20"), checkpoint)
    return runs


@pytest.mark.parametrize("strategy, workers, optimizer, extra", [
    ("fsdp", 2, "adam", []),
    ("fsdp", 3, "sgd", ["--no-reshard-after-forward"]),
    ("torch-zero1", 2, "sgd", []),
])
def test_engine_matches_single(tmp_path, single, strategy, workers, optimizer, extra):
    result = train_and_load(tmp_path, strategy, "--strategy", strategy, "--workers",
                            str(workers), *OPTIMIZERS[optimizer], *extra)
    gap = assert_same_parameters(result, single[optimizer][0])
    print(f"{strategy} on {workers} workers, {optimizer}: {gap}")


def test_torch_zero1_gathers_the_optimizer_state_of_single(tmp_path, single):
    """Three workers: the big weight's Adam moments live on one, the rest on the others;
    the checkpoint holds them all, numbered as single numbers them, with its values."""
    checkpoint = tmp_path / "zero.ckpt"
    result = train_and_load(tmp_path, "zero", "--strategy", "torch-zero1", "--workers", "3",
                            *OPTIMIZERS["adam"], "--checkpoint", str(checkpoint),
                            "--checkpoint-every", "20")
    reference, reference_checkpoint = single["adam"]
    print(f"torch-zero1 on 3 workers, adam: {assert_same_parameters(result, reference)}")
    saved, expected = (torch.load(f, weights_only=True)["optimizer"]
                       for f in (checkpoint, reference_checkpoint))
    assert list(saved["state"]) == NUMBERED and saved["param_groups"] == expected["param_groups"]
    assert_same_parameters(saved["state"], expected["state"])


def test_fsdp_under_torchrun_with_two_processes(tmp_path, single):
    launcher = (str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "parcourse")
    result = train_and_load(tmp_path, "torchrun", "--strategy", "fsdp", *OPTIMIZERS["sgd"],
                            launcher=launcher)
    print(f"fsdp under torchrun, sgd: {assert_same_parameters(result, single['sgd'][0])}")


def test_fsdp_checkpoint_resumes_under_single(tmp_path, single):
    """fsdp (2 workers, no resharding) saves at step 10; single continues to step 20."""
    checkpoint = tmp_path / "fsdp.ckpt"
    train_and_load(tmp_path, "first-half", "--strategy", "fsdp", "--workers", "2",
                   "--no-reshard-after-forward", *OPTIMIZERS["adam"], "--steps", "10",
                   "--checkpoint", str(checkpoint), "--checkpoint-every", "10")
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["next_step"] == 10 and list(saved["model"]) == list(single["adam"][0])
    assert list(saved["optimizer"]["state"]) == NUMBERED
    assert saved["optimizer"]["param_groups"][0]["params"] == NUMBERED
    result = train_and_load(tmp_path, "second-half", *OPTIMIZERS["adam"], "--checkpoint",
                            str(checkpoint), "--resume")
    print(f"fsdp to step 10, single to 20: {assert_same_parameters(result, single['adam'][0])}")


@pytest.fixture(scope="module")
def single_at_step_10(tmp_path_factory):
    """A checkpoint of the single run with Adam after 10 of its 20 steps."""
    folder = tmp_path_factory.mktemp("half")
    checkpoint = folder / "single.ckpt"
    train_and_load(folder, "single", *OPTIMIZERS["adam"], "--steps", "10", "--checkpoint",
                   str(checkpoint), "--checkpoint-every", "10")
    return checkpoint


@pytest.mark.parametrize("strategy, workers", [("fsdp", 3), ("torch-zero1", 2)])
def test_single_checkpoint_resumes_under_an_engine(tmp_path, single, single_at_step_10,
                                                   strategy, workers):
    """Each worker cuts its part (FSDP: its rows of every tensor and their Adam moments;
    ZeRO-1: the moments of its tensors) out of the unsplit checkpoint. Resuming writes
    nothing (no --checkpoint-every), so both cases resume from the same file."""
    result = train_and_load(tmp_path, strategy, "--strategy", strategy, "--workers",
                            str(workers), *OPTIMIZERS["adam"], "--checkpoint",
                            str(single_at_step_10), "--resume")
    gap = assert_same_parameters(result, single["adam"][0])
    print(f"single to step 10, {strategy} to 20: {gap}")


@pytest.mark.parametrize("args, message", [
    (["--strategy", "ddp", "--workers", "2", "--no-reshard-after-forward"],
     ERR + "--no-reshard-after-forward works with --strategy fsdp (got --strategy ddp)"),
    (["--strategy", "torch-zero1", "--workers", "2", "--no-reshard-after-forward"],
     ERR + "--no-reshard-after-forward works with --strategy fsdp (got --strategy torch-zero1)"),
    (["--strategy", "fsdp", "--workers", "3", "--batch-size", "2"],
     ERR + "--batch-size 2 is smaller than --workers 3: each worker needs at least one sample, "
           "so use --batch-size of at least 3"),
])
def test_bad_input_exits_2_with_one_line(args, message):
    done = parcourse("train", *args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == message + "\n"

