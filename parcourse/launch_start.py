"""How :func:`parcourse.launch.run` starts its workers: forked from a server that has
already imported torch (chapter 2, "Starting K workers").

A worker must be a *fresh* process: forking the launcher itself would copy a notebook's
threads, locks and (on a GPU) its CUDA context, which a child cannot use. Python's
``spawn`` gives a fresh process by starting a new interpreter, which then imports torch:
about 1.2 s of CPU per worker on a laptop core, so 4 workers on 2 cores take over 3 s
before any work. Python's ``forkserver`` gives the same fresh process faster: the first
launch starts one clean server process (a new interpreter, which imports torch and the
training code once, :data:`PRELOAD`, but never runs a kernel or touches CUDA), and every
worker after that is forked from the server in milliseconds.

Forking from the server keeps what the server had when it started, so each worker takes
the launcher's *current* working folder, ``sys.path`` and environment variables from
:func:`snapshot` before it runs anything (:func:`adopt`), as a spawned worker would.
Workers are the server's children, not the launcher's, so each watches the launcher
through a pipe that only the launcher holds (:func:`watch`): when the launcher dies,
however it dies, the pipe closes and the worker exits. The server itself exits when
the launcher does (Python's forkserver reads the same kind of pipe).

Where Python has no fork server (Windows), workers are spawned. The one cost of the
server: a worker runs the training code the server imported, so after editing the
package's own files a notebook's kernel must be restarted (a spawned worker would have
imported the edited files).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading

# Imported once by the fork server, so that a worker forked from it starts with them;
# packages add themselves (:func:`preload`), as :mod:`parcourse.training` does.
PRELOAD = ["torch", "torch.distributed", "parcourse.launch"]
_lock = threading.Lock()
_context = None


def preload(module: str) -> None:
    """Have the fork server import ``module`` too, if it has not started yet (a package
    calls this when it is imported, before any launch)."""
    with _lock:
        if module not in PRELOAD:
            PRELOAD.append(module)


def context():
    """The multiprocessing context workers start from: a fork server that has imported
    :data:`PRELOAD` where the platform has one, otherwise ``spawn``."""
    global _context
    with _lock:
        if _context is None:
            forkserver = "forkserver" in multiprocessing.get_all_start_methods()
            _context = multiprocessing.get_context("forkserver" if forkserver else "spawn")
        if _context.get_start_method() == "forkserver":  # read when the server starts
            _context.set_forkserver_preload(list(PRELOAD))
        return _context


def snapshot() -> dict:
    """What a worker must share with the launcher at the moment of the launch."""
    return {"cwd": os.getcwd(), "path": list(sys.path), "environ": dict(os.environ)}


def adopt(state: dict) -> None:
    """Make this worker's folder, import path and environment the launcher's."""
    os.chdir(state["cwd"])
    sys.path[:] = state["path"]
    os.environ.clear()
    os.environ.update(state["environ"])


def watch(alive) -> None:
    """Exit when the launcher is gone: ``alive`` is the reading end of a pipe whose only
    writer is the launcher, so reading it ends (EOF) exactly when the launcher exits or is
    killed. On Linux the kernel also kills a worker whose parent (the server, or the
    launcher that spawned it) dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def wait() -> None:
        try:
            alive.recv_bytes()
        except (EOFError, OSError):
            pass
        os._exit(1)

    threading.Thread(target=wait, name="parcourse-launcher-watch", daemon=True).start()
