"""parcourse.model_parallel.context in one process: the load-balanced assignment of the
window's 2K chunks, the blocks each rank computes, the online-softmax merge against one
softmax, ring attention on K = 1, and the one-line errors of --strategy context.

The merge is exact up to rounding: it rescales two sums of exponentials to a common
maximum, so in float64 it agrees with torch's softmax to a few units of the last place
(parcourse.compare.FLOAT64_TOLERANCE, see parcourse.compare for why that bound holds)."""

import math

import pytest
import torch

from parcourse import compare, gpt
from parcourse.errors import ConfigError
from parcourse.model_parallel import context, context_gpt
from parcourse.training import TrainConfig, validate


def test_rank_r_holds_chunks_r_and_2k_minus_1_minus_r():
    assert [context.chunks_of(r, 4) for r in range(4)] == [(0, 7), (1, 6), (2, 5), (3, 4)]
    assert context.positions(1, 2, 8).tolist() == [2, 3, 4, 5]
    assert context.positions(0, 2, 8).tolist() == [0, 1, 6, 7]
    every = torch.cat([context.positions(r, 4, 32) for r in range(4)])
    assert sorted(every.tolist()) == list(range(32))          # each position once


@pytest.mark.parametrize("ranks", [1, 2, 3, 4, 8])
def test_every_block_on_or_below_the_diagonal_once_and_the_work_balanced(ranks):
    computed = [block for r in range(ranks) for step in context.blocks_of(r, ranks)
                for block in step]
    chunks = 2 * ranks
    assert sorted(computed) == [(i, j) for i in range(chunks) for j in range(i + 1)]
    # whole blocks count 1, diagonal ones 1/2: every rank 2K of them over K steps, and
    # each step 2 (the first: 2 halves and a whole one)
    for r in range(ranks):
        steps = [sum(0.5 if i == j else 1 for i, j in step) for step in context.blocks_of(r, ranks)]
        assert steps == [2.0] * ranks


def _state(x, v):
    m = x.amax(-1, keepdim=True)
    p = torch.exp(x - m)
    return m, p.sum(-1, keepdim=True), p @ v


def test_merging_partial_softmax_results_equals_one_softmax():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 12, generator=g, dtype=torch.float64) * 8   # large scores
    v = torch.randn(3, 12, 4, generator=g, dtype=torch.float64)
    state = None
    for keys in (slice(0, 3), slice(3, 4), slice(4, 12)):               # blocks of 3, 1, 8
        state = context.merge(state, _state(x[..., keys], v[:, keys]))
    m, l, a = state
    compare.assert_close(a / l, x.softmax(-1) @ v)
    compare.assert_close(m + torch.log(l), torch.logsumexp(x, -1, keepdim=True))
    assert context.merge(None, state) is state


def test_a_diagonal_block_masks_the_later_keys():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    m, l, a = context.block_state(q, k, v, diagonal=True)
    x = (q @ k.transpose(-2, -1) / math.sqrt(3)).masked_fill(
        torch.ones(4, 4, dtype=torch.bool).triu(1), float("-inf"))
    compare.assert_close(a / l, x.softmax(-1) @ v)


def test_on_one_rank_ring_attention_is_causal_attention():
    """K = 1: no messages; chunks 0 and 1, the three blocks merged."""
    g = torch.Generator().manual_seed(2)
    qkv = torch.randn(2, 8, 3 * 8, generator=g, dtype=torch.float64, requires_grad=True)
    ours = context.ring_attend(qkv, 2, 0, 1)
    ours.square().sum().backward()
    grad, qkv.grad = qkv.grad, None
    expected = gpt.attend(qkv, 2)
    expected.square().sum().backward()
    compare.assert_close(ours, expected)
    compare.assert_close(grad, qkv.grad)


def test_the_split_gpt_on_one_rank_is_the_gpt():
    model = gpt.GPT(heads=4)
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(3))
    split = context_gpt.parallelize(gpt.GPT(heads=4), 0, 1)
    split.load_state_dict(model.state_dict())
    assert list(split.state_dict()) == list(model.state_dict())          # the same names
    assert split[-1].weight is split[0].token.weight                     # still tied
    torch.testing.assert_close(split(ids), model(ids))


def test_bytes_per_call_follow_the_ring():
    assert context.bytes_per_call(32, 4, 64, 1, 4) == {"forward": 0, "backward": 0}
    kv = 2 * 16 * 4 * 64 * 4
    assert context.bytes_per_call(32, 4, 64, 2, 4) == {"forward": kv, "backward": 3 * kv}


@pytest.mark.parametrize("options, message", [
    (dict(model="gpt", strategy="context", workers=3),
     "--strategy context cuts each window of --sequence 32 tokens into 2 × --workers 3 "
     "chunks: use a --sequence that is a multiple of 6, e.g. 30 or 36"),
    (dict(model="gpt", strategy="context", workers=2, sequence=2),
     "--strategy context cuts each window of --sequence 2 tokens into 2 × --workers 2 "
     "chunks: use a --sequence that is a multiple of 4, e.g. 4 or 8"),
    (dict(strategy="context", workers=2),
     "--strategy context trains --model gpt only (got --model simple)"),
    (dict(model="gpt", strategy="context", workers=2, precision="bf16"),
     "--precision works with --strategy single, ddp, dp-manual, dp-bucketed, zero1, zero2, "
     "zero3, fsdp or torch-zero1 (got --strategy context)"),
])
def test_context_options_are_checked_in_one_line(options, message):
    with pytest.raises(ConfigError) as refused:
        validate(TrainConfig(**options))
    assert str(refused.value) == message


def test_one_blocks_activations_are_the_formulas_and_less_than_attends():
    """K = 1 in process (tests/distributed/test_context.py: K = 2): 17·sbh + a·s·b + 4·sb
    numbers, no S×S matrix (parcourse.bench.context)."""
    from parcourse.bench import context as bench_context, transformer_memory

    sizes = dict(bench_context.SIZES)
    measured = bench_context.block_memory(0, 1, sizes)
    assert measured == bench_context.activation_bytes(64, 4, 64, 4, 1) == 1096 * 1024
    assert transformer_memory.block_memory(0, 1, sizes, "single") > measured
