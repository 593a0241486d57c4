"""Tests of parcourse.chapters.memory: per-device training state under DDP and ZeRO (chapter 8)."""

import pytest
import torch

from parcourse.chapters import memory
from parcourse.models import build_model, count_parameters

FP32 = 4


@pytest.mark.parametrize("name", ["simple", "complex"])
def test_single_device_bytes_are_16_bytes_per_parameter_plus_step_counters(name):
    n = count_parameters(build_model(name))
    tensors = len(list(build_model(name).parameters()))
    got = memory.single_device_bytes(name)
    assert got["parameters"] == n * FP32
    assert got["gradients"] == n * FP32
    # Adam: exp_avg and exp_avg_sq per parameter, plus one scalar step counter per tensor
    assert got["optimizer state"] == 2 * n * FP32 + tensors * FP32


def test_tensor_bytes_counts_element_sizes():
    assert memory.tensor_bytes([torch.zeros(3, dtype=torch.float64),
                                torch.zeros(2, 2, dtype=torch.float16)]) == 3 * 8 + 4 * 2
    assert memory.tensor_bytes([]) == 0


@pytest.mark.distributed
def test_ddp_replicates_everything_and_zero_1_shards_the_optimizer_state():
    measured = memory.measure_per_device(["simple", "complex"], 2, verbose=False)
    assert list(measured) == ["simple", "complex"]
    for name, variants in measured.items():
        single = memory.single_device_bytes(name)
        assert variants["ddp"] == [single, single]  # every device holds all of it
        zero = variants["zero-1"]
        for rank_bytes in zero:
            assert rank_bytes["parameters"] == single["parameters"]
            assert rank_bytes["gradients"] == single["gradients"]
        # the shards of the optimizer state add up to the whole, and each is smaller
        assert sum(r["optimizer state"] for r in zero) == single["optimizer state"]
        assert all(0 < r["optimizer state"] < single["optimizer state"] for r in zero)


def test_zero_bytes_formulas():
    single = {"parameters": 4, "gradients": 4, "optimizer state": 8}
    assert memory.zero_bytes(single, 4, 0) == 16
    assert memory.zero_bytes(single, 4, 1) == 4 + 4 + 8 / 4
    assert memory.zero_bytes(single, 4, 2) == 4 + 12 / 4
    assert memory.zero_bytes(single, 4, 3) == 16 / 4
    assert all(memory.zero_bytes(single, 1, s) == 16 for s in range(4))
    with pytest.raises(ValueError, match="ZeRO stage must be"):
        memory.zero_bytes(single, 2, 4)
    with pytest.raises(ValueError, match="world_size must be ≥ 1"):
        memory.zero_bytes(single, 0, 1)
