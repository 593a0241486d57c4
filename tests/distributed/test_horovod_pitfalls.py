"""hvd.broadcast_optimizer_state on a fresh Adam sets its step counter to 1 (chapter 5).

Without the call, Horovod on 2 processes reproduces the single-process run (in float64, to
parcourse.compare.FLOAT64_TOLERANCE, as in test_cli.py); with it, the bias correction of
every step is off by one and the parameters after 20 steps differ from the reference by
more than 1 % (measured: about 15 %).
"""

import pytest
import torch

from parcourse import compare
from parcourse.chapters import horovod_pitfalls
from parcourse.data_parallel.horovod import horovod_available
from parcourse.training import TrainConfig, train

CONFIG = TrainConfig(strategy="horovod", workers=2, optimizer="adam", lr=0.002, steps=20,
                     batch_size=32, seed=3, quiet=True, dtype="float64")


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.8, 0.99)])
def test_a_zero_gradient_step_shrinks_adams_first_update_as_predicted(betas):
    result = horovod_pitfalls.first_update_ratio(betas=betas)
    assert result["step_after_zero_step"] == 1.0
    assert result["parameter_change_of_zero_step"] == 0.0  # Adam's moments stay zero
    assert result["measured"] == pytest.approx(result["predicted"], rel=1e-5)
    assert result["predicted"] < 0.8  # 0.744 for the default betas: a quarter smaller


needs_horovod = pytest.mark.skipif(not horovod_available(), reason="Horovod not installed")


@pytest.fixture(scope="module")
def runs():
    """Horovod with and without the call (one horovod.run), and the single reference."""
    measured = horovod_pitfalls.measure_broadcast_pitfall(CONFIG)
    reference = train(TrainConfig(**{**vars(CONFIG), "strategy": "single", "workers": 1}))
    return measured, reference




@needs_horovod
def test_the_call_sets_every_step_counter_to_one_and_moves_no_parameter(runs):
    measured, _ = runs
    with_call, without = measured["with"], measured["without"]
    assert with_call["step_counters_after_broadcast"] == [1.0] * 6  # 3 layers × (W, b)
    assert with_call["parameter_change_of_broadcast"] == 0.0
    assert without["step_counters_after_broadcast"] == []


@needs_horovod
def test_without_the_call_horovod_matches_one_process(runs):
    measured, reference = runs
    state = measured["without"]["state_dict"]
    compare.assert_close(state, reference.state_dict)


@needs_horovod
def test_with_the_call_the_parameters_differ_from_one_process(runs):
    measured, reference = runs
    with_call = measured["with"]
    # The first forward pass sees the same parameters: the call moved none of them ...
    assert with_call["losses"][0] == pytest.approx(reference.losses[0], rel=1e-6)
    # ... but every update after that is scaled differently.
    assert compare.difference(with_call["state_dict"], reference.state_dict).relative > 1e-2
    assert with_call["losses"][-1] != pytest.approx(reference.losses[-1], rel=1e-4)
