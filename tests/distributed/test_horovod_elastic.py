"""Horovod's elastic API on CPU: a worker killed mid-run, the survivor rolls back to the
last commit and finishes alone, with the parameters of an uninterrupted run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from parcourse import compare
from parcourse.data_parallel.horovod import horovod_available

ROOT = Path(__file__).resolve().parents[2]
HOROVODRUN = Path(sys.executable).with_name("horovodrun")
ARGS = ["train", "--model", "complex", "--steps", "40", "--batch-size", "64", "--seed", "4",
        "--lr", "0.05", "--dtype", "float64"]  # float64: equal to 1e-10 on any machine

pytestmark = pytest.mark.skipif(not horovod_available(), reason="Horovod is not installed")


def run_elastic(folder, args, out, env=None) -> subprocess.CompletedProcess:
    """``args`` under an elastic horovodrun of 2 workers (at least 1), saving to ``out``."""
    hosts = folder / "hosts.sh"  # one machine under two names: a failure blacklists one
    hosts.write_text("#!/bin/sh\necho localhost:1\necho 127.0.0.1:1\n")
    hosts.chmod(0o755)
    return subprocess.run(
        [str(HOROVODRUN), "-np", "2", "--min-np", "1", "--max-np", "2",
         "--host-discovery-script", str(hosts), "--network-interface", "lo", "--gloo",
         sys.executable, "-m", "parcourse", *args, "--strategy", "horovod-elastic",
         "--save", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def test_outside_horovodrun_the_strategy_says_how_to_start_it():
    done = subprocess.run([sys.executable, "-m", "parcourse", "train", "--strategy",
                           "horovod-elastic", "--workers", "2"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("python -m parcourse train: error: --strategy "
                                  "horovod-elastic runs under an elastic horovodrun: horovodrun "
                                  "-np 2 --min-np 1 --host-discovery-script HOSTS.sh")


def test_a_killed_worker_leaves_the_survivor_to_finish_the_same_run(tmp_path):
    """Rank 1 dies at step 25 (a fault drill); rank 0 rolls back to the commit of step 20
    and trains steps 20–39 alone, on the whole batch."""
    reference = tmp_path / "single.pt"
    done = subprocess.run([sys.executable, "-m", "parcourse", *ARGS, "--quiet", "--save",
                           str(reference)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "elastic.pt"
    done = run_elastic(tmp_path, ARGS, out, env={**os.environ, "PARCOURSE_KILL_AT": "1:25"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert ("horovod-elastic: the workers changed, now 1; continuing from the last commit, "
            "step 20") in done.stdout + done.stderr
    assert "horovod-elastic on 1 worker: final loss" in done.stdout  # the one left
    survivor = torch.load(out, weights_only=True)
    compare.assert_close(survivor, torch.load(reference, weights_only=True))


def test_an_uninterrupted_elastic_run_trains_the_gpt_with_adam_to_the_single_parameters(
        tmp_path):
    """Elastic Horovod broadcasts the optimizer state at every start (``state.sync()``); for
    a fresh Adam, Horovod would first create one with a zero-gradient step that Adam counts
    as step 1, and every later bias correction would be off by one step (a difference of
    1e-2 after ten steps). ``horovod.fresh_state`` gives it the state of step 0 instead."""
    args = ["train", "--model", "gpt", "--steps", "10", "--batch-size", "8", "--seed", "3",
            "--quiet", "--dtype", "float64", "--optimizer", "adam", "--lr", "0.002"]
    reference = tmp_path / "single.pt"
    done = subprocess.run([sys.executable, "-m", "parcourse", *args, "--save", str(reference)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "elastic.pt"
    done = run_elastic(tmp_path, args, out)
    assert done.returncode == 0, done.stderr[-3000:]
    compare.assert_close(torch.load(out, weights_only=True),
                         torch.load(reference, weights_only=True))
