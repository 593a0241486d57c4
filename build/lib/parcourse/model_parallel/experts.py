"""Expert parallelism (chapter 5, "Many experts: expert parallelism"; Lepikhin et al.,
2020, GShard; Fedus et al., 2021): the E experts of each mixture-of-experts MLP
(:mod:`parcourse.moe`) spread over K ranks, E/K each; everything else replicated.

Rank r holds experts r·E/K … (r+1)·E/K − 1 and its own shard of the windows, as in data
parallelism. In each MoE layer it routes its tokens with the replicated router (the same
probabilities, so the same choices and the same capacity cut as the single run, which
decides per window), and then:

1. **counts**: ``all_to_all_single`` of the E counts of its kept assignments per expert —
   rank q receives from every rank how many rows each of q's experts gets from it;
2. **dispatch** (:class:`AllToAll`): its assignments' input rows, sorted by expert, go to
   their experts' ranks with uneven splits (S_{r→q} rows to rank q);
3. each local expert runs on the rows it received (from every rank, in rank order);
4. **combine** (:class:`AllToAll` again, splits swapped): the outputs go back to the ranks
   their tokens came from, which weight them by the gates and add them up.

Backward runs the two all-to-alls in reverse: the gradient of the outputs goes to the
experts' ranks, the gradient of the inputs back to the tokens' ranks. An expert's
gradient is then complete on its rank: every rank's tokens that reached it were
back-propagated there, each weighted by its shard's B_k/B. The replicated parameters
saw only this rank's shard, so their gradients are summed over the ranks
(:func:`sum_replicated_gradients`), as in ``dp-manual``. Expert parallelism *is* a
combination with data parallelism: the experts are split, the rest replicated.

**Bytes.** A rank sends, per MoE layer and step, d·b bytes per row in each of the four
all-to-all passes (dispatch and combine, forward and backward), except the rows that stay
on the rank: 2·(S_r + R_r)·d·b with S_r the rows it dispatches to other ranks and R_r
those it receives from them (:func:`layer_bytes`), plus the counts, E·8 − (E/K)·8 bytes.
With uniform routing and no drops, S_r ≈ R_r ≈ k·n_r·T·(K−1)/K for n_r windows.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError
from ..moe import MixtureOfExperts, layers

_sent = [0]   # bytes this process sent to other ranks in the experts' all-to-alls


def bytes_sent() -> int:
    """Bytes this process has sent to other ranks with :class:`AllToAll` and the counts'
    exchange since the last :func:`reset_bytes_sent`."""
    return _sent[0]


def reset_bytes_sent() -> None:
    _sent[0] = 0


def _count(splits: list[int], row_bytes: int, rank: int) -> None:
    _sent[0] += sum(n for q, n in enumerate(splits) if q != rank) * row_bytes


class AllToAll(torch.autograd.Function):
    """Rows to ranks with uneven splits. Forward: ``all_to_all_single``, the first
    ``send[0]`` rows of the input to rank 0, the next ``send[1]`` to rank 1, …; the output
    holds ``receive[q]`` rows from each rank q, in rank order. Backward: the reverse
    ``all_to_all_single`` of the gradient (splits swapped), each row's gradient back to the
    rank that sent the row."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, send: list[int], receive: list[int], group=None):
        ctx.send, ctx.receive, ctx.group = send, receive, group
        return _exchange(rows, send, receive, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _exchange(grad.contiguous(), ctx.receive, ctx.send, ctx.group), None, None, None


def _exchange(rows: torch.Tensor, send: list[int], receive: list[int], group) -> torch.Tensor:
    out = rows.new_empty((sum(receive), *rows.shape[1:]))
    _count(send, math.prod(rows.shape[1:]) * rows.element_size(), dist.get_rank(group))
    dist.all_to_all_single(out, rows.contiguous(), output_split_sizes=receive,
                           input_split_sizes=send, group=group)
    return out


class ExpertParallelMoE(MixtureOfExperts):
    """This rank's part of a :class:`~parcourse.moe.MixtureOfExperts`: the router whole,
    experts ``first … first + E/K − 1`` only (``experts`` holds them, ``first`` says which).
    ``sent`` holds the last forward's rows dispatched to each rank, (K,)."""

    def __init__(self, whole: MixtureOfExperts, rank: int, ranks: int, group=None):
        nn.Module.__init__(self)
        e = whole.num_experts
        self.top_k, self.capacity_factor = whole.top_k, whole.capacity_factor
        self.router = whole.router
        self.local = e // ranks
        self.first, self.rank, self.ranks, self.group = rank * self.local, rank, ranks, group
        self.experts = nn.ModuleList(whole.experts[self.first:self.first + self.local])
        self.total = e
        self.aux_loss, self.routing, self.sent = None, None, None

    @property
    def num_experts(self) -> int:
        return self.total

    def run_experts(self, inputs: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        order = torch.argsort(chosen, stable=True)
        counts = torch.bincount(chosen, minlength=self.total)            # (E,) to each expert
        received = torch.empty_like(counts)                              # (K·E/K,) from each rank
        _count([self.local] * self.ranks, counts.element_size(), self.rank)
        dist.all_to_all_single(received, counts, group=self.group)
        send = counts.view(self.ranks, self.local).sum(1).tolist()
        from_ranks = received.view(self.ranks, self.local)                # [source, local expert]
        receive = from_ranks.sum(1).tolist()
        self.sent = torch.tensor(send)
        rows = AllToAll.apply(inputs[order], send, receive, self.group)
        # rows from rank q come sorted by expert: regroup them by expert, rank order within
        sources = torch.arange(self.ranks, device=rows.device).repeat_interleave(
            from_ranks.sum(1))
        experts_of_rows = torch.cat([torch.arange(self.local, device=rows.device)
                                     .repeat_interleave(from_ranks[q]) for q in range(self.ranks)])
        by_expert = torch.argsort(experts_of_rows * self.ranks + sources, stable=True)
        parts = rows[by_expert].split(from_ranks.sum(0).tolist())
        outputs = torch.cat([expert(part) for expert, part in zip(self.experts, parts)])
        back = AllToAll.apply(outputs[torch.argsort(by_expert)], receive, send, self.group)
        return back[torch.argsort(order)]


def check_divisible(experts: int, ranks: int) -> None:
    """ConfigError unless K ranks can hold E experts evenly."""
    if experts < 1:
        raise ConfigError(f"--strategy expert spreads the experts of a mixture over the "
                          f"workers: give --experts E (got --experts {experts})")
    if experts % ranks:
        lower = experts - experts % ranks
        hint = f"{lower} or {lower + ranks}" if lower else f"{ranks}"
        raise ConfigError(f"--experts {experts} cannot be spread evenly over --workers "
                          f"{ranks}: each rank holds E/K experts, so use a multiple of "
                          f"{ranks}, e.g. {hint}")


def parallelize(model: nn.Module, rank: int, ranks: int, group=None) -> nn.Module:
    """``model`` with each MoE layer replaced by this rank's :class:`ExpertParallelMoE`
    (in place; the other layers are shared with ``model``)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, MixtureOfExperts):
                setattr(module, name, ExpertParallelMoE(child, rank, ranks, group))
    return model


def is_expert(name: str) -> bool:
    """True for an expert's parameter (``….mlp.experts.<i>.…``): split, not replicated."""
    return ".experts." in name


def global_name(name: str, rank: int, local: int) -> str:
    """A rank's parameter name → the unsplit model's (local expert i is expert
    rank·E/K + i)."""
    if not is_expert(name):
        return name
    head, tail = name.split(".experts.", 1)
    index, rest = tail.split(".", 1)
    return f"{head}.experts.{rank * local + int(index)}.{rest}"


def sum_replicated_gradients(model: nn.Module, group=None) -> None:
    """Sum the replicated parameters' gradients over the ranks (one flat all-reduce);
    the experts' are left alone, already complete on their rank."""
    grads = [p.grad for name, p in model.named_parameters() if not is_expert(name)]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat, group=group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def layer_bytes(rows_to: torch.Tensor, rank: int, width: int, element: int) -> int:
    """Bytes rank ``rank`` sends in one MoE layer's four row passes (forward and backward
    of dispatch and combine): 2·(S_r + R_r)·d·b, from the (K, K) matrix ``rows_to[q, p]``
    of rows rank q dispatches to rank p."""
    out = int(rows_to[rank].sum() - rows_to[rank, rank])
    into = int(rows_to[:, rank].sum() - rows_to[rank, rank])
    return 2 * (out + into) * width * element


__all__ = ["AllToAll", "ExpertParallelMoE", "bytes_sent", "check_divisible", "global_name",
           "is_expert", "layer_bytes", "layers", "parallelize", "reset_bytes_sent",
           "sum_replicated_gradients"]
