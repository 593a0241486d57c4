"""Worker functions for tests/distributed/test_planner.py (spawned workers must import
them)."""

from parcourse.planner.rate import rank_part


def tensor_part_bytes(rank: int, world_size: int) -> int:
    """Bytes of the parameters of this rank's part of the GPT over 2 tensor ranks."""
    return sum(p.numel() * p.element_size()
               for p in rank_part("gpt", rank, world_size, 2).parameters())
