"""The planner's formulas and search (chapter 4), in one process."""

from dataclasses import replace

import pytest
import torch

from parcourse.data_parallel import zero_ledger
from parcourse.errors import ConfigError
from parcourse.model_parallel.schedules import bubble_theory
from parcourse.models import build_model
from parcourse.planner import Config, book_shape, gpt_shape, plan, profile, reason, state_bytes
from parcourse.planner.hardware import PROFILES, GIB, Hardware
from parcourse.planner.memory import memory_per_rank
from parcourse.planner.search import format_plan
from parcourse.planner.time import step_time

XL = gpt_shape(48, 1600, 25, 1024, 50257)   # GPT-2 XL's shape


@pytest.mark.parametrize("sizes", [dict(layers=2, width=32, heads=2, sequence=32),
                                   dict(layers=3, width=48, heads=4, sequence=16)])
def test_gpt_shape_counts_the_package_gpt_exactly(sizes):
    model = build_model("gpt", **sizes)
    assert gpt_shape(**sizes).parameters == sum(p.numel() for p in model.parameters())
    assert book_shape("gpt", **sizes).parameters == gpt_shape(**sizes).parameters


@pytest.mark.parametrize("name", ["simple", "complex", "gpt"])
@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_book_models_use_the_exact_ledger(name, zero):
    assert state_bytes(book_shape(name), Config(4, zero=zero)) == zero_ledger.state_bytes(
        name, zero_ledger.VARIANTS[zero], 4, "adam", torch.float32)


def test_zero3_holds_one_kth_of_the_states_and_mixed_precision_16_bytes():
    whole = sum(state_bytes(XL, Config(1, precision="bf16")).values())
    assert whole == 16 * XL.parameters                       # 2 + 2 + 12 (ZeRO paper)
    for k in (2, 8, 64):
        assert sum(state_bytes(XL, Config(k, zero=3, precision="bf16")).values()) \
            == pytest.approx(whole / k)
    fp32 = state_bytes(XL, Config(8, zero=1))
    assert fp32["optimizer state"] == pytest.approx(8 * XL.parameters / 8)
    assert fp32["parameters"] == fp32["gradients"] == 4 * XL.parameters


def test_tensor_and_pipeline_split_the_states_and_recompute_cuts_activations():
    base = memory_per_rank(XL, Config(1), 8)
    split = memory_per_rank(XL, Config(1, tensor=2, pipeline=4, microbatches=8), 8)
    assert split["parameters"] == pytest.approx(base["parameters"] / 8)
    assert memory_per_rank(XL, Config(1, recompute=True), 8)["activations"] \
        < base["activations"] / 5


def test_bubble_and_recomputation_terms():
    hw = PROFILES["h100"]
    plain = step_time(XL, Config(1, pipeline=4, microbatches=4), hw.with_devices(4), 16)
    assert plain["bubble"] == pytest.approx(plain["compute"] * bubble_theory(4, 4)
                                            / (1 - bubble_theory(4, 4)))
    assert plain["bubble"] == pytest.approx(plain["compute"] * 3 / 4)
    again = step_time(XL, Config(1, pipeline=4, microbatches=4, recompute=True),
                      hw.with_devices(4), 16)
    assert again["compute"] == pytest.approx(plain["compute"] * 4 / 3)


def test_what_does_not_fit_is_dropped_with_its_shortfall():
    hw = PROFILES["h100"]
    ranked = plan(XL, hw, 64)
    dropped = [c for c in ranked if not c.fits]
    assert dropped and all(c.shortfall == pytest.approx(c.memory["total"] - hw.memory)
                           for c in dropped)
    assert all(c.memory["total"] <= hw.memory for c in ranked if c.fits)
    ddp_fp32 = next(c for c in ranked if c.config == Config(8))
    assert not ddp_fp32.fits and ddp_fp32.shortfall > 0      # 16 B/param + activations
    assert "configurations fit" in format_plan(ranked, hw)


def _two(beta_inter: float, overlap: bool = False) -> Hardware:
    return Hardware("test", 1, 1e12, 1e12, 1e12, 1.0, 1e-6, 1e-9, 1e-6, beta_inter,
                    overlap, "test", nodes=4)


def test_ranking_follows_the_dominant_term():
    model = gpt_shape(8, 512, 8, 128, 1000)
    slow = plan(model, _two(1e-3), 64, precisions=("fp32",))   # 1 KB/s network
    assert slow[0].config.data == 1 and slow[0].config.pipeline == 4
    assert "bubble" in reason(slow) or "pipeline" in reason(slow) or "compute" in reason(slow)
    fast = plan(model, _two(1e-15), 64, precisions=("fp32",))  # free network: no bubble
    assert fast[0].config.data == 4 and fast[0].config.pipeline == 1
    assert reason(fast).startswith(f"{fast[0].config.label()} wins: compute is 100%")


def test_nothing_fits_says_by_how_much():
    with pytest.raises(ConfigError) as err:
        plan(XL, PROFILES["t4"].with_devices(1), 8)
    message = str(err.value)
    assert message.startswith("no configuration fits in 16.0 GiB per device: the smallest, "
                              "R1·T1·P1 zero0 bf16 rc M1, needs ")
    assert "GiB too many; use more devices (about " in message


@pytest.mark.parametrize("call, message", [
    (lambda: profile("dgx"), "unknown hardware profile 'dgx': choose one of this-machine, "
                             "h100, h200, a100, t4, 8xh100-ib"),
    (lambda: profile("h100", 12), "--devices 12 is not a whole number of h100 nodes of 8: "
                                  "use a multiple of 8"),
    (lambda: book_shape("resnet"), "unknown model 'resnet': choose one of simple, complex, "
                                   "gpt, or give its shape (--parameters, --layers, "
                                   "--width, ...)"),
    (lambda: plan(XL, PROFILES["h100"], 64, tensor=3),
     "--tensor 3 does not fit 8 devices of 8 per node: use a divisor of 8"),
    (lambda: plan(XL, PROFILES["h100"], 64, tensor=2),
     "--tensor 2 does not divide the 25 heads: use one of 1, 5, 25"),
    (lambda: plan(XL, PROFILES["h100"], 64, pipeline=5),
     "--pipeline 5 must divide both the 48 layers and the 8 devices"),
    (lambda: plan(XL, PROFILES["h100"], 4), "no grid of 8 devices splits --batch-size 4 over "
                                            "its replicas and micro-batches: use a multiple of 8"),
    (lambda: gpt_shape(2, 30, 4, 8), "--width 30 is not a multiple of --heads 4: each head "
                                     "needs width/heads columns"),
])
def test_bad_input_is_one_line(call, message):
    with pytest.raises(ConfigError) as err:
        call()
    assert str(err.value) == message


def test_this_machine_is_cached_and_measured_again_when_a_collective_is_missing(
        tmp_path, monkeypatch):
    import dataclasses, json
    from parcourse.planner import hardware, measured
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    tables = {name: {"2": [[8, 1e-3], [1024, 2e-3]]} for name in measured.TABLES}
    tables["version"] = measured.VERSION
    stored = replace(PROFILES["t4"], name="this-machine", collectives=tables)
    hardware.cache_file().parent.mkdir(parents=True)
    hardware.cache_file().write_text(json.dumps(dataclasses.asdict(stored)))
    assert hardware.this_machine() == stored
    assert str(hardware.cache_file()).startswith(str(tmp_path))
    fresh = replace(stored, name="measured now")
    monkeypatch.setattr(hardware, "measure_this_machine", lambda: fresh)
    older = dict(tables, version=measured.VERSION - 1)   # measured before the latest change
    hardware.cache_file().write_text(json.dumps(dataclasses.asdict(
        replace(stored, collectives=older))))
    assert hardware.this_machine() == fresh
    assert json.loads(hardware.cache_file().read_text())["name"] == "measured now"
    assert GIB == 1 << 30


def test_pipeline_states_are_the_strategies_own_cut():
    from parcourse.model_parallel.partition import partition
    from parcourse.planner.memory import stage_state_bytes
    ranges = partition(build_model("complex"), 2)
    stages = stage_state_bytes("complex", ranges)
    whole = zero_ledger.state_bytes("complex", "ddp", 1, "adam", torch.float32)
    assert {k: sum(s[k] for s in stages) for k in whole} == whole   # the stages add up
    busiest = state_bytes(book_shape("complex"), Config(1, pipeline=2, microbatches=4))
    assert busiest == max(stages, key=lambda s: sum(s.values()))


def test_measured_collectives_are_read_piecewise_linear_in_bytes():
    from parcourse.planner import measured
    table = {"all_reduce": {"2": [[8, 1e-3], [1024, 2e-3], [2048, 4e-3]]}}
    assert measured.seconds(table, "all_reduce", 2, 4) == 1e-3          # below: the smallest
    assert measured.seconds(table, "all_reduce", 2, 1024) == pytest.approx(2e-3)
    assert measured.seconds(table, "all_reduce", 2, 1536) == pytest.approx(3e-3)
    assert measured.seconds(table, "all_reduce", 2, 4096) == pytest.approx(8e-3)  # last slope
    assert measured.seconds(table, "all_reduce", 4, 1024) is None        # no such K
    assert measured.seconds(table, "all_gather", 2, 1024) is None


def test_a_profile_uses_its_measured_collectives_and_alpha_beta_elsewhere():
    from parcourse.collectives import predicted_seconds
    gpu = PROFILES["h100"]
    assert gpu.collective("all_reduce", 1 << 20, 4) == predicted_seconds(
        "ring", 1 << 20, 4, gpu.intra_alpha, gpu.intra_beta)
    assert gpu.collective("all_reduce", 1 << 20, 1) == 0.0
    table = {"all_reduce": {"4": [[8, 1e-3], [1 << 21, 3e-3]]}}
    here = replace(gpu, collectives=table)
    assert here.collective("all_reduce", 1 << 20, 4) == pytest.approx(2e-3, rel=1e-5)
    assert here.collective("reduce_scatter", 1 << 20, 4) == predicted_seconds(
        "ring", 1 << 20, 4, gpu.intra_alpha, gpu.intra_beta, "reduce_scatter")
    terms = step_time(XL, Config(4), here, 8)
    assert terms["loss"] == 1e-3                                  # the loop's 8-byte loss


def test_the_book_gpts_head_is_computed_whole_on_every_tensor_rank():
    shape = book_shape("gpt")
    assert shape.replicated_flops_per_sample == 6 * 256 * 32 * 32
    hw = PROFILES["h100"].with_devices(2)
    one, two = (step_time(shape, Config(1, tensor=t), hw, 8)["compute"] for t in (1, 2))
    share = shape.replicated_flops_per_sample / shape.flops_per_sample
    assert two == pytest.approx(one * ((1 - share) / 2 + share))
    assert XL.replicated_flops_per_sample == 0        # Megatron's vocabulary-parallel head


def test_a_group_inside_a_larger_grid_reads_its_own_measured_entry():
    table = {"all_reduce": {"2": [[8, 1e-3], [1024, 2e-3]], "2 of 4": [[8, 3e-3], [1024, 5e-3]]}}
    hw = replace(PROFILES["t4"], collectives=table)
    assert hw.collective("all_reduce", 8, 2) == pytest.approx(1e-3)
    assert hw.collective("all_reduce", 8, 2, processes=2) == pytest.approx(1e-3)
    assert hw.collective("all_reduce", 1024, 2, processes=4) == pytest.approx(5e-3)
    assert hw.collective("all_reduce", 8, 2, processes=8) == pytest.approx(1e-3)  # not measured


def test_an_fsdp_unit_costs_its_measured_work_plus_the_collectives_growth_with_bytes():
    from parcourse.planner.time import fsdp_unit_seconds
    line = [[80, 1e-3], [8080, 3e-3]]     # 1 ms at 80 B, 2 ms more per 8000 B
    table = {"all_gather gloo": {"2": line}, "all_reduce": {"2": line},
             "fsdp unit": {"2": [[80, 4e-3]]}}
    hw = replace(PROFILES["t4"], collectives=table)
    assert fsdp_unit_seconds(80, 2, 1, hw) == pytest.approx(4e-3)
    assert fsdp_unit_seconds(8080, 2, 1, hw) == pytest.approx(4e-3 + 3 * 2e-3)
    bare = replace(hw, collectives={k: v for k, v in table.items() if k != "fsdp unit"})
    assert fsdp_unit_seconds(8080, 2, 1, bare) == pytest.approx(3 * 3e-3)
