"""ZeRO stages 1–3 from the package's reduce-scatter and all-gather: each equals the single
run (float64, parcourse.compare.FLOAT64_TOLERANCE), for SGD and Adam, for K that does not
divide the model's size or the batch, and for the CNN's 4-D weights."""

import os
import sys
from pathlib import Path

import pytest
import torch

from conftest import (COMMON, ERR, FLOAT32, OPTIMIZERS, assert_same_parameters, parcourse,
                      train_and_load)
from parcourse import compare
from parcourse.data_parallel.flat_shards import group_parameters
from parcourse.models import build_model


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    folder = tmp_path_factory.mktemp("single")
    return {name: train_and_load(folder, name, *args) for name, args in OPTIMIZERS.items()}


@pytest.mark.parametrize("bucket_bytes, workers", [(None, 3), (None, 4), (4096, 3),
                                                   (16384, 3)])
def test_the_cases_include_groups_that_k_does_not_divide(bucket_bytes, workers):
    """Each case below pads some flat group (zero3: one group per layer; zero1/2: buckets)."""
    groups = group_parameters(build_model("simple", dtype=torch.float64), bucket_bytes)
    sizes = [sum(p.numel() for p in params) for _, params in groups]
    assert any(size % workers for size in sizes), sizes
    assert 32 % 3 != 0                                        # uneven batch shards on K = 3


@pytest.mark.parametrize("strategy, workers, optimizer, extra", [
    ("zero1", 2, "adam", []),
    ("zero1", 3, "sgd", ["--allreduce", "native", "--bucket-kb", "16"]),
    ("zero2", 3, "sgd", ["--bucket-kb", "4"]),       # many buckets in flight
    ("zero2", 2, "adam", ["--bucket-kb", "16"]),
    ("zero3", 2, "adam", []),
    ("zero3", 4, "sgd", []),
    ("zero3", 3, "adam", ["--allreduce", "native"]),
])
def test_zero_matches_single(tmp_path, single, strategy, workers, optimizer, extra):
    result = train_and_load(tmp_path, strategy, "--strategy", strategy, "--workers",
                            str(workers), *OPTIMIZERS[optimizer], *extra)
    assert_same_parameters(result, single[optimizer])


def test_zero3_on_the_cnn_matches_single(tmp_path):
    reference = train_and_load(tmp_path, "single", "--model", "complex", *OPTIMIZERS["adam"])
    result = train_and_load(tmp_path, "zero3", "--model", "complex", "--strategy", "zero3",
                            "--workers", "3", *OPTIMIZERS["adam"])
    assert_same_parameters(result, reference)


def test_float32_zero3_stays_within_the_noise_floor_measured_in_this_run(tmp_path):
    """The floor changes in one process what ZeRO changes: the batch summed in parts."""
    def run(name, *args, env=None):
        return train_and_load(tmp_path, name, *args, *OPTIMIZERS["adam"], common=FLOAT32,
                              env=env)

    reference = run("single")
    floor = run("halves", "--accumulation", "2", env={**os.environ, "OMP_NUM_THREADS": "1"})
    result = run("zero3", "--strategy", "zero3", "--workers", "2")
    gap, noise = compare.within_noise(result, reference, floor, what="zero3")
    print(f"float32 zero3: {gap.absolute:.2e}; noise floor {noise.absolute:.2e}")


@pytest.mark.parametrize("args, message", [
    (["--strategy", "zero2", "--workers", "2", "--allreduce", "tree"],
     ERR + "--allreduce tree has no reduce-scatter: --strategy zero2 shards with ring, naive "
           "or native"),
    (["--strategy", "zero3", "--workers", "2", "--stages", "2"],
     ERR + "--stages works with the pipeline strategies (pipeline-gpipe, pipeline-1f1b, "
           "pipeline-interleaved, pipeline-zb-h1, dp-pp, dp-pp-tp), not --strategy zero3"),
])
def test_bad_input_is_one_line(args, message):
    done = parcourse("train", *COMMON, *args)
    assert (done.returncode, done.stderr) == (2, message + "\n")


def test_zero3_under_torchrun(tmp_path, single):
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = (str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "parcourse")
    result = train_and_load(tmp_path, "torchrun", "--strategy", "zero3", *OPTIMIZERS["sgd"],
                            launcher=launcher)
    assert_same_parameters(result, single["sgd"])


@pytest.mark.parametrize("workers", [2, 3])
def test_memory_per_rank_is_the_formula_and_the_peak_is_predicted(workers):
    """States counted from the tensors equal the ledger exactly, on every rank (K = 3 pads
    every layer); the peak measured on the CPU is within 10% of the ledger's prediction;
    the bytes each rank sends are the ledger's."""
    from parcourse.bench import memory

    for rank, rows in enumerate(memory.measure(workers, "complex", batch_size=48)):
        for variant in memory.VARIANTS:
            row = rows[variant]
            assert row["held"] == row["formula"], (rank, variant)
            assert abs(row["peak"] / row["predicted_peak"] - 1) <= 0.10, (rank, variant, row)
            if variant != "ddp":                   # DDP's all-reduce is gloo's: not counted
                assert row["sent"] == row["sent_formula"], (rank, variant)
