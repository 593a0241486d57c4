"""Worker functions for tests/distributed/test_security.py (spawned workers must import them)."""

import os
import socket

import psutil
import torch
import torch.distributed as dist

from parcourse import launch, loopback


def listening_sockets(rank, world_size, launcher_pid):
    """The sockets this worker and the launching process listen on, mid-run, and the
    interface variables this worker sees."""
    x = torch.ones(1, device=launch.device())
    dist.all_reduce(x)  # the backend's connections are up (NCCL opens them lazily)
    found = []
    for pid in (os.getpid(), launcher_pid):
        for c in psutil.Process(pid).net_connections("inet"):
            if c.status == psutil.CONN_LISTEN or c.type == socket.SOCK_DGRAM:
                found.append((pid, c.laddr.ip, c.laddr.port))
    dist.barrier()  # every worker's sockets stay open until all have looked
    return os.getpid(), found, {name: os.environ.get(name) for name in loopback.VARIABLES}


def horovod_listening_sockets(launcher_pid):
    """Under horovod.run: every socket the launching process and all its descendants
    listen on, mid-run (rank 0 looks while every rank waits in an all-reduce after)."""
    import horovod.torch as hvd

    hvd.init()
    hvd.allreduce(torch.ones(1), name="up")  # Gloo's connections are up
    found = []
    if hvd.rank() == 0:
        root = psutil.Process(launcher_pid)
        for process in [root, *root.children(recursive=True)]:
            try:
                connections = process.net_connections("inet")
            except psutil.Error:
                continue
            found += [(process.pid, c.laddr.ip, c.laddr.port) for c in connections
                      if c.status == psutil.CONN_LISTEN or c.type == socket.SOCK_DGRAM]
    hvd.allreduce(torch.ones(1), name="looked")
    hvd.shutdown()
    return found
