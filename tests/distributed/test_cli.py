"""python -m parcourse train: every strategy saves the parameters of the single-device run.

Equality is proved in float64 (tests/conftest.py's COMMON): every strategy sums the same
gradients in another order, which float64 rounds at 1e-16, so the parameters after 20
steps agree to parcourse.compare.FLOAT64_TOLERANCE = 1e-10 on any machine (measured:
≤ 1e-15). float32 runs are checked against the noise floor measured in the same run.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import (COMMON, ERR, FLOAT32, OPTIMIZERS, ROOT, assert_same_parameters,
                      launched_workers, parcourse, train_and_load)
from parcourse import compare

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The single-device reference for each optimizer, trained once."""
    folder = tmp_path_factory.mktemp("single")
    return {name: train_and_load(folder, name, *args) for name, args in OPTIMIZERS.items()}


@pytest.mark.parametrize("strategy, workers, optimizer, extra", [
    ("ddp", 2, "sgd", []),
    ("ddp", 2, "adam", []),
    ("dp-manual", 2, "sgd", ["--allreduce", "ring"]),
    ("dp-manual", 3, "adam", ["--allreduce", "tree"]),        # uneven shards: 11, 11, 10
    ("dp-manual", 4, "sgd", ["--allreduce", "naive"]),
    ("dp-bucketed", 2, "adam", ["--allreduce", "ring", "--bucket-kb", "16"]),
    ("dp-bucketed", 3, "sgd", ["--allreduce", "native", "--bucket-kb", "4"]),
    ("horovod", 2, "sgd", []),
    ("horovod", 2, "adam", []),
    ("single", 1, "adam", ["--accumulation", "4"]),     # gradient accumulation: 8 × 4
    ("single", 1, "sgd", ["--accumulation", "3"]),      # uneven micro-batches: 11, 11, 10
])
def test_data_parallel_matches_single(tmp_path, single, strategy, workers, optimizer, extra):
    result = train_and_load(tmp_path, strategy, "--strategy", strategy, "--workers",
                            str(workers), *OPTIMIZERS[optimizer], *extra)
    assert list(result) == ["1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias"]
    assert_same_parameters(result, single[optimizer])


def test_under_horovodrun_with_two_processes(tmp_path, single):
    launcher = (str(TORCHRUN.with_name("horovodrun")), "-np", "2", "-H", "localhost:2", "--gloo",
                sys.executable, "-m", "parcourse")
    result = train_and_load(tmp_path, "horovodrun", "--strategy", "horovod",
                            *OPTIMIZERS["sgd"], launcher=launcher)
    assert_same_parameters(result, single["sgd"])


def test_horovod_fp16_compression_changes_the_result_a_little(tmp_path, single):
    result = train_and_load(tmp_path, "fp16", "--strategy", "horovod", "--workers", "2",
                            "--fp16-allreduce", *OPTIMIZERS["sgd"])
    reference = single["sgd"]
    relative = max(((result[k] - reference[k]).norm() / reference[k].norm()).item()
                   for k in reference)
    print(f"fp16 gradient compression: largest relative parameter change {relative:.2e}")
    assert 0 < relative < 1e-3  # float16 keeps 11 significant bits: 2^-11 ≈ 4.9e-4


def test_bucketed_reports_communication_and_overlap(tmp_path):
    metrics = tmp_path / "m.json"
    done = parcourse("train", "--strategy", "dp-bucketed", "--workers", "2", "--steps", "10",
                     "--bucket-kb", "8", "--quiet", "--metrics", str(metrics))
    assert done.returncode == 0, done.stderr
    report = json.loads(metrics.read_text())
    assert 0 < report["communication_seconds"] < report["seconds"]
    assert 0.0 <= report["overlap"] <= 1.0


def test_complex_model_on_two_workers_matches_single(tmp_path):
    reference = train_and_load(tmp_path, "single", "--model", "complex")
    for strategy, extra in (("ddp", []), ("dp-bucketed", ["--bucket-kb", "64"])):
        result = train_and_load(tmp_path, strategy, "--model", "complex", "--strategy",
                                strategy, "--workers", "2", *extra)
        assert_same_parameters(result, reference)


def test_float32_ddp_stays_within_the_noise_floor_measured_in_this_run(tmp_path):
    """In float32 the result depends on the machine's kernels; so the bound is measured.
    The floor changes in one process what data parallelism changes: the batch added in
    two halves (--accumulation 2), and one torch thread (a worker's share of 2 cores)."""
    def run(name, *args, env=None):
        return train_and_load(tmp_path, name, "--model", "complex", *args, common=FLOAT32,
                              env=env)

    reference = run("single")
    floor = run("halves", "--accumulation", "2", env={**os.environ, "OMP_NUM_THREADS": "1"})
    for strategy, extra in (("ddp", []), ("dp-bucketed", ["--bucket-kb", "64"])):
        result = run(strategy, "--strategy", strategy, "--workers", "2", *extra)
        gap, noise = compare.within_noise(result, reference, floor, what=strategy)
        print(f"float32 {strategy}: {gap.absolute:.2e}; noise floor {noise.absolute:.2e}")


@pytest.mark.parametrize("strategy", ["ddp", "dp-bucketed"])
def test_under_torchrun_with_two_processes(tmp_path, single, strategy):
    launcher = (str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "parcourse")
    result = train_and_load(tmp_path, "torchrun", "--strategy", strategy,
                            *OPTIMIZERS["sgd"], launcher=launcher)
    assert_same_parameters(result, single["sgd"])


def test_metrics_and_summary(tmp_path):
    metrics = tmp_path / "m.json"
    done = parcourse("train", "--steps", "5", "--batch-size", "16", "--metrics", str(metrics))
    assert done.returncode == 0, done.stderr
    report = json.loads(metrics.read_text())
    assert len(report["losses"]) == 5 and report["config"]["batch_size"] == 16
    assert report["samples_per_second"] == pytest.approx(5 * 16 / report["seconds"])
    assert done.stdout.startswith("single on 1 worker: final loss ")
    assert "samples_per_s=" in done.stderr  # the progress bar


def test_quiet_prints_nothing():
    done = parcourse("train", "--steps", "3", "--quiet")
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""


def test_help_documents_every_option():
    done = parcourse("train", "--help")
    assert done.returncode == 0
    for option in ("--strategy", "--model", "--dataset", "--steps", "--batch-size", "--lr",
                   "--optimizer", "--seed", "--workers", "--backend", "--timeout", "--save",
                   "--metrics", "--quiet", "--layers", "--width", "--heads", "--sequence",
                   "--experts", "--top-k", "--capacity-factor"):
        assert option in done.stdout


@pytest.mark.parametrize("args, message", [
    (["--workers", "0", "--strategy", "ddp"], ERR + "--workers must be at least 1 (got 0)"),
    (["--batch-size", "0"], ERR + "--batch-size must be at least 1 (got 0)"),
    (["--steps", "-1"], ERR + "--steps must be at least 1 (got -1)"),
    (["--lr", "0"], ERR + "--lr must be a positive finite number (got 0.0)"),
    (["--lr", "inf"], ERR + "--lr must be a positive finite number (got inf)"),
    (["--dtype", "float16"], ERR + "unknown --dtype 'float16': choose one of float32, float64"),
    (["--timeout", "nan"], ERR + "--timeout must be a positive number of seconds (got nan)"),
    (["--save", "/nonexistent/dir/x.pt"],
     ERR + "--save /nonexistent/dir/x.pt: the folder /nonexistent/dir does not exist: create it "
           "first or save elsewhere"),
    (["--metrics", "/"], ERR + "--metrics / is a folder: name a file in it"),
    (["--strategy", "magic"], ERR + "unknown --strategy 'magic': choose one of single, ddp, "
                                   "dp-manual, dp-bucketed, zero1, zero2, zero3, fsdp, "
                                   "torch-zero1, horovod, horovod-elastic, pipeline-gpipe, "
                                   "pipeline-1f1b, pipeline-interleaved, pipeline-zb-h1, "
                                   "dp-pp, dp-pp-tp, tensor, context, expert"),
    (["--model", "resnet"], ERR + "unknown --model 'resnet': choose one of simple, complex, gpt"),
    (["--optimizer", "lamb"], ERR + "unknown --optimizer 'lamb': choose one of sgd, adam"),
    (["--strategy", "single", "--workers", "2"],
     ERR + "--strategy single runs on one worker (got --workers 2): use a parallel "
           "strategy (ddp, dp-manual, dp-bucketed, zero1, zero2, zero3, fsdp, torch-zero1, "
           "horovod, horovod-elastic, pipeline-gpipe, pipeline-1f1b, pipeline-interleaved, "
           "pipeline-zb-h1, dp-pp, dp-pp-tp, tensor, context, expert) for several"),
    (["--accumulation", "0"], ERR + "--accumulation must be at least 1 (got 0)"),
    (["--strategy", "ddp", "--workers", "2", "--fp16-allreduce"],
     ERR + "--fp16-allreduce works with --strategy horovod (got --strategy ddp)"),
    (["--checkpoint-every", "-1", "--checkpoint", "c.pt"],
     ERR + "--checkpoint-every must be 0 (never) or more (got -1)"),
    (["--resume"], ERR + "--checkpoint-every and --resume need --checkpoint FILE: say where "
                         "checkpoints go"),
    (["--strategy", "ddp", "--workers", "2", "--accumulation", "2"],
     ERR + "--accumulation works with --strategy single (got --strategy ddp)"),
    (["--batch-size", "4", "--accumulation", "8"],
     ERR + "--accumulation 8 is larger than --batch-size 4: each micro-batch needs at least "
           "one sample"),
    (["--strategy", "ddp", "--workers", "3", "--batch-size", "10"],
     ERR + "--batch-size 10 cannot be split evenly over --workers 3, which ddp needs: use a "
           "multiple of 3, e.g. 9 or 12, or --strategy dp-manual, which weights uneven shards"),
    (["--strategy", "dp-manual", "--workers", "2", "--allreduce", "star"],
     ERR + "unknown --allreduce 'star': choose one of naive, ring, tree, native"),
    (["--strategy", "dp-bucketed", "--workers", "2", "--bucket-kb", "0"],
     ERR + "--bucket-kb must be positive (got 0.0)"),
    (["--strategy", "ddp", "--workers", "4", "--batch-size", "2"],
     ERR + "--batch-size 2 is smaller than --workers 4: each worker needs at least one sample, "
           "so use --batch-size of at least 4"),
    (["--workers", "two"], "python -m parcourse train: error: argument --workers: invalid int "
                           "value: 'two' (see --help)"),
])
def test_bad_input_exits_2_with_one_line(in_process, args, message):
    assert in_process("train", *args) == (2, "", message + "\n")


def test_the_command_prints_the_same_one_line_error_as_main():
    done = parcourse("train", "--steps", "-1")
    assert (done.returncode, done.stdout, done.stderr) == (
        2, "", ERR + "--steps must be at least 1 (got -1)\n")


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="this machine has two GPUs")
def test_nccl_without_enough_gpus_is_refused():
    done = parcourse("train", "--strategy", "ddp", "--workers", "2", "--backend", "nccl")
    assert done.returncode == 2
    assert done.stderr.startswith(f"{ERR}--backend nccl needs one GPU per worker, but ")
    assert "use --backend gloo to run the workers as CPU processes" in done.stderr


def start_training_and_wait(folder, *args):
    """Start a long `train` run with two spawned workers; return it and the workers once
    training has begun: its first checkpoint exists, so every worker has finished a step
    (a fixed wait is not enough on a loaded machine, where starting a worker can take
    longer than the run's --timeout)."""
    import time

    marker = folder / "begun.pt"
    run = subprocess.Popen([sys.executable, "-m", "parcourse", "train", *args, "--steps",
                            "100000", "--quiet", "--checkpoint", str(marker),
                            "--checkpoint-every", "1"], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not marker.exists():
        assert time.monotonic() < deadline and run.poll() is None, "training did not begin"
        time.sleep(0.1)
    workers = launched_workers(run.pid)
    assert len(workers) == 2
    return run, workers


def test_a_killed_worker_is_reported_with_its_rank_and_nothing_is_left(tmp_path):
    import signal

    import psutil

    run, workers = start_training_and_wait(tmp_path, "--strategy", "ddp", "--workers", "2",
                                           "--model", "complex")
    victim = workers[1]
    victim.send_signal(signal.SIGKILL)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 1
    assert re.search(r"python -m parcourse train: failed: worker rank [01] of 2 was killed by "
                     r"signal SIGKILL before returning a result", stderr), stderr[-2000:]
    assert not any(psutil.pid_exists(p.pid) and p.status() != psutil.STATUS_ZOMBIE
                   for p in workers)
    again = parcourse("train", "--strategy", "ddp", "--workers", "2", "--steps", "3", "--quiet")
    assert again.returncode == 0, again.stderr  # and the next run works


def test_a_hung_worker_is_stopped_at_the_timeout_and_reported(tmp_path):
    """SIGSTOP freezes rank 1 mid-training, as a deadlock would: its peer waits in the
    all-reduce, the command gives up at --timeout, names the ranks, and leaves nothing."""
    import signal
    import time

    import psutil

    run, workers = start_training_and_wait(tmp_path, "--strategy", "pipeline-1f1b",
                                           "--workers", "2", "--microbatches", "2",
                                           "--timeout", "60")
    started = time.monotonic()
    workers[1].send_signal(signal.SIGSTOP)
    stdout, stderr = run.communicate(timeout=120)
    assert time.monotonic() - started < 65  # within the timeout, not after the test's
    assert run.returncode == 1
    assert re.search(r"python -m parcourse train: failed: worker ranks? [01](, 1)? of 2 did "
                     r"not finish within 60 s and (was|were) stopped", stderr), stderr[-2000:]
    assert not any(psutil.pid_exists(p.pid) and p.status() != psutil.STATUS_ZOMBIE
                   for p in workers)


FAILED = "python -m parcourse train: failed: "


@pytest.mark.parametrize("args", [
    ["--strategy", "single"],
    ["--strategy", "ddp", "--workers", "2"],
    ["--strategy", "dp-bucketed", "--workers", "3", "--batch-size", "63"],
    ["--strategy", "horovod", "--workers", "2"],
    ["--strategy", "tensor", "--workers", "2"],
    ["--strategy", "pipeline-1f1b", "--workers", "2", "--microbatches", "2"],
    ["--strategy", "dp-pp", "--workers", "4", "--microbatches", "2"],
])
def test_a_diverging_run_stops_at_its_first_non_finite_loss(args):
    """Every worker sums the same global loss each step, so all stop at the same step and
    rank 0 reports, whichever worker computed the loss (a pipeline's last stage)."""
    if "horovod" in args:
        pytest.importorskip("horovod.torch", reason="Horovod is not installed")
    done = parcourse("train", "--lr", "1e9", "--steps", "50", "--quiet", *args)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (f"{FAILED}the loss became nan at step 3 of 50 (rank 0): "
                           f"training diverged, so it was stopped; lower --lr (it is 1e+09) "
                           f"and start again\n")


def test_a_timeout_too_short_to_start_a_worker_is_one_line():
    done = parcourse("train", "--strategy", "ddp", "--workers", "2", "--timeout", "0.001",
                     "--quiet")
    assert done.returncode == 1
    # the command's first launch starts the fork server (a Python importing torch): rank 1
    # at least has not started; rank 0 may have reported in the moment before it
    assert re.match(rf"{re.escape(FAILED)}the 2 workers did not all join within 0\.001 s and "
                    r"were stopped: (ranks 0, 1|rank 1) had not started", done.stderr), \
        done.stderr
    assert done.stderr.count("\n") == 1


def test_mnist_without_a_network_is_one_line_before_any_worker_starts(tmp_path):
    offline = {**os.environ, "PARCOURSE_DATA": str(tmp_path), "https_proxy": "http://127.0.0.1:9",
               "http_proxy": "http://127.0.0.1:9", "no_proxy": ""}
    done = parcourse("train", "--dataset", "mnist", "--strategy", "ddp", "--workers", "2",
                     env=offline)
    assert done.returncode == 2
    assert done.stderr.startswith(f"{ERR}MNIST could not be downloaded from "
                                  "https://ossci-datasets.s3.amazonaws.com/mnist/ (")
    assert done.stderr.endswith(": use --dataset digits, which ships with scikit-learn and "
                                f"needs no network, or put the four MNIST .gz files in "
                                f"{tmp_path / 'mnist'}\n")
    assert done.stderr.count("\n") == 1 and "parcourse.launch" not in done.stdout
