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


def zero_part(rank: int, world_size: int, strategy: str):
    """This rank's part for a ZeRO stage after two steps on data of its own: the world the
    engine shards over, and whether its parameters are those of the plain model trained
    with Adam on the same data (nothing came from the other ranks)."""
    import torch
    import torch.nn.functional as F

    from parcourse.models import build_model
    from parcourse.planner.rate import rank_part, rank_stepper
    from parcourse.training.loop import make_optimizer

    torch.manual_seed(rank)
    x, y = torch.rand(4, 1, 28, 28), torch.randint(10, (4,))
    part = rank_part("simple", rank, world_size, 1, strategy)
    engine = rank_stepper(part, strategy)
    plain = build_model("simple", seed=0)
    adam = make_optimizer("adam", plain.parameters(), 1e-3)
    for net, stepper in ((part, engine), (plain, adam)):
        for _ in range(2):
            stepper.zero_grad()
            F.cross_entropy(net(x), y).backward()
            stepper.step()
    engine.close()
    # the engine's parameters are its shards (under stage 3 the model's own are freed)
    same = all(torch.equal(master.detach(), group.flatten(plain.get_parameter(n).detach()
                                                          for n in group.names))
               for group, master in zip(engine.groups, engine.masters))
    return {g.world_size for g in engine.groups}, same
