"""parcourse.model_flops: 6N + 12·L·d·s against the matrix products the GPT actually runs
(torch's FLOP counter), against Narayanan et al.'s per-batch formula, and MFU."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from parcourse import model_flops
from parcourse.bench import gpt as bench_gpt
from parcourse.models import build_model
from parcourse.training import TrainConfig, TrainResult
from parcourse.training.loop import mean_loss


def test_the_default_gpt_counts_its_parameters_without_the_position_table():
    model = build_model("gpt")
    assert model_flops.model_flop_parameters(model) == 34_688 - 32 * 32 == 33_664
    assert model_flops.gpt_flops_per_token() == 6 * 33_664 + 12 * 2 * 32 * 32 == 226_560


@pytest.mark.parametrize("layers, width, heads, sequence", [(2, 32, 2, 32), (3, 48, 4, 16)])
def test_the_formula_is_the_measured_matrix_products_plus_the_small_parameters(
        layers, width, heads, sequence):
    """torch's counter sees the products only (2·m·n·k each, forward and backward); the
    formula counts every parameter 6 times, so it exceeds the products by 6 × the biases
    and LayerNorm parameters, which is what overcount() gives as a share."""
    model = build_model("gpt", seed=0, layers=layers, width=width, heads=heads,
                        sequence=sequence)
    ids = torch.randint(0, 256, (3, sequence + 1), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        mean_loss(model(ids[:, :-1]), ids[:, 1:]).backward()
    tokens = 3 * sequence
    per_token = model_flops.gpt_flops_per_token(layers, width, heads, sequence)
    parameters = model_flops.model_flop_parameters(model)
    small = model_flops.overcount(layers, width) * parameters
    assert counter.get_total_flops() == tokens * (per_token - 6 * small)


def test_narayanan_et_al_per_batch_formula_is_the_same_count():
    """72·B·s·L·d²·(1 + s/(6d) + V/(12·L·d)) per batch of B windows = B·s × (6·(12·L·d² +
    V·d) + 12·L·d·s): the formula without the biases and LayerNorms."""
    B, s, L, d, V = 8, 32, 2, 32, 256
    narayanan = 72 * B * s * L * d ** 2 * (1 + s / (6 * d) + V / (12 * L * d))
    assert narayanan == pytest.approx(B * s * model_flops.flops_per_token(
        12 * L * d * d + V * d, L, d, s), rel=1e-12)


def test_mfu_is_achieved_over_peak():
    assert model_flops.mfu(1000, 2e6, 4e9) == 0.5
    with pytest.raises(ValueError, match="the peak must be a positive number of FLOP/s"):
        model_flops.mfu(1000, 2e6, 0)
    with pytest.raises(ValueError, match="layers must be at least 1"):
        model_flops.flops_per_token(10, 0, 32, 32)


def test_a_gpt_summary_names_tokens_per_second_mfu_and_the_peak(monkeypatch):
    bench_gpt.device_peak.cache_clear()
    monkeypatch.setattr(bench_gpt.roofline, "peak_matmul_flops", lambda n, dtype, repeats: 1e10)
    config = TrainConfig(model="gpt", steps=10, batch_size=16)
    result = TrainResult(config, {}, [1.0] * 10, seconds=2.0)
    assert result.tokens_per_second == 10 * 16 * 32 / 2.0
    line = bench_gpt.summary(result)
    bench_gpt.device_peak.cache_clear()
    if not torch.cuda.is_available():
        assert line == (", 2,560 tokens/s, MFU 5.80% of 10.0 GFLOP/s (float32 matmul peak "
                        "measured on this CPU)")
