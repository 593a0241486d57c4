"""Worker functions for tests/distributed/test_planner.py (spawned workers must import
them)."""

from parcourse.planner.rate import rank_part


def tensor_part_bytes(rank: int, world_size: int) -> int:
    """Bytes of the parameters of this rank's part of the GPT over 2 tensor ranks."""
    return sum(p.numel() * p.element_size()
               for p in rank_part("gpt", rank, world_size, 2).parameters())


def ddp_part(rank: int, world_size: int):
    """This rank's part for DDP: its wrapper's type, the size of the group its gradients
    are reduced over, and whether its parameters are the plain model's, after a step."""
    import torch
    import torch.nn.functional as F

    from parcourse.models import build_model

    part = rank_part("simple", rank, world_size, 1, "ddp")
    x, y = torch.rand(4, 1, 28, 28), torch.randint(10, (4,))
    F.cross_entropy(part(x), y).backward()
    plain = build_model("simple", seed=0)
    F.cross_entropy(plain(x), y).backward()
    same = all(torch.equal(a.grad, b.grad) for a, b in zip(part.module.parameters(),
                                                          plain.parameters()))
    return type(part).__name__, part.process_group.size(), same
