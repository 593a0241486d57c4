"""The ZeRO ledger's formulas, and the engine's checks before any communication (ch. 5)."""

import pytest
import torch

from parcourse.data_parallel import zero_ledger
from parcourse.data_parallel.flat_shards import FlatGroup
from parcourse.data_parallel.zero import Zero
from parcourse.models import build_model, count_parameters


def test_ideal_bytes_per_parameter_is_the_papers_ledger():
    per = {s: sum(zero_ledger.ideal_bytes_per_parameter(s, 8).values()) for s in range(4)}
    assert per == {0: 16, 1: 4 + 4 + 1, 2: 4 + 1.5, 3: 2}
    mixed = zero_ledger.ideal_bytes_per_parameter(3, 4, mixed=True)
    assert mixed == {"parameters": 0.5, "gradients": 0.5, "optimizer state": 3.0}


@pytest.mark.parametrize("k", [2, 3, 4])
def test_the_exact_ledger_adds_only_the_padding_to_the_ideal(k):
    psi = count_parameters(build_model("complex"))
    ddp = zero_ledger.state_bytes("complex", "ddp", k)
    assert ddp["parameters"] == ddp["gradients"] == 4 * psi
    zero3 = zero_ledger.state_bytes("complex", "zero3", k)
    layers = 4                                   # one group per layer with parameters
    assert 0 <= zero3["parameters"] * k - 4 * psi < 4 * k * layers
    assert zero3["optimizer state"] == 2 * zero3["parameters"] + 4 * layers


def test_zero3_sends_one_and_a_half_times_what_ddp_sends():
    ddp = zero_ledger.bytes_sent("complex", "ddp", 2)
    last = 4 * 650 / 2                            # fc2 (64·10 + 10), gathered once
    assert zero_ledger.bytes_sent("complex", "zero3", 2) == pytest.approx(1.5 * ddp - last)
    assert zero_ledger.bytes_sent("complex", "zero1", 2) == pytest.approx(ddp)


def test_a_flat_group_pads_to_a_multiple_of_k_and_cuts_equal_shards():
    params = [torch.nn.Parameter(torch.arange(5.0)), torch.nn.Parameter(torch.ones(2, 1))]
    group = FlatGroup(["a", "b"], params, world_size=3, rank=2)
    flat = group.flatten(params)
    assert (group.numel, group.padded, group.shard_numel) == (7, 9, 3)
    assert flat.tolist() == [0, 1, 2, 3, 4, 1, 1, 0, 0]
    assert group.shard_of(flat).tolist() == [1, 0, 0]
    assert [v.shape for v in group.views(flat)] == [torch.Size([5]), torch.Size([2, 1])]


def test_an_unknown_stage_is_refused_before_anything_is_sharded():
    with pytest.raises(ValueError, match=r"^unknown ZeRO stage 4: choose one of 1, 2, 3$"):
        Zero(build_model("simple"), 4, torch.optim.SGD, rank=0, world_size=2)
    with pytest.raises(ValueError, match=r"^unknown variant 'zero4': choose one of ddp, "
                                         r"zero1, zero2, zero3$"):
        zero_ledger.state_bytes("simple", "zero4", 2)
