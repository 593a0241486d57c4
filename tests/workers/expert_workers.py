"""Worker functions for tests/distributed/test_experts.py (spawned workers must import them)."""

import torch

from parcourse.model_parallel import experts


def rows_count(source: int, destination: int) -> int:
    """Uneven splits, some empty: how many rows ``source`` sends to ``destination``."""
    return (source + 2 * destination) % 4     # K = 2: 0→0 none, 0→1 2, 1→0 1, 1→1 3


def row(source: int, destination: int, i: int, width: int = 3) -> torch.Tensor:
    return torch.tensor([100.0 * source + 10 * destination + i + j / 10 for j in range(width)],
                        dtype=torch.float64)


def all_to_all_against_its_definition(rank: int, world_size: int) -> dict:
    """AllToAll forward (rows to their ranks) and backward (the gradient of each received
    row back to its sender) against the rows built by hand, and the bytes counted."""
    send = [rows_count(rank, q) for q in range(world_size)]
    receive = [rows_count(q, rank) for q in range(world_size)]
    rows = torch.stack([row(rank, q, i) for q in range(world_size) for i in range(send[q])])
    rows.requires_grad_(True)
    experts.reset_bytes_sent()
    out = experts.AllToAll.apply(rows, send, receive)
    expected = torch.stack([row(q, rank, i) for q in range(world_size) for i in range(receive[q])])
    # loss = Σ out ⊙ w with w = 2 · out + rank: ∂loss/∂row = w of the row where it arrived
    weight = 2 * expected.detach() + rank
    (out * weight).sum().backward()
    back = torch.stack([2 * row(rank, q, i) + q for q in range(world_size)
                        for i in range(send[q])])
    return {"forward": torch.equal(out.detach(), expected),
            "backward": torch.equal(rows.grad, back),
            "bytes": experts.bytes_sent(),
            "bytes_expected": 3 * 8 * (sum(send) - send[rank] + sum(receive) - receive[rank])}
