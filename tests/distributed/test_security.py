"""Nothing gets in: checkpoints load without running code, the launcher listens on this
machine only, and what the build downloads is the release it pins."""

import ast
import hashlib
import ipaddress
import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import asdict
from pathlib import Path

import psutil
import pytest
import torch

from workers import security_workers as w
from parcourse import checkpoint, launch, loopback
from parcourse.errors import CheckpointError, ConfigError
from parcourse.models import build_model
from parcourse.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
BASE = TrainConfig(steps=6, batch_size=32, optimizer="adam", lr=0.002, seed=5, quiet=True)
HOLDS = "a checkpoint holds only tensors, dicts, lists, numbers and strings"


class RunsACommand:
    """Unpickling this object runs ``command`` (what a plain ``pickle.load`` would do)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A real checkpoint: 4 of BASE's steps done."""
    path = tmp_path_factory.mktemp("good") / "ck.pt"
    train(TrainConfig(**{**vars(BASE), "steps": 4, "checkpoint": str(path),
                         "checkpoint_every": 4}))
    return path


def resume(path) -> TrainConfig:
    return TrainConfig(**{**vars(BASE), "checkpoint": str(path), "resume": True})


def parcourse_train(*args):
    return subprocess.run([sys.executable, "-m", "parcourse", "train", "--steps", "6",
                           "--quiet", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


# --- checkpoints -----------------------------------------------------------------------

def test_a_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker, evil = tmp_path / "PWNED", tmp_path / "evil.pt"
    torch.save({"model": RunsACommand(f"touch {marker}")}, evil)
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(evil)!r}, "
                    f"weights_only=False)"], capture_output=True, timeout=60)
    assert marker.exists()  # the file does run a command when unpickled plainly
    marker.unlink()
    done = parcourse_train("--checkpoint", str(evil), "--resume")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (f"python -m parcourse train: error: {evil} is not a parcourse "
                           f"checkpoint: it refers to posix.system, but {HOLDS}; nothing in "
                           f"the file was run\n")
    assert not marker.exists()


def test_a_truncated_checkpoint_is_one_line_on_the_command_line(tmp_path, good):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:2000])
    done = parcourse_train("--checkpoint", str(cut), "--resume")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (f"python -m parcourse train: error: {cut} is not a parcourse "
                           f"checkpoint: it is truncated (a zip archive without its end)\n")


def _other_zip(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")


def _damaged(path, good):
    """Zero 50 bytes of the pickle right after its first opcode (wherever the archive
    puts it), so the unpickler meets opcode 0."""
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("/data.pkl"))
    name_and_extra = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little") \
        + int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_and_extra + 2  # past the PROTO opcode
    data[start:start + 50] = bytes(50)
    path.write_bytes(bytes(data))


NOT_CHECKPOINTS = {  # how to make the file -> what is wrong with it
    "text": (lambda p, g: p.write_text("model: simple\n"),
             "it is not a file written by torch.save"),
    "empty": (lambda p, g: p.write_bytes(b""), "it is empty"),
    "truncated": (lambda p, g: p.write_bytes(g.read_bytes()[:-100]),
                  "it is truncated (a zip archive without its end)"),
    "module": (lambda p, g: torch.save(torch.nn.Linear(2, 2), p),
               f"it refers to torch.nn.modules.linear.Linear, but {HOLDS}; nothing in the "
               f"file was run"),
    "saved parameters": (lambda p, g: torch.save(build_model("simple").state_dict(), p),
                         "it holds only named tensors, like the parameters that --save "
                         "writes; checkpoints are written with --checkpoint FILE "
                         "--checkpoint-every N"),
    "list": (lambda p, g: torch.save([1, 2], p), "it holds a list, where a checkpoint is a dict"),
    "other format": (lambda p, g: torch.save({"format": 2}, p),
                     "it is format 2, and this parcourse reads format 1"),
    "missing entries": (lambda p, g: torch.save({"format": 1, "model": {}}, p),
                        "it has no 'optimizer', 'next_step', 'losses', 'config', 'torch_rng' "
                        "entry"),
    "other zip": (lambda p, g: _other_zip(p),
                  "it is a zip archive that torch.load cannot read (file in archive is not in "
                  "a subdirectory: notes.txt)"),
    "damaged": (_damaged, "its data is damaged (Unsupported operand 0); nothing in the file "
                          "was run"),
}


@pytest.mark.parametrize("kind", NOT_CHECKPOINTS)
def test_a_file_that_is_not_a_checkpoint_is_refused_in_one_line(tmp_path, good, kind):
    make, problem = NOT_CHECKPOINTS[kind]
    path = tmp_path / "ck.pt"
    make(path, good)
    with pytest.raises(CheckpointError) as refused:
        train(resume(path))
    assert str(refused.value) == f"{path} is not a parcourse checkpoint: {problem}"


def test_an_entry_of_the_wrong_type_is_named(tmp_path, good):
    saved = checkpoint.read(good)
    path = tmp_path / "ck.pt"
    torch.save({**saved, "next_step": "4"}, path)
    with pytest.raises(CheckpointError, match=re.escape(
            f"{path} is not a parcourse checkpoint: its 'next_step' entry is not a step "
            f"number (an int >= 0)")):
        checkpoint.read(path)


def test_a_folder_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError) as refused:
        train(resume(tmp_path))
    assert str(refused.value) == f"{tmp_path} cannot be read as a checkpoint: Is a directory"


def _another_model(saved):
    return {**saved, "model": build_model("complex").state_dict()}


def _other_shape(saved):
    return {**saved, "model": {**saved["model"], "3.weight": torch.zeros(64, 10)}}


def _other_optimizer(saved):
    state = {0: {"exp_avg": torch.zeros(3)}}
    return {**saved, "optimizer": {**saved["optimizer"], "state": state}}


MISMATCHES = {
    "another model": (_another_model,
                      "its parameters are not those of the simple model (missing: 1.weight, "
                      "1.bias, 5.weight, …; unknown: 0.weight, 0.bias, 7.weight, …)"),
    "another shape": (_other_shape,
                      "its 3.weight has shape [64, 10], where the simple model's has [64, 64]"),
    "another optimizer state": (_other_optimizer,
                                "its optimizer's exp_avg of parameter 0 has shape [3], where "
                                "the parameter has [64, 784]"),
    "no optimizer state": (lambda s: {**s, "optimizer": {}},
                           "its optimizer state is not that of one optimizer over the simple "
                           "model's 6 parameters"),
    "losses missing": (lambda s: {**s, "losses": []}, "it holds 0 losses for its 4 steps done"),
}


@pytest.mark.parametrize("kind", MISMATCHES)
def test_a_checkpoint_that_does_not_fit_the_model_is_refused_before_training(tmp_path, good,
                                                                             kind):
    change, problem = MISMATCHES[kind]
    path = tmp_path / "ck.pt"
    torch.save(change(checkpoint.read(good)), path)
    with pytest.raises(ConfigError) as refused:
        train(resume(path))
    assert str(refused.value) == f"--resume cannot continue from {path}: {problem}"


def test_a_real_checkpoint_reads_back_as_tensors_and_plain_values(good):
    saved = checkpoint.read(good)
    assert checkpoint.compatible(saved, asdict(BASE)) is None
    assert saved["next_step"] == 4 and len(saved["losses"]) == 4
    assert all(t.device.type == "cpu" for t in saved["model"].values())
    assert saved["config"] == {**asdict(BASE), "steps": 4, "checkpoint": str(good),
                               "checkpoint_every": 4}


def _torch_loads(source: str):
    """The ``torch.load(...)`` calls in ``source``, with their ``weights_only`` (None if
    not passed)."""
    source = "\n".join(re.sub(r"^(\s*)[%!].*", r"\1pass", line)  # IPython's magics
                       for line in source.splitlines())
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load" and getattr(node.func.value, "id", "") == "torch"):
            passed = {k.arg: k.value for k in node.keywords}
            yield node.lineno, (passed["weights_only"].value if "weights_only" in passed
                                else None)


def _sources():
    for path in sorted([*ROOT.glob("parcourse/**/*.py"), *ROOT.glob("tests/**/*.py")]):
        yield path, path.read_text()
    for path in sorted(ROOT.glob("book/**/*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] == "code":
                yield Path(f"{path}#cell{i}"), "".join(cell["source"])


def test_every_torch_load_runs_no_code():
    """The package and the book say weights_only=True; the tests never say False (torch
    ≥ 2.6, which the tests need, defaults to True)."""
    found, unsafe = 0, []
    for path, source in _sources():
        for line, weights_only in _torch_loads(source):
            found += 1
            in_tests = "tests" in path.relative_to(ROOT).parts[:1]
            if weights_only is not True and not (in_tests and weights_only is None):
                unsafe.append(f"{path.relative_to(ROOT)}:{line}")
    assert found >= 5 and unsafe == []


# --- the launcher's sockets ------------------------------------------------------------

def _is_loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip.split("%")[0]).is_loopback


def _launch_listens_on_loopback_only(world_size, backend):
    results = launch.run(w.listening_sockets, world_size, args=(os.getpid(),), backend=backend,
                         verbose=False)
    parent, sockets = os.getpid(), {entry for _, found, _ in results for entry in found}
    workers = {pid for pid, _, _ in results}
    assert {pid for pid, _, _ in sockets} == workers | {parent}  # each listens somewhere
    assert [s for s in sockets if not _is_loopback(s[1])] == []
    interface = loopback.interface()
    assert all(names == dict.fromkeys(loopback.VARIABLES, interface)
               for _, _, names in results)


def test_a_launch_listens_on_loopback_only():
    _launch_listens_on_loopback_only(2, "gloo")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_launch_on_gpus_listens_on_loopback_only():
    _launch_listens_on_loopback_only(min(2, torch.cuda.device_count()), "nccl")


def test_the_store_listens_on_127_0_0_1_and_serves():
    store = loopback.store(timeout=30)
    mine = [c.laddr for c in psutil.Process().net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == store.port]
    assert [(a.ip, a.port) for a in mine] == [("127.0.0.1", store.port)]
    client = torch.distributed.TCPStore("127.0.0.1", store.port, is_master=False)
    client.set("key", "value")
    assert store.get("key") == b"value"


def test_the_users_interface_variables_are_kept():
    interface = loopback.interface()
    if sys.platform == "linux":
        assert interface == "lo"
    assert loopback.settings({}) == {"GLOO_SOCKET_IFNAME": interface,
                                     "NCCL_SOCKET_IFNAME": interface}
    assert loopback.settings({"GLOO_SOCKET_IFNAME": "eth1"}) == {"NCCL_SOCKET_IFNAME": interface}


# --- what the build downloads ------------------------------------------------------------

def _pinned(script: str) -> str:
    if script == "horovod_install.py":
        from parcourse import horovod_install

        return horovod_install.SHA256
    return re.search(r"^SHA256=([0-9a-f]{64})$", (ROOT / "scripts" / script).read_text(),
                     re.M).group(1)


def _fake(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def _mismatch(file: str, content: bytes, script: str) -> str:
    return (f"error: {file} has SHA-256 {hashlib.sha256(content).hexdigest()}, not the "
            f"pinned {_pinned(script)}: the download is not the release this build pins; "
            f"nothing was installed\n")


def test_a_mermaid_package_that_is_not_the_pinned_one_is_refused(tmp_path):
    fakes = tmp_path / "bin"
    fakes.mkdir()
    _fake(fakes, "npm", 'echo "changed" > mermaid-11.12.1.tgz\n')  # npm pack writes here
    venv = tmp_path / "venv"
    done = subprocess.run([str(ROOT / "scripts" / "install-mermaid.sh"), str(venv)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{fakes}:{os.environ['PATH']}"})
    assert done.returncode == 1
    assert done.stderr == _mismatch("mermaid-11.12.1.tgz", b"changed\n", "install-mermaid.sh")
    assert not (venv / "share").exists()


def test_a_horovod_release_that_is_not_the_pinned_one_is_refused(tmp_path):
    python = _fake(tmp_path, "python", """case "$1 $2 $3" in
  "-c "*) exit 1 ;;                       # import horovod.torch: not installed
  "-m pip install") exit 0 ;;             # the build tools
  "-m pip download") for last; do :; done; echo "changed" > "$last/horovod-0.28.1.tar.gz" ;;
  *) echo "unexpected: $*" >&2; exit 3 ;;
esac
""")
    done = subprocess.run([sys.executable, "-m", "parcourse", "install-horovod", "--python",
                           str(python)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 1
    assert done.stderr == _mismatch("horovod-0.28.1.tar.gz", b"changed\n", "horovod_install.py")


def test_a_file_with_the_pinned_hash_passes(tmp_path):
    release = tmp_path / "release.tar.gz"
    release.write_bytes(b"the release")
    done = subprocess.run([str(ROOT / "scripts" / "check-sha256.sh"), str(release),
                           hashlib.sha256(b"the release").hexdigest()],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_horovod_run_listens_on_loopback_only(monkeypatch):
    """horovod.run's own HTTP servers (rendezvous, results) and its workers' Gloo."""
    pytest.importorskip("horovod.torch", reason="Horovod is not installed")
    here = str(Path(__file__).parents[1])  # the workers import workers.security_workers
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    found = loopback.horovod_run(w.horovod_listening_sockets, (os.getpid(),), 2)[0]
    assert {pid for pid, _, _ in found} >= {os.getpid()}  # the HTTP servers are here
    assert [s for s in found if not _is_loopback(s[1])] == []
