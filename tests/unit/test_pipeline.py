"""parcourse.model_parallel.pipeline and parcourse.model_parallel.partition: schedules, timelines, and gradients equal to
the unsplit model's and to torch.distributed.pipelining's."""

import itertools

import pytest
import torch

from workers import model_parallel_workers as w
from parcourse import launch
from parcourse.model_parallel import partition, pipeline
from parcourse.errors import ConfigError
from parcourse.models import build_model
from parcourse.model_parallel.pipeline import Event
from parcourse.training import TrainConfig, train


@pytest.mark.parametrize("name", pipeline.SCHEDULES)
@pytest.mark.parametrize("stages, microbatches", [(1, 1), (2, 1), (2, 4), (3, 2), (4, 8)])
def test_each_schedule_runs_every_forward_before_its_backward(name, stages, microbatches):
    for stage in range(stages):
        actions = pipeline.schedule(name, stage, stages, microbatches)
        assert sorted(actions) == sorted(
            [(kind, m) for kind in "FB" for m in range(microbatches)])
        assert [m for kind, m in actions if kind == "F"] == list(range(microbatches))
        assert [m for kind, m in actions if kind == "B"] == list(range(microbatches))
        for m in range(microbatches):
            assert actions.index(("F", m)) < actions.index(("B", m))


def test_1f1b_holds_at_most_p_minus_s_micro_batches_and_gpipe_all_of_them():
    stages, microbatches = 4, 8
    for stage in range(stages):
        assert pipeline.peak_in_flight(pipeline.schedule("gpipe", stage, stages,
                                                         microbatches)) == microbatches
        assert pipeline.peak_in_flight(pipeline.schedule("1f1b", stage, stages,
                                                         microbatches)) == stages - stage
    assert pipeline.schedule("1f1b", 0, 2, 3) == [("F", 0), ("F", 1), ("B", 0), ("F", 2),
                                                  ("B", 1), ("B", 2)]


def test_bad_schedule_arguments_are_refused():
    with pytest.raises(ConfigError, match=r"^--microbatches must be at least 1 \(got 0\)$"):
        pipeline.schedule("gpipe", 0, 2, 0)
    with pytest.raises(ConfigError, match="unknown pipeline schedule 'zigzag': choose one "
                                          "of gpipe, 1f1b"):
        pipeline.schedule("zigzag", 0, 2, 2)


def test_bubble_of_an_ideal_timeline_equals_the_formula():
    """Equal stage times, free communication: GPipe's timeline has (P−1)/(M+P−1) idle."""
    stages, microbatches, f, b = 3, 4, 1.0, 2.0
    events = []
    for s in range(stages):
        for m in range(microbatches):
            events.append(Event(0, s, "F", m, (s + m) * f, (s + m + 1) * f))
    forward_end = (stages + microbatches - 1) * f
    for s in range(stages):
        for m in range(microbatches):
            start = forward_end + (stages - 1 - s + m) * b
            events.append(Event(0, s, "B", m, start, start + b))
    assert pipeline.bubble_measured(events, stages) == pytest.approx(
        pipeline.bubble_theory(stages, microbatches))
    assert pipeline.bubble_theory(2, 1) == 0.5


def test_balanced_boundaries_is_optimal_by_brute_force():
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):
        layers = int(torch.randint(2, 8, (1,), generator=generator))
        stages = int(torch.randint(1, layers + 1, (1,), generator=generator))
        costs = torch.randint(0, 10, (layers,), generator=generator).tolist()
        best = min(max(sum(costs[a:b]) for a, b in zip((0, *cut), (*cut, layers)))
                   for cut in itertools.combinations(range(1, layers), stages - 1))
        bounds = partition.balanced_boundaries(costs, stages)
        edges = [0, *bounds, layers]
        assert len(bounds) == stages - 1
        assert max(sum(costs[a:b]) for a, b in zip(edges[:-1], edges[1:])) == best


def test_partition_by_parameters_cuts_the_book_models_between_trainable_layers():
    simple, complex_ = build_model("simple"), build_model("complex")
    assert partition.partition(simple, 2) == [(0, 3), (3, 6)]
    assert partition.partition(simple, 3) == [(0, 3), (3, 5), (5, 6)]
    assert partition.partition(complex_, 2) == [(0, 7), (7, 10)]   # convolutions | dense
    assert partition.partition(complex_, 2, "3") == [(0, 3), (3, 10)]
    example = torch.zeros(4, 1, 28, 28)
    by_time = partition.partition(complex_, 2, "time", example)
    assert len(by_time) == 2 and by_time[0][0] == 0 and by_time[-1][1] == 10
    assert partition.boundary_shapes(complex_, [(0, 3), (3, 10)], example) == [
        (4, 1, 28, 28), (4, 32, 13, 13), (4, 10)]


@pytest.mark.parametrize("text, stages, message", [
    ("3,2", 3, "--partition '3,2': cut points must increase strictly and lie between 1 and 5 "
               "(the model has 6 layers)"),
    ("6", 2, "--partition '6': cut points must increase strictly and lie between 1 and 5 "
             "(the model has 6 layers)"),
    ("2,4", 2, "--partition '2,4' gives 3 stages but --stages is 2: give 1 cut point(s)"),
    ("middle", 2, "--partition 'middle' is not parameters or time or a comma-separated list "
                  "of layer indices such as 3 or 2,5"),
])
def test_bad_cut_points_are_refused(text, stages, message):
    with pytest.raises(ConfigError) as error:
        partition.partition(build_model("simple"), stages, text)
    assert str(error.value) == message


def test_more_stages_than_layers_is_refused():
    with pytest.raises(ConfigError) as error:
        partition.partition(build_model("simple"), 7)
    assert str(error.value) == ("--stages 7 is more than the 6 layers of this SimpleModel: "
                                "each stage needs at least one layer, so use --stages 6 or "
                                "fewer")


@pytest.mark.distributed
@pytest.mark.parametrize("schedule_name", pipeline.SCHEDULES)
@pytest.mark.parametrize("stages", [2, 3])
def test_gradients_equal_torch_pipelining_and_the_unsplit_model(schedule_name, stages):
    results = launch.run(w.ours_against_torch_pipelining, stages, args=(schedule_name,),
                         verbose=False, timeout=300)
    reference, reference_loss = w.single_device_gradients()
    ranges = partition.partition(build_model("complex"), stages)
    for (start, _), (ours, theirs, loss, their_loss, _) in zip(ranges, results):
        assert ours.keys() == theirs.keys() and ours
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(ours[key], reference[key], rtol=1e-5, atol=1e-7)
    *_, (_, _, loss, their_loss, _) = results
    assert loss == pytest.approx(their_loss, rel=1e-6)
    assert loss == pytest.approx(reference_loss, rel=1e-6)
    peaks = [r[-1] for r in results]
    expected = ([w.MICRO] * stages if schedule_name == "gpipe"
                else [min(stages - s, w.MICRO) for s in range(stages)])
    assert peaks == expected


@pytest.fixture(scope="module")
def recorded():
    config = dict(model="complex", steps=3, batch_size=32, workers=2, quiet=True)
    return {name: train(TrainConfig(strategy=f"pipeline-{name}", microbatches=4, **config))
            for name in pipeline.SCHEDULES}


@pytest.mark.distributed
@pytest.mark.parametrize("name", pipeline.SCHEDULES)
def test_the_recorded_timeline_follows_the_data_dependencies(recorded, name):
    result = recorded[name]
    events = result.timeline
    assert len(events) == 3 * 2 * 2 * 4  # steps × stages × (F, B) × micro-batches
    at = {(e.step, e.stage, e.kind, e.micro): e for e in events}
    for step, m in itertools.product(range(3), range(4)):
        # activations flow forward, their gradients backward, one stage after the other
        assert at[step, 1, "F", m].start >= at[step, 0, "F", m].end
        assert at[step, 0, "B", m].start >= at[step, 1, "B", m].end
        assert at[step, 1, "B", m].start >= at[step, 1, "F", m].end
    for e in events:
        assert 0 <= e.start <= e.end <= result.seconds
    assert 0 < pipeline.mean_bubble(events, 2) < 1


def test_1f1b_keeps_fewer_activations_alive_than_gpipe(recorded):
    assert recorded["gpipe"].peak_in_flight == [4, 4]
    assert recorded["1f1b"].peak_in_flight == [2, 1]
    assert recorded["gpipe"].stage_layers == [(0, 7), (7, 10)]
