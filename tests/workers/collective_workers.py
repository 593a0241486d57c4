"""Worker functions for tests/distributed/test_collectives.py (spawned workers must import them)."""

import torch
import torch.distributed as dist

from parcourse import collectives

SIZES = [0, 1, 2, 3, 5, 7, 64, 1000, 4099]
SHAPES = [(3, 5), (2, 3, 4)]


def compare_with_dist(rank, world_size):
    """For every algorithm, size and dtype: (name, exact?, max |ours − dist.all_reduce|)."""
    report = []
    generator = torch.Generator().manual_seed(1234 + rank)
    cases = [(n,) for n in SIZES] + SHAPES
    for shape in cases:
        for dtype in (torch.float32, torch.float64):
            integers = torch.randint(-1000, 1000, shape, generator=generator).to(dtype)
            reals = torch.randn(shape, generator=generator, dtype=dtype)
            for data, exact in ((integers, True), (reals, False)):
                expected = data.clone()
                dist.all_reduce(expected)
                for algorithm in collectives.ALGORITHMS:
                    ours = data.clone()
                    returned = collectives.all_reduce(ours, algorithm)
                    same_object = returned is ours
                    error = (ours - expected).abs().max().item() if ours.numel() else 0.0
                    report.append((algorithm, shape, str(dtype), exact, error, same_object))
    return report


def non_contiguous(rank, world_size):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4) + rank
    view = base.t()  # not contiguous
    collectives.ring_all_reduce(view)
    return base


def compare_cases(rank, world_size, cases):
    """For (numel, dtype name, seed) cases: max |ours − dist.all_reduce| per algorithm."""
    errors = []
    for numel, dtype_name, seed in cases:
        dtype = getattr(torch, dtype_name)
        data = torch.randn(numel, generator=torch.Generator().manual_seed(seed + rank),
                           dtype=dtype)
        expected = data.clone()
        dist.all_reduce(expected)
        for algorithm in collectives.ALGORITHMS:
            ours = collectives.all_reduce(data.clone(), algorithm)
            errors.append((algorithm, numel, dtype_name,
                           (ours - expected).abs().max().item() if numel else 0.0))
    return errors


def mismatched(rank, world_size, kind):
    if kind == "size":
        tensor = torch.ones(10 + rank)
    else:
        tensor = torch.ones(10, dtype=torch.float64 if rank else torch.float32)
    try:
        collectives.all_reduce(tensor, "ring")
    except ValueError as err:
        return str(err)
    return "no error"


# --- reduce-scatter and all-gather (parcourse.scatter_gather) ---------------------------

# torch 2.13's names for dist.reduce_scatter_tensor / dist.all_gather_into_tensor
REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)
ALL_GATHER = getattr(dist, "all_gather_single", dist.all_gather_into_tensor)
UNIT_ROUNDOFF = {torch.float32: 2.0 ** -24, torch.float64: 2.0 ** -53, torch.bfloat16: 2.0 ** -8}


def _data(numel, dtype, seed, integral, rank):
    generator = torch.Generator().manual_seed(seed * 1009 + rank)
    if integral or not dtype.is_floating_point:
        return torch.randint(-50, 50, (numel,), generator=generator).to(dtype)
    return torch.randn(numel, generator=generator, dtype=torch.float64).to(dtype)


def _in_order(parts, order):
    """parts[j] added in the given order of ranks, one rounding per addition."""
    total = parts[order[0]].clone()
    for source in order[1:]:
        total = total + parts[source]
    return total


ORDERS = {  # the ranks whose chunk r is added, in order: see parcourse.ring and _naive_*
    "ring": lambda r, k: [(r + j) % k for j in range(1, k + 1)],
    "naive": lambda r, k: list(range(k)),
}


def _compare(ours, theirs, inputs, exact):
    """None if ``ours`` is within the bound (or equal, when ``exact``), else a description.

    Two summation orders of K numbers each lie within (K−1)·u·Σ|x| of the exact sum
    (u: the dtype's unit roundoff), so they differ by at most 2(K−1)·u·Σ|x|.
    """
    if exact:
        return None if torch.equal(ours, theirs) else "not equal"
    k = inputs.shape[0]
    bound = 2 * (k - 1) * UNIT_ROUNDOFF[ours.dtype] * inputs.double().abs().sum(0)
    excess = (ours.double() - theirs.double()).abs() - bound
    if not excess.numel() or excess.max() <= 0:
        return None
    return f"beyond the bound by {excess.max()}"


def shard_cases(rank, world_size, cases):
    """Check reduce_scatter_tensor, all_gather_into_tensor, shard_sum and gather_shards
    against torch.distributed and against sums in their documented order.

    A case is (kind, numel, dtype name, seed, integral): "tensor" runs the two collectives
    on K·numel elements, "shard" runs shard_sum/gather_shards on numel (any size).
    Returns (number of checks, failures as strings).
    """
    from parcourse import scatter_gather

    k, checks, failures = world_size, 0, []
    for case in cases:
        kind, numel, dtype_name, seed, integral = case
        dtype = getattr(torch, dtype_name)
        exact = integral or not dtype.is_floating_point or k <= 2  # any order: same sum

        def check(name, problem):
            nonlocal checks
            checks += 1
            if problem:
                failures.append(f"rank {rank}, {case}, {name}: {problem}")

        whole = _data(k * numel if kind == "tensor" else numel, dtype, seed, integral, rank)
        padded = scatter_gather.padded_numel(whole.numel(), k)
        shard = padded // k
        full = torch.zeros(padded, dtype=dtype)
        full[:whole.numel()] = whole
        everyone = torch.empty(k * padded, dtype=dtype)
        ALL_GATHER(everyone, full)
        parts = everyone.view(k, k, shard)[:, rank]  # every rank's chunk `rank`
        native = torch.empty(shard, dtype=dtype)
        REDUCE_SCATTER(native, full)
        for algorithm, order in ORDERS.items():
            ordered = _in_order(parts, order(rank, k))
            if kind == "tensor":
                before = whole.clone()
                out = scatter_gather.reduce_scatter_tensor(torch.empty(shard, dtype=dtype),
                                                           whole, algorithm)
                check(f"{algorithm} reduce-scatter leaves its input", None if torch.equal(
                    whole, before) else "input changed")
                gathered = scatter_gather.all_gather_into_tensor(
                    torch.empty(k * shard, dtype=dtype), whole[:shard], algorithm)
                expected = torch.empty(k * shard, dtype=dtype)
                ALL_GATHER(expected, whole[:shard].clone())
                check(f"{algorithm} all-gather = dist's", _compare(gathered, expected, None, True))
            else:
                out = scatter_gather.shard_sum(whole, algorithm)
                start = min(rank * shard, numel)
                check(f"{algorithm} shard length", None if out.numel() == min(
                    shard, numel - start) else f"{out.numel()} elements")
                back = scatter_gather.gather_shards(out, numel, algorithm)
                joined = torch.empty(k * shard, dtype=dtype)
                mine = torch.zeros(shard, dtype=dtype)
                mine[:out.numel()] = out
                ALL_GATHER(joined, mine)
                check(f"{algorithm} gather_shards joins the shards",
                      _compare(back, joined[:numel], None, True))
                ordered, native_part = ordered[:out.numel()], native[:out.numel()]
            check(f"{algorithm} sum in its documented order", _compare(out, ordered, None, True))
            check(f"{algorithm} sum = dist's", _compare(
                out, native if kind == "tensor" else native_part, parts[:, :out.numel()], exact))
    return checks, failures


def all_reduce_is_scatter_then_gather(rank, world_size):
    """ring_all_reduce against reduce_scatter_tensor + all_gather_into_tensor (ring), on
    float32 random data whose size K divides (then both cut the same chunks)."""
    from parcourse import scatter_gather

    equal = []
    for numel in (world_size, 6 * world_size, 1000 * world_size):
        data = torch.randn(numel, generator=torch.Generator().manual_seed(rank))
        reduced = collectives.ring_all_reduce(data.clone())
        shard = scatter_gather.reduce_scatter_tensor(torch.empty(numel // world_size), data)
        gathered = scatter_gather.all_gather_into_tensor(torch.empty(numel), shard)
        equal.append(torch.equal(reduced, gathered))
    return equal


def shard_errors(rank, world_size):
    """The messages of the one-line errors, and the in-place and non-contiguous cases."""
    from parcourse import scatter_gather

    messages = []
    for call in (lambda: scatter_gather.reduce_scatter_tensor(torch.empty(3), torch.empty(10)),
                 lambda: scatter_gather.all_gather_into_tensor(torch.empty(10), torch.empty(3)),
                 lambda: scatter_gather.reduce_scatter_tensor(torch.empty(2), torch.empty(
                     2 * world_size, dtype=torch.float64)),
                 lambda: scatter_gather.gather_shards(torch.empty(5), 10)):
        try:
            call()
            messages.append("no error")
        except ValueError as err:
            messages.append(str(err))
    data = torch.arange(4.0 * world_size) + rank
    expected = torch.empty(4)
    REDUCE_SCATTER(expected, data.clone())
    in_place = data.clone()  # output = this rank's chunk of the input, as the all-reduce does
    scatter_gather.reduce_scatter_tensor(in_place[4 * rank:4 * rank + 4], in_place)
    strided = torch.empty(4, 2)[:, 0]  # a non-contiguous output
    scatter_gather.reduce_scatter_tensor(strided, data)
    gathered = torch.empty(2 * world_size, 3).t()  # non-contiguous, 3 × 2K
    scatter_gather.all_gather_into_tensor(gathered, torch.full((3, 2), float(rank)))
    return {"messages": messages,
            "in place": torch.equal(in_place[4 * rank:4 * rank + 4], expected),
            "strided": torch.equal(strided, expected),
            "gathered": gathered.tolist(),
            "segmented": segmented(rank, world_size)}


def segmented(rank, world_size, segment_bytes=12):
    """With segments of at most 3 float32 elements, messages go whole or in up to six
    pieces, and the chunks of one tensor differ in size: every result must still equal
    dist's (integer values: exact)."""
    from parcourse import ring, scatter_gather

    saved = ring.SEGMENT_BYTES, ring.SPLIT_BYTES
    ring.SEGMENT_BYTES = ring.SPLIT_BYTES = segment_bytes
    try:
        equal = []
        for numel in (5, 6, 7, 8, 9, 10, 31):
            data = torch.randint(-9, 9, (numel,), generator=torch.Generator().manual_seed(
                rank)).float()
            expected = data.clone()
            dist.all_reduce(expected)
            equal.append(torch.equal(collectives.ring_all_reduce(data.clone()), expected))
            whole = data[:numel // world_size * world_size]
            shard, reference = torch.empty(numel // world_size), torch.empty(numel // world_size)
            REDUCE_SCATTER(reference, whole.clone())
            equal.append(torch.equal(scatter_gather.reduce_scatter_tensor(shard, whole), reference))
            joined, reference = torch.empty(whole.numel()), torch.empty(whole.numel())
            ALL_GATHER(reference, shard.clone())
            equal.append(torch.equal(scatter_gather.all_gather_into_tensor(joined, shard),
                                     reference))
        return equal
    finally:
        ring.SEGMENT_BYTES, ring.SPLIT_BYTES = saved
