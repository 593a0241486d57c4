"""Keep the launcher's sockets on this machine: the loopback interface only (chapter 2).

:func:`parcourse.launch.run` spawns its workers on this machine, so nothing it opens
needs to be reachable from another one:

* the rendezvous store (a ``TCPStore`` in the launching process, where the workers
  publish their addresses) listens on 127.0.0.1. As the master, ``TCPStore`` listens on
  every interface whatever host it is given; handed a socket that already listens
  (``master_listen_fd``), it serves on that socket instead and takes ownership of it
  (both of torch's store backends, libuv and the classic one, do);
* gloo's and NCCL's sockets between the workers use the interface that
  ``GLOO_SOCKET_IFNAME`` and ``NCCL_SOCKET_IFNAME`` name; without them, gloo takes the
  address the machine's hostname resolves to, which can be an external one. The workers
  get the loopback interface there, unless the user set these variables.

Under torchrun or horovodrun, their own rendezvous applies (chapter 5 says which ports
a multi-node run opens).
"""

from __future__ import annotations

import socket
import sys
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

HOST = "127.0.0.1"
VARIABLES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
_IFF_LOOPBACK = 0x8  # Linux's flag of a loopback interface (/sys/class/net/NAME/flags)


def store(timeout: float) -> dist.TCPStore:
    """A master ``TCPStore`` listening on 127.0.0.1 only, at a port the system chose."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind((HOST, 0))
        listener.listen(socket.SOMAXCONN)
        served = dist.TCPStore(HOST, listener.getsockname()[1], is_master=True,
                               wait_for_workers=False, timeout=timedelta(seconds=timeout),
                               master_listen_fd=listener.fileno())
    except BaseException:
        listener.close()
        raise
    listener.detach()  # the store closes the socket when it goes
    return served


def interface() -> str:
    """The name of this machine's loopback network interface (``lo`` on Linux)."""
    for _, name in socket.if_nameindex():
        try:
            flags = int(Path(f"/sys/class/net/{name}/flags").read_text(), 16)
        except (OSError, ValueError):
            continue
        if flags & _IFF_LOOPBACK:
            return name
    return "lo0" if sys.platform == "darwin" else "lo"


def settings(environ) -> dict[str, str]:
    """The variables that keep gloo's and NCCL's sockets on the loopback interface, less
    those ``environ`` sets already (the user's choice applies)."""
    return {name: interface() for name in VARIABLES if name not in environ}


def horovod_run(fn, args: tuple, workers: int):
    """``horovod.run(fn, args)`` on ``workers`` local processes over Gloo, with every
    socket it opens on the loopback interface.

    ``horovod.run`` (Horovod 0.28.1, its last release) starts HTTP servers in this
    process — the rendezvous, and a key-value store from which this process unpickles
    the workers' results — and binds each to every interface (``find_port`` binds
    ``('', port)``), unauthenticated. On one machine nothing needs them from outside:
    for the duration of the call, ``find_port`` binds 127.0.0.1 instead, and the
    workers' Gloo uses the loopback interface.
    """
    import horovod
    from horovod.runner.common.util import network as common_network
    from horovod.runner.http import http_server
    from horovod.runner.util import network

    original = network.find_port

    def find_local_port(server_factory):
        return original(lambda address: server_factory((HOST, address[1])))

    modules = (network, common_network, http_server)
    for module in modules:
        module.find_port = find_local_port
    try:
        return horovod.run(fn, args=args, num_proc=workers, hosts=f"localhost:{workers}",
                           use_gloo=True, verbose=0, network_interfaces=[interface()])
    finally:
        for module in modules:
            module.find_port = original
