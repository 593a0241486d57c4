"""parcourse.launch_start: what the fork server imports, and what a worker takes from its
launcher (the workers themselves: tests/distributed/test_launch.py)."""

import multiprocessing

from parcourse import launch_start


def test_the_server_imports_torch_the_launcher_and_the_training_package():
    import parcourse.training  # noqa: F401  (adds itself when imported)

    assert launch_start.PRELOAD[:3] == ["torch", "torch.distributed", "parcourse.launch"]
    assert "parcourse.training" in launch_start.PRELOAD


def test_a_module_is_preloaded_once(monkeypatch):
    monkeypatch.setattr(launch_start, "PRELOAD", ["torch"])
    launch_start.preload("json")
    launch_start.preload("json")
    assert launch_start.PRELOAD == ["torch", "json"]


def test_workers_start_from_a_fork_server_where_python_has_one():
    expected = ("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                else "spawn")
    assert launch_start.context().get_start_method() == expected


def test_the_snapshot_is_the_launchers_folder_path_and_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PARCOURSE_PROBE", "seen")
    state = launch_start.snapshot()
    assert state["cwd"] == str(tmp_path)
    assert state["environ"]["PARCOURSE_PROBE"] == "seen"
    assert state["path"] == __import__("sys").path and state["path"] is not __import__("sys").path
