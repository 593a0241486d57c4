"""parcourse.launch: results in rank order, failures reported with rank, nothing left behind."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types

import psutil
import pytest
import torch

from conftest import launched_workers
from workers import launch_workers as w
from parcourse import launch


@pytest.fixture(autouse=True)
def no_orphans():
    yield
    assert launched_workers(os.getpid()) == [], "launch.run left worker processes behind"


@pytest.mark.parametrize("world_size", [1, 3])
def test_results_come_back_in_rank_order(world_size):
    results = launch.run(w.rank_sum, world_size, args=(100,), verbose=False)
    expected_sum = float(sum(range(world_size)))
    assert results == [(100 + r, world_size, expected_sum, world_size) for r in range(world_size)]


def test_each_cpu_worker_gets_its_share_of_the_cores():
    expected = max(1, launch.available_cores() // 2)
    assert launch.run(w.thread_count, 2, verbose=False) == [expected, expected]


def test_large_results_arrive_intact():
    a, b = launch.run(w.big_tensor, 2, verbose=False)
    assert torch.equal(a, torch.zeros(1 << 20)) and torch.equal(b, torch.ones(1 << 20))


def test_auto_backend_says_what_it_chose(capsys):
    launch.run(w.thread_count, 2)
    assert "parcourse.launch: 2 workers as CPU processes with gloo (no CUDA GPU found)" \
        in capsys.readouterr().out


def test_worker_exception_is_reraised_with_rank_and_traceback():
    start = time.monotonic()
    with pytest.raises(launch.WorkerError) as info:
        launch.run(w.raise_on_rank_one, 2, timeout=60, verbose=False)
    assert time.monotonic() - start < 30
    err = info.value
    assert err.rank == 1
    assert str(err).startswith("worker rank 1 of 2 failed with ValueError: boom from rank 1")
    assert "in raise_on_rank_one" in err.remote_traceback
    assert 'raise ValueError("boom from rank 1")' in err.remote_traceback


def test_worker_killed_by_a_signal_is_named():
    with pytest.raises(launch.WorkerError) as info:
        launch.run(w.kill_rank_one, 2, timeout=60, verbose=False)
    assert info.value.rank == 1
    assert str(info.value).startswith(
        "worker rank 1 of 2 was killed by signal SIGKILL before returning a result")


def test_hung_worker_is_stopped_after_the_timeout():
    start = time.monotonic()
    with pytest.raises(launch.WorkerTimeout) as info:
        launch.run(w.hang_on_rank_zero, 2, timeout=4, verbose=False)
    assert 4 <= time.monotonic() - start < 20
    assert str(info.value).startswith("worker ranks 0, 1 of 2 did not finish within 4 s "
                                      "and were stopped")


def test_two_runs_in_a_row_and_two_at_once():
    assert launch.run(w.rank_sum, 2, verbose=False)[0][2] == 1.0
    assert launch.run(w.rank_sum, 2, verbose=False)[0][2] == 1.0
    results, errors = {}, []

    def one(name):
        try:
            results[name] = launch.run(w.rank_sum, 2, verbose=False)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=one, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert results["a"] == results["b"] == [(0, 2, 1.0, 2), (1, 2, 1.0, 2)]


def test_workers_see_the_launchers_folder_path_and_environment_of_the_launch(
        tmp_path, monkeypatch):
    """Workers are forked from a server started at the first launch (launch_start), yet
    each sees the folder, import path and variables of the launcher at *its* launch."""
    launch.run(w.rank_sum, 1, verbose=False)                # the server is running now
    (tmp_path / "probe_module.py").write_text("VALUE = 7\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PARCOURSE_PROBE", "seen")
    results = launch.run(w.where_am_i, 2, args=("probe_module",), verbose=False)
    assert [r[:3] for r in results] == [(str(tmp_path), "seen", 7)] * 2
    if "forkserver" in __import__("multiprocessing").get_all_start_methods():
        assert all("multiprocessing.forkserver" in r[3] for r in results)


def test_workers_die_with_a_killed_parent(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(os.path.dirname(__file__))!r})
        from workers import launch_workers
        from parcourse import launch
        if __name__ == "__main__":
            launch.run(launch_workers.report_pid_then_hang, 2, args=({str(tmp_path)!r},),
                       timeout=600, verbose=False)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script])
    pid_files = [tmp_path / f"worker{r}.pid" for r in range(2)]
    deadline = time.monotonic() + 60
    while not all(f.exists() and f.read_text() for f in pid_files):
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.2)
    pids = [int(f.read_text()) for f in pid_files]
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
              for p in pids):
        assert time.monotonic() < deadline, "workers outlived their killed parent"
        time.sleep(0.2)


def test_finished_workers_exit_cleanly():
    # workers that returned are allowed to finish their own clean-up before any
    # terminate(): no leaked-semaphore warning from the resource tracker
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(os.path.dirname(__file__))!r})
        from workers import launch_workers
        from parcourse import launch
        if __name__ == "__main__":
            print(launch.run(launch_workers.make_a_semaphore, 2, verbose=False))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout == "[0, 1]\n"
    assert "leaked" not in done.stderr, done.stderr


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_invalid_world_size_is_refused(bad):
    with pytest.raises(ValueError, match=r"world_size must be an integer ≥ 1, got"):
        launch.run(w.rank_sum, bad)


def test_invalid_timeout_is_refused():
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
        launch.run(w.rank_sum, 2, timeout=0)


@pytest.mark.parametrize("world_size, backend, gpus, chosen", [
    (2, "auto", 0, "gloo"), (1, "auto", 1, "nccl"), (2, "auto", 2, "nccl"),
    (3, "auto", 2, "gloo"), (4, "gloo", 8, "gloo"), (2, "nccl", 2, "nccl"),
])
def test_backend_choice(world_size, backend, gpus, chosen):
    assert launch.choose_backend(world_size, backend, gpus=gpus)[0] == chosen


def test_nccl_with_more_workers_than_gpus_is_a_clear_error():
    with pytest.raises(ValueError) as info:
        launch.choose_backend(4, "nccl", gpus=1)
    assert str(info.value) == (
        "backend='nccl' needs one GPU per worker, but 4 workers were asked for and 1 GPU "
        "is available; use backend='gloo' to run the workers as CPU processes, or ask for "
        "at most 1 worker")


def test_nccl_without_any_gpu_says_so():
    with pytest.raises(ValueError) as info:
        launch.choose_backend(2, "nccl", gpus=0)
    assert str(info.value) == ("backend='nccl' needs one GPU per worker, but no CUDA GPU is "
                               "available; use backend='gloo' to run the workers as CPU "
                               "processes")


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backend 'mpi': choose one of auto, gloo, nccl"):
        launch.run(w.rank_sum, 2, backend="mpi")


def test_a_function_written_in_a_notebook_cell_runs_on_two_workers(monkeypatch):
    """A cell's function lives in a ``__main__`` without a file, which the workers cannot
    import: it travels by value, with what it uses from the cell (here a constant and a
    class defined next to it)."""
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    scale = 10

    class Reply:
        def __init__(self, value):
            self.value = value

    def cell_function(rank, world_size):
        import torch.distributed as dist

        return Reply(scale * rank + dist.get_world_size()).value

    cell_function.__module__ = "__main__"
    assert launch.run(cell_function, 2, verbose=False) == [2, 12]


def test_a_lambda_and_its_arguments_travel_by_value():
    offsets = {"offset": 5}
    assert launch.run(lambda rank, world_size, o: rank + o["offset"], 2, args=(offsets,),
                      verbose=False) == [5, 6]


def test_what_cannot_travel_is_refused_before_any_worker_starts():
    import threading

    with pytest.raises(TypeError) as info:
        launch.run(w.rank_sum, 2, args=(threading.Lock(),), verbose=False)
    assert str(info.value) == (
        "workers cannot receive 'rank_sum' and its arguments: a worker is a fresh process, so "
        "they are shipped by value, and this failed (cannot pickle '_thread.lock' object); "
        "pass what the worker needs to build it (a path, not an open file; no locks, sockets "
        "or processes)")


def test_workers_that_never_started_are_told_from_a_hang():
    """A fresh launcher's first workers come from a server that must first start a Python
    and import torch, which takes longer than 0.2 s: no worker even starts."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(os.path.dirname(__file__))!r})
        from workers import launch_workers
        from parcourse import launch
        if __name__ == "__main__":
            try:
                launch.run(launch_workers.rank_sum, 2, timeout=0.2, verbose=False)
            except launch.WorkerTimeout as err:
                print(err)
    """)
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert time.monotonic() - start < 60
    cores = launch.count(launch.available_cores(), "core")
    # rank 0 may report in the moment before rank 1 is forked; rank 1 never does in time
    assert re.fullmatch(
        r"the 2 workers did not all join within 0\.2 s and were stopped: (ranks 0, 1|rank 1) "
        r"had not started \(a worker is a fresh Python that imports torch\)(; rank 0 was "
        rf"waiting for them to join)?\. This machine has {cores}: start fewer workers, or "
        r"pass a larger timeout \(--timeout on the command line\)\n", done.stdout), \
        done.stdout + done.stderr[-2000:]


def test_a_timeout_names_who_waited_for_whom():
    cores = launch.count(launch.available_cores(), "core")
    progress = {0: "started", 1: "started", 2: "joined"}  # rank 3: never started
    assert launch.describe_timeout(64, {}, {r: "started" for r in range(40)}, 120) == (
        "the 64 workers did not all join within 120 s and were stopped: ranks 40–63 had not "
        "started (a worker is a fresh Python that imports torch); ranks 0–39 were waiting for "
        f"them to join. This machine has {cores}: start fewer workers, or pass a larger "
        "timeout (--timeout on the command line)")
    assert launch.describe_timeout(4, {}, progress, 5).endswith(
        "rank 3 had not started (a worker is a fresh Python that imports torch); ranks 0, 1 "
        f"were waiting for them to join. This machine has {cores}: start fewer workers, or "
        "pass a larger timeout (--timeout on the command line)")
    assert launch.describe_timeout(3, {2: None}, {0: "joined", 1: "joined"}, 9) == (
        "worker ranks 0, 1 of 3 did not finish within 9 s and were stopped; a worker is "
        "probably waiting in a collective that another worker never joined. If the work is "
        "only slow, pass a larger timeout (--timeout on the command line)")


def test_more_workers_than_memory_get_a_warning_before_they_start():
    gib = 1 << 30
    assert launch.memory_warning(4, available=64 * gib) is None
    assert launch.memory_warning(64, available=8 * gib) == (
        "64 workers need about 25.0 GiB (each is a Python process with torch, about 400 MiB) "
        "but this machine has 8.0 GiB available: expect workers to be killed for lack of "
        "memory; use at most 20 workers")
    assert launch.memory_warning(1, available=None) is None  # not Linux: nothing to say


def test_a_diverged_worker_is_reported_by_the_lowest_rank_as_one_line():
    from parcourse.errors import TrainingDiverged

    with pytest.raises(TrainingDiverged) as info:
        launch.run(w.diverge_at_step_three, 3, timeout=60, verbose=False)
    assert str(info.value) == ("the loss became nan at step 3 of 10 (rank 0): training "
                               "diverged, so it was stopped; lower --lr (it is 0.1) and start "
                               "again")
    assert (info.value.rank, info.value.step) == (0, 3)


def test_a_workers_config_error_reaches_the_caller_as_it_is():
    """A ConfigError raised in a worker comes back unchanged, with that worker's rank,
    while the launcher waits for the other workers' reports."""
    from parcourse.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        launch.run(w.refuse_on_rank_one, 2, timeout=60, verbose=False)
    assert str(info.value) == "--layers 0: a GPT needs at least one block"
    assert info.value.rank == 1
