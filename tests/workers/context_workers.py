"""Worker functions for tests/distributed/test_context.py (spawned workers import them)."""

import torch

from parcourse import ring
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


def torch_context_parallel(rank, world_size, sequence=S, dtype=torch.float64):
    """PyTorch's own context parallelism (torch.distributed.tensor.experimental) on the same
    inputs: F.scaled_dot_product_attention inside ``context_parallel`` with q, k, v sharded
    along the sequence. Returns this rank's output and ∂q, ∂k, ∂v, or the exception it
    raised (type and message), caught inside the context so that the context's own clean-up
    does not hide it."""
    import torch.nn.functional as F
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.experimental import context_parallel

    qkv, upstream = inputs(sequence, dtype)
    q, k, v = (z.reshape(N, sequence, HEADS, -1).transpose(1, 2).contiguous()
               for z in qkv.chunk(3, dim=-1))
    up = upstream.reshape(N, sequence, HEADS, -1).transpose(1, 2).contiguous()
    mesh = init_device_mesh("cpu", (world_size,))
    with context_parallel(mesh, buffers=[q, k, v, up], buffer_seq_dims=[2, 2, 2, 2]):
        leaves = [z.requires_grad_() for z in (q, k, v)]   # this rank's shards now
        try:
            out = F.scaled_dot_product_attention(*leaves, is_causal=True)
            (out * up).sum().backward()
        except Exception as err:  # noqa: BLE001  (the reason is the result)
            for z in leaves:
                z.requires_grad_(False)    # the context restores its buffers by resizing
            return {"error": f"{type(err).__name__}: {err}"}
        return {"out": out.detach(), "grads": [z.grad for z in leaves]}
