"""Worker functions for tests/test_security.py (spawned workers must import them)."""

import os
import socket

import psutil
import torch
import torch.distributed as dist

from parcourse import launch, loopback


def listening_sockets(rank, world_size):
    """The sockets this worker and the launching process listen on, mid-run, and the
    interface variables this worker sees."""
    x = torch.ones(1, device=launch.device())
    dist.all_reduce(x)  # the backend's connections are up (NCCL opens them lazily)
    found = []
    for pid in (os.getpid(), os.getppid()):
        for c in psutil.Process(pid).net_connections("inet"):
            if c.status == psutil.CONN_LISTEN or c.type == socket.SOCK_DGRAM:
                found.append((pid, c.laddr.ip, c.laddr.port))
    dist.barrier()  # every worker's sockets stay open until all have looked
    return os.getpid(), found, {name: os.environ.get(name) for name in loopback.VARIABLES}
