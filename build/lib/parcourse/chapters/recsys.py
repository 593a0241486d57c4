"""Recommender systems: an embedding table sharded by rows over K workers (chapter 6).

A recommender's largest tensor is usually its embedding table, one row of ``d`` numbers
per user or item id — often more rows than one device holds. *Row-wise sharding* (model
parallelism) gives worker ``k`` the contiguous rows ``[start_k, end_k)`` (the shards of
:func:`parcourse.data.shard_bounds`), so each worker stores ``1/K`` of the table.

A lookup of a batch of ids, one batch per worker, takes two ``all_to_all`` exchanges:

1. each worker sorts its ids by owner and sends every owner the ids it owns
   (``all_to_all_single`` with uneven split sizes, after one exchange of the counts);
2. each owner looks the rows up in its shard and sends them back in the same order;
   the requester puts them back into the order of its ids.

The second exchange is a :class:`torch.autograd.Function` (:class:`AllToAll`): its
backward is the same exchange with the splits swapped, so the gradient of every looked
up row travels back to its owner, and ``backward`` gives each owner the gradient of its
shard. The result is the unsharded ``nn.Embedding`` lookup, row for row.

Communication per worker and lookup, for a batch of ``b`` ids spread uniformly over the
owners: ``b·(K−1)/K`` ids of 8 bytes out, ``b·(K−1)/K`` rows of ``d`` floats back (and
as many gradient rows in backward), plus ``K`` counts. :class:`ShardedEmbedding` counts
what it actually hands to the collectives in ``traffic``.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import launch
from ..data import shard_bounds

CHUNK_ROWS = 1024  # rows drawn from one random stream, so any shard can be built alone


def init_rows(start: int, end: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Rows ``[start, end)`` of the table that ``seed`` defines, without building the rest.

    Row block ``c`` (rows ``c·CHUNK_ROWS …``) comes from its own generator seeded with
    ``(seed, c)``, so a worker creates only its shard and every shard agrees with
    ``init_rows(0, num_rows, …)``.
    """
    if not 0 <= start <= end:
        raise ValueError(f"need 0 ≤ start ≤ end, got {start}, {end}")
    blocks = []
    for c in range(start // CHUNK_ROWS, (end + CHUNK_ROWS - 1) // CHUNK_ROWS):
        g = torch.Generator().manual_seed(seed * 1_000_003 + c)
        block = torch.randn(CHUNK_ROWS, dim, generator=g)
        lo, hi = max(start, c * CHUNK_ROWS), min(end, (c + 1) * CHUNK_ROWS)
        blocks.append(block[lo - c * CHUNK_ROWS:hi - c * CHUNK_ROWS])
    return torch.cat(blocks) if blocks else torch.empty(0, dim)


def owners(ids: torch.Tensor, num_rows: int, world_size: int) -> torch.Tensor:
    """The rank that owns each id under row-wise sharding."""
    ends = torch.tensor([shard_bounds(num_rows, k, world_size)[1] for k in range(world_size)])
    return torch.searchsorted(ends, ids, right=True)


class AllToAll(torch.autograd.Function):
    """Forward: ``all_to_all_single`` of rows with ``(out_splits, in_splits)``.
    Backward: the same collective on the gradient with the splits swapped."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, out_splits: list[int], in_splits: list[int]):
        ctx.splits = (out_splits, in_splits)
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out_splits, in_splits = ctx.splits
        back = grad.new_empty((sum(in_splits), *grad.shape[1:]))
        dist.all_to_all_single(back, grad.contiguous(), in_splits, out_splits)
        return back, None, None


class ShardedEmbedding(nn.Module):
    """This worker's rows of a ``num_rows × dim`` table; ``forward(ids)`` looks up any id."""

    def __init__(self, num_rows: int, dim: int, seed: int = 0):
        super().__init__()
        self.num_rows, self.dim = num_rows, dim
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.start, self.end = shard_bounds(num_rows, self.rank, self.world_size)
        self.weight = nn.Parameter(init_rows(self.start, self.end, dim, seed))
        self.traffic = {"ids": 0, "rows": 0, "counts": 0}  # bytes sent to other workers

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 1 or ids.dtype != torch.int64:
            raise ValueError(f"ids must be a 1-D int64 tensor, got {ids.dim()}-D {ids.dtype}")
        if len(ids) and (ids.min() < 0 or ids.max() >= self.num_rows):
            raise ValueError(f"ids must lie in [0, {self.num_rows}), got values from "
                             f"{ids.min().item()} to {ids.max().item()}")
        owner = owners(ids, self.num_rows, self.world_size)
        order = torch.argsort(owner, stable=True)
        send = torch.bincount(owner, minlength=self.world_size)
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send)                       # how many ids each way
        send_splits, recv_splits = send.tolist(), recv.tolist()
        wanted = ids.new_empty(sum(recv_splits))
        dist.all_to_all_single(wanted, ids[order], recv_splits, send_splits)   # ids → owners
        rows = F.embedding(wanted - self.start, self.weight)
        back = AllToAll.apply(rows, send_splits, recv_splits)                 # rows → askers
        remote = [k for k in range(self.world_size) if k != self.rank]
        self.traffic["counts"] += len(remote) * send.element_size()
        self.traffic["ids"] += sum(send_splits[k] for k in remote) * ids.element_size()
        self.traffic["rows"] += (sum(recv_splits[k] for k in remote) * self.dim
                                 * rows.element_size())
        return back[torch.argsort(order)]


def expected_bytes(batch: int, dim: int, world_size: int, element_size: int = 4) -> dict:
    """Expected bytes one worker sends per lookup when ids are uniform over the owners."""
    remote = batch * (world_size - 1) / world_size
    return {"ids": remote * 8, "rows": remote * dim * element_size,
            "counts": (world_size - 1) * 8}


def lookup_worker(rank: int, world_size: int, num_rows: int, dim: int,
                  ids_per_rank: list[torch.Tensor], seed: int = 0, repeats: int = 0) -> dict:
    """Look up this rank's ids in the sharded table; backward ``L = Σ rows² / 2``.

    Returns the rows, this rank's shard bounds and the gradient of its shard, the bytes
    sent by one lookup with its backward, and — with ``repeats > 0`` — the median time
    of a forward lookup (after a barrier, so all workers start together).
    """
    table = ShardedEmbedding(num_rows, dim, seed)
    ids = ids_per_rank[rank]
    rows = table(ids)
    (rows.square().sum() / 2).backward()
    traffic = dict(table.traffic)
    traffic["row gradients"] = _remote_requests(table, ids) * dim * rows.element_size()
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            dist.barrier()
            start = time.perf_counter()
            table(ids)
            times.append(time.perf_counter() - start)
    return {"rows": rows.detach(), "shard": (table.start, table.end),
            "grad": table.weight.grad.clone(), "traffic": traffic,
            "seconds": sorted(times)[len(times) // 2] if times else None,
            "shard bytes": table.weight.numel() * table.weight.element_size()}


def _remote_requests(table: ShardedEmbedding, ids: torch.Tensor) -> int:
    """How many of this worker's ids are owned by another worker (their row gradients go back)."""
    return int((owners(ids, table.num_rows, table.world_size) != table.rank).sum())


def sharded_lookup(num_rows: int, dim: int, ids_per_rank: list[torch.Tensor], seed: int = 0,
                   repeats: int = 0, verbose: bool = True) -> list[dict]:
    """Run :func:`lookup_worker` on ``len(ids_per_rank)`` CPU workers; reports by rank."""
    if num_rows < len(ids_per_rank):
        raise ValueError(f"a table of {num_rows} rows cannot give each of "
                         f"{len(ids_per_rank)} workers a row")
    return launch.run(lookup_worker, len(ids_per_rank),
                      args=(num_rows, dim, [i.cpu() for i in ids_per_rank], seed, repeats),
                      backend="gloo", verbose=verbose)


def reference_lookup(num_rows: int, dim: int, ids_per_rank: list[torch.Tensor],
                     seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One process, the whole table as ``nn.Embedding``: the rows for each rank's ids and
    the table's gradient for the same loss summed over the ranks."""
    table = nn.Embedding(num_rows, dim)
    with torch.no_grad():
        table.weight.copy_(init_rows(0, num_rows, dim, seed))
    rows = [table(ids) for ids in ids_per_rank]
    sum(r.square().sum() / 2 for r in rows).backward()
    return [r.detach() for r in rows], table.weight.grad
