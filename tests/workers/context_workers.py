"""Worker functions for tests/distributed/test_context.py (spawned workers import them)."""

import torch

from parcourse import gpt, ring
from parcourse.model_parallel import context

N, S, HEADS, WIDTH = 2, 24, 2, 8


def inputs(sequence=S, dtype=torch.float64):
    """The whole (n, S, 3·h) projections and an upstream gradient (n, S, h), seeded."""
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(N, sequence, 3 * WIDTH, generator=g, dtype=dtype)
    upstream = torch.randn(N, sequence, WIDTH, generator=g, dtype=dtype)
    return qkv, upstream


def ring_attention(rank, world_size, sequence=S, dtype=torch.float64):
    """This rank's output and ∂qkv of its positions, and the bytes it sent forward and
    backward."""
    qkv, upstream = inputs(sequence, dtype)
    mine = context.positions(rank, world_size, sequence)
    local = qkv[:, mine].clone().requires_grad_()
    ring.reset_bytes_sent()
    out = context.ring_attend(local, HEADS, rank, world_size)
    forward = ring.bytes_sent()
    (out * upstream[:, mine]).sum().backward()
    return {"positions": mine, "out": out.detach(), "grad": local.grad,
            "forward": forward, "backward": ring.bytes_sent() - forward}
