"""The GPT's tensor split and the activation-memory formulas, in one process: how each
tensor is cut and joined, the one-line errors, and one block's saved bytes, measured,
against this implementation's count and the paper's (Korthikanti et al., 2022)."""

import pytest
import torch

from parcourse.bench import transformer_memory as tm
from parcourse.errors import ConfigError
from parcourse.model_parallel import tensor_gpt
from parcourse.models import build_model
from parcourse.training import TrainConfig, validate


def test_qkv_rows_are_cut_by_heads_and_joined_back():
    d, ranks = 8, 2                       # H = 4 heads of 2: rank 1 holds heads 2 and 3
    whole = torch.arange(3 * d * 3.0).view(3 * d, 3)
    parts = [tensor_gpt.QKV.cut(whole, r, ranks) for r in range(ranks)]
    assert parts[1].shape == (3 * d // ranks, 3)
    rows = [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23]   # its rows of W_q, W_k and W_v
    assert torch.equal(parts[1], whole[rows])
    assert torch.equal(tensor_gpt.QKV.join(parts), whole)
    bias = torch.arange(3.0 * d)
    assert torch.equal(tensor_gpt.QKV.cut(bias, 1, ranks), bias[rows])


@pytest.mark.parametrize("split, shape", [(tensor_gpt.COLUMN, (8, 6)), (tensor_gpt.ROW, (6, 8))])
def test_column_and_row_cuts_are_contiguous_slices(split, shape):
    whole = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    parts = [split.cut(whole, r, 4) for r in range(4)]
    assert torch.equal(torch.cat(parts, split.dim), whole)
    assert torch.equal(split.join(parts), whole)


@pytest.mark.parametrize("options, message", [
    (dict(width=9, heads=3, workers=2),
     "--strategy tensor splits the GPT's --width 9 over --workers 2: use a number of workers "
     "that divides 9"),
    (dict(width=30, heads=3, workers=2),
     "--strategy tensor gives each worker whole heads, but --heads 3 cannot be split over "
     "--workers 2: use a number of workers that divides 3"),
    (dict(heads=4, sequence=30, workers=4, sequence_parallel=True),
     "--sequence-parallel splits each window of --sequence 30 tokens over --workers 4: use "
     "a --sequence that is a multiple of 4, e.g. 28 or 32"),
])
def test_splits_that_do_not_divide_are_one_line_errors(options, message):
    with pytest.raises(ConfigError) as refused:
        validate(TrainConfig(model="gpt", strategy="tensor", **options))
    assert str(refused.value) == message


@pytest.mark.parametrize("options, message", [
    (dict(strategy="ddp", model="gpt", workers=2, sequence_parallel=True),
     "--sequence-parallel works with --strategy dp-pp-tp or tensor (got --strategy ddp)"),
    (dict(strategy="tensor", workers=2, sequence_parallel=True),
     "--sequence-parallel splits a transformer's windows: it works with --model gpt (got "
     "--model simple)"),
])
def test_sequence_parallel_is_an_option_of_tensor_for_the_gpt(options, message):
    with pytest.raises(ConfigError) as refused:
        validate(TrainConfig(**options))
    assert str(refused.value) == message
    validate(TrainConfig(strategy="tensor", model="gpt", heads=4, workers=4,
                         sequence_parallel=True))


def test_the_paper_formulas_in_16_bits():
    s, b, h, a, t = 2048, 4, 4096, 32, 8
    sbh = s * b * h
    assert tm.paper_bytes(s, b, h, a) == sbh * (34 + 5 * a * s / h)
    assert tm.paper_bytes(s, b, h, a, t, "tensor") == pytest.approx(
        sbh * (10 + 24 / t + 5 * a * s / (h * t)))
    assert tm.paper_bytes(s, b, h, a, t, "sequence") == pytest.approx(
        sbh / t * (34 + 5 * a * s / h))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_blocks_saved_bytes_are_this_implementations_count(dtype):
    """Measured (live storages after forward) = listed saved tensors = the formula
    16·sbh + a·s²·b + 4·sb numbers and the s² mask bytes, and the paper's count (with
    dropout) exceeds it by exactly its masks and dropout output: 2·sbh + a·s²·b·(e + 1)."""
    sizes = dict(tm.SIZES, dtype=dtype)
    s, b, h, a = sizes["sequence"], sizes["batch"], sizes["width"], sizes["heads"]
    e = torch.empty(0, dtype=getattr(torch, dtype)).element_size()
    mine = tm.activation_bytes(s, b, h, a, element=e)
    assert tm.block_memory(0, 1, sizes, "single") == mine
    block = build_model("gpt", seed=0, dtype=getattr(torch, dtype), width=h, heads=a,
                        sequence=s)[1]
    x = torch.randn(b, s, h, dtype=getattr(torch, dtype), requires_grad=True)
    saved = tm.saved_tensors(block(x), exclude=list(block.parameters()))
    assert sum(row["bytes"] for row in saved) == mine
    assert tm.paper_bytes(s, b, h, a, element=e) - mine == (
        2 * s * b * h + a * s * s * b * (e + 1) - 4 * s * b * e - s * s)
