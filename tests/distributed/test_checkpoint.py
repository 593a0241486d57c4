"""Checkpoints: atomic on disk, and a resumed (or restarted) run ends where an
uninterrupted one does."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import torch

from parcourse import checkpoint, compare
from parcourse.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")
# float64: a resumed run under another strategy equals the uninterrupted one to
# parcourse.compare.FLOAT64_TOLERANCE on any machine (see tests/distributed/test_cli.py)
BASE = TrainConfig(steps=20, batch_size=32, optimizer="adam", lr=0.002, seed=5, quiet=True,
                   dtype="float64")


def config(**changes):
    return TrainConfig(**{**vars(BASE), **changes})


def test_resumed_run_equals_uninterrupted(tmp_path):
    path = str(tmp_path / "ck.pt")
    full = train(BASE)
    train(config(steps=10, checkpoint=path, checkpoint_every=4))  # saved at steps 4 and 8
    assert checkpoint.load(path)["next_step"] == 8
    resumed = train(config(checkpoint=path, resume=True))
    assert resumed.losses == pytest.approx(full.losses, rel=0, abs=0)
    for key, value in full.state_dict.items():
        assert torch.equal(resumed.state_dict[key], value), key


def test_resume_with_more_workers_continues_the_same_computation(tmp_path):
    path = str(tmp_path / "ck.pt")
    full = train(BASE)
    train(config(steps=10, checkpoint=path, checkpoint_every=10))
    resumed = train(config(strategy="dp-manual", workers=2, checkpoint=path, resume=True))
    compare.assert_close(resumed.state_dict, full.state_dict)


@pytest.mark.parametrize("first, then", [
    (dict(strategy="pipeline-1f1b", workers=2, microbatches=2), dict()),
    (dict(), dict(strategy="dp-pp", workers=4, stages=2, microbatches=2)),
    (dict(strategy="pipeline-gpipe", workers=3, microbatches=4),
     dict(strategy="pipeline-1f1b", workers=2)),
    (dict(strategy="tensor", workers=2), dict()),
    (dict(), dict(strategy="tensor", workers=2)),
    (dict(strategy="zero3", workers=3), dict(strategy="zero1", workers=2)),
    (dict(strategy="zero2", workers=2, bucket_kb=4), dict()),
])
def test_checkpoints_hold_the_unsplit_model_and_resume_under_any_strategy(tmp_path, first,
                                                                           then):
    """A pipeline's, tensor-parallel or ZeRO run's checkpoint is the unsplit model's parameters
    and Adam state, so a run split one way resumes split another way, or not at all."""
    path = str(tmp_path / "ck.pt")
    full = train(BASE)
    train(config(steps=10, checkpoint=path, checkpoint_every=5, **first))
    saved = checkpoint.load(path)
    assert list(saved["model"]) == list(full.state_dict)
    assert len(saved["optimizer"]["state"]) == len(full.state_dict)  # Adam: every parameter
    resumed = train(config(checkpoint=path, resume=True, **then))
    compare.assert_close(resumed.losses[:10], full.losses[:10])
    compare.assert_close(resumed.state_dict, full.state_dict)


def test_optimizer_state_split_by_parts_and_merged_back_is_unchanged():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    full = optimizer.state_dict()
    parts = [checkpoint.split_optimizer_state(full, 0, 2), None,
             checkpoint.split_optimizer_state(full, 2, 2)]
    assert parts[2]["param_groups"][0]["params"] == [0, 1]
    assert torch.equal(parts[2]["state"][1]["exp_avg"], full["state"][3]["exp_avg"])
    merged = checkpoint.merge_optimizer_states(parts)
    assert merged["param_groups"] == full["param_groups"]
    assert merged["state"].keys() == full["state"].keys()
    for i, state in full["state"].items():
        for name, value in state.items():
            assert torch.equal(merged["state"][i][name], value)


def test_resume_without_a_checkpoint_starts_at_step_zero(tmp_path):
    result = train(config(steps=3, checkpoint=str(tmp_path / "none.pt"), resume=True))
    assert len(result.losses) == 3


def test_an_incompatible_checkpoint_is_refused(tmp_path):
    path = str(tmp_path / "ck.pt")
    train(config(steps=4, checkpoint=path, checkpoint_every=2))
    with pytest.raises(ValueError, match=r"--resume cannot continue from .*ck.pt: it was "
                                         r"written with batch_size=32, this run has "
                                         r"batch_size=16"):
        train(config(batch_size=16, checkpoint=path, resume=True))
    with pytest.raises(ValueError, match="it is already at step 4, past --steps 3"):
        train(config(steps=3, checkpoint=path, resume=True))


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    state = {"w": torch.ones(3)}
    checkpoint.save(path, model_state=state, optimizer_state={}, next_step=1, losses=[1.0],
                    config={})

    def crash_mid_write(payload, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, model_state=state, optimizer_state={}, next_step=2,
                        losses=[1.0, 0.5], config={})
    monkeypatch.undo()
    assert checkpoint.load(path)["next_step"] == 1


def test_a_process_killed_while_writing_never_leaves_a_torn_checkpoint(tmp_path):
    path = tmp_path / "ck.pt"
    writer = textwrap.dedent(f"""
        import torch
        from parcourse import checkpoint, compare
        big = {{"w": torch.randn(4_000_000)}}  # 16 MB: each write takes a while
        for step in range(1, 10_000):
            checkpoint.save({str(path)!r}, model_state=big, optimizer_state={{}},
                            next_step=step, losses=[], config={{}})
    """)
    killed_mid_write = 0
    for delay in (0.05, 0.13, 0.21, 0.34, 0.55):
        before = path.stat().st_mtime_ns if path.exists() else None
        process = subprocess.Popen([sys.executable, "-c", writer])
        deadline = time.monotonic() + 60
        while not path.exists() or path.stat().st_mtime_ns == before:  # writing has begun
            assert time.monotonic() < deadline, "the writer never wrote a checkpoint"
            time.sleep(0.01)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        strays = list(tmp_path.glob("ck.pt.tmp-*"))
        killed_mid_write += bool(strays)
        saved = checkpoint.load(path)  # never torn: the old or the new checkpoint
        assert saved["next_step"] >= 1 and saved["model"]["w"].numel() == 4_000_000
        for stray in strays:
            stray.unlink()
    assert killed_mid_write >= 1  # the kills did land in the middle of writes


def _kill_one_worker_when(path: Path, step: int, torchrun: subprocess.Popen) -> int:
    """Wait until the checkpoint has passed ``step``, then SIGKILL one training worker."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if path.exists():
            try:
                if checkpoint.load(path)["next_step"] >= step:
                    break
            except Exception:  # pragma: no cover - being replaced right now
                pass
        time.sleep(0.05)
    else:
        raise AssertionError("the run never reached the step to kill it at")
    workers = [p for p in psutil.Process(torchrun.pid).children()
               if "parcourse" in " ".join(p.cmdline())]
    assert len(workers) == 2, workers
    victim = workers[-1]
    victim.send_signal(signal.SIGKILL)
    return victim.pid


@pytest.mark.parametrize("strategy", [["ddp"], ["pipeline-1f1b", "--microbatches", "4"]])
def test_torchrun_restarts_a_killed_worker_from_the_checkpoint(tmp_path, strategy):
    ck, out, reference = tmp_path / "ck.pt", tmp_path / "out.pt", tmp_path / "ref.pt"
    args = ["train", "--strategy", *strategy, "--model", "complex", "--steps", "120",
            "--batch-size", "64", "--seed", "2", "--quiet", "--dtype", "float64"]
    done = subprocess.run([sys.executable, "-m", "parcourse", *args, "--workers", "2",
                           "--save", str(reference)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    torchrun = subprocess.Popen(
        [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "--max-restarts", "1",
         "-m", "parcourse", *args, "--checkpoint", str(ck), "--checkpoint-every", "10",
         "--resume", "--save", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _kill_one_worker_when(ck, 40, torchrun)
        stdout, stderr = torchrun.communicate(timeout=300)
    finally:
        torchrun.kill()
    assert torchrun.returncode == 0, stderr[:3000] + "\n…\n" + stderr[-3000:]
    assert "failed (exitcode: -9)" in stderr  # a worker died, and yet the job succeeded
    restarted = torch.load(out, weights_only=True)
    compare.assert_close(restarted, torch.load(reference, weights_only=True))
