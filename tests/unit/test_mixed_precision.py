"""Mixed precision's pieces in one process: loss scaling and what it saves (chapter 5)."""

import math

import pytest
import torch

from parcourse import mixed_precision
from parcourse.mixed_precision import LossScaler, underflow_fraction


def test_an_overflow_skips_the_step_and_halves_the_scale():
    scaler = LossScaler("fp16", initial=1024.0, growth_interval=3)
    grads = [torch.tensor([2048.0, math.inf])]
    assert not scaler.unscale(grads)
    scaler.update(False)
    assert (scaler.scale, scaler.skipped) == (512.0, 1)


def test_good_steps_unscale_and_double_the_scale_after_the_interval():
    scaler = LossScaler("fp16", initial=4.0, growth_interval=2)
    for expected in (4.0, 4.0):
        grads = [torch.tensor([8.0, -4.0])]
        assert scaler.unscale(grads)
        assert grads[0].tolist() == [8.0 / expected, -4.0 / expected]
        scaler.update(True)
    assert scaler.scale == 8.0


def test_an_overflow_on_another_worker_is_agreed_on():
    """``agree`` stands for the all-reduce: another worker's flag arrives in the sum."""
    scaler = LossScaler("fp16", initial=2.0)
    assert not scaler.unscale([torch.ones(3)], agree=lambda flag: flag.add_(1.0))


@pytest.mark.parametrize("precision", ["full", "bf16"])
def test_only_fp16_scales(precision):
    scaler = LossScaler(precision)
    grads = [torch.tensor([math.inf])]
    assert (scaler.scale, scaler.unscale(grads), grads[0].item()) == (1.0, True, math.inf)


def test_loss_scaling_saves_the_gradients_fp16_would_flush_to_zero():
    grads = [torch.tensor([1e-9, 2e-8, 1e-3, 0.0])]   # two below half fp16's smallest, 6e-8
    assert underflow_fraction(grads) == pytest.approx(2 / 3)
    assert underflow_fraction(grads, scale=2.0 ** 16) == 0.0
    assert underflow_fraction(grads, dtype=torch.bfloat16) == 0.0   # bf16: float32's range


def test_autocast_runs_products_in_16_bits_and_full_precision_does_nothing():
    layer = torch.nn.Linear(4, 3)
    x = torch.rand(2, 4)
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16),
                             ("full", torch.float32)):
        with mixed_precision.autocast(precision, x.device):
            assert layer(x).dtype == dtype
    assert mixed_precision.unsupported("bf16", torch.device("cpu")) is None


def test_bf16_on_a_gpu_without_bf16_arithmetic_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert mixed_precision.unsupported("bf16", torch.device("cuda", 0)) == (
        "--precision bf16 needs a GPU with bfloat16 arithmetic (compute capability 8.0 or "
        "later); Tesla T4 has 7.5: use --precision fp16")
    assert mixed_precision.unsupported("fp16", torch.device("cuda", 0)) is None
