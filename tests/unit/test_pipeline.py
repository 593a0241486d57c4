"""parcourse.model_parallel.pipeline and parcourse.model_parallel.partition: schedules, timelines, and gradients equal to
the unsplit model's and to torch.distributed.pipelining's."""

import itertools

import pytest
import torch

from workers import model_parallel_workers as w
from parcourse import compare, launch
from parcourse.model_parallel import partition, pipeline
from parcourse.errors import ConfigError
from parcourse.models import build_model
from parcourse.model_parallel.pipeline import Event
from parcourse.training import TrainConfig, train


CASES = [(1, 1, 1), (2, 1, 1), (2, 4, 1), (3, 2, 1), (4, 8, 1), (2, 4, 2), (3, 6, 3),
         (4, 8, 2), (1, 3, 4)]  # (P, M, V); V > 1 for the interleaved schedule only


def cases(name):
    return [c for c in CASES if (c[2] > 1) == (name == "interleaved")
            and not (name == "interleaved" and c[1] % c[0])]


@pytest.mark.parametrize("name, stages, microbatches, chunks",
                         [(n, *c) for n in pipeline.SCHEDULES for c in cases(n)])
def test_each_schedule_runs_every_pass_once_and_after_what_it_needs(name, stages,
                                                                   microbatches, chunks):
    for stage in range(stages):
        actions = pipeline.schedule(name, stage, stages, microbatches, chunks)
        kinds = "FBW" if name in pipeline.SPLIT_BACKWARD else "FB"
        assert sorted(actions) == sorted(pipeline.Action(kind, m, c) for kind in kinds
                                         for m in range(microbatches) for c in range(chunks))
        for c in range(chunks):
            assert [a.micro for a in actions if a.kind == "F" and a.chunk == c] == list(
                range(microbatches))
            for m in range(microbatches):
                order = [actions.index(pipeline.Action(k, m, c)) for k in kinds]
                assert order == sorted(order)  # F before B before W


def test_1f1b_holds_at_most_p_minus_s_micro_batches_and_gpipe_all_of_them():
    stages, microbatches = 4, 8
    for stage in range(stages):
        assert pipeline.peak_in_flight(pipeline.schedule("gpipe", stage, stages,
                                                         microbatches)) == microbatches
        assert pipeline.peak_in_flight(pipeline.schedule("1f1b", stage, stages,
                                                         microbatches)) == stages - stage
    assert pipeline.schedule("1f1b", 0, 2, 3) == [("F", 0, 0), ("F", 1, 0), ("B", 0, 0),
                                                  ("F", 2, 0), ("B", 1, 0), ("B", 2, 0)]


def test_zb_h1_holds_p_micro_batches_on_every_stage_and_defers_s_weight_passes():
    stages, microbatches = 4, 8
    for stage in range(stages):
        actions = pipeline.schedule("zb-h1", stage, stages, microbatches)
        assert pipeline.peak_in_flight(actions) == stages
        ends = [a for a in actions if a.kind == "W"][-stage - 1:]
        assert all(actions[-stage - 1 + i] == a for i, a in enumerate(ends))
    assert pipeline.schedule("zb-h1", 1, 2, 3) == [
        ("F", 0, 0), ("B", 0, 0), ("F", 1, 0), ("B", 1, 0), ("W", 0, 0), ("F", 2, 0),
        ("B", 2, 0), ("W", 1, 0), ("W", 2, 0)]


def test_interleaved_warms_up_with_two_p_minus_s_minus_1_plus_v_minus_1_p_chunks():
    stages, microbatches, chunks = 4, 8, 2
    for stage in range(stages):
        actions = pipeline.schedule("interleaved", stage, stages, microbatches, chunks)
        warmup = 2 * (stages - stage - 1) + (chunks - 1) * stages
        assert all(a.kind == "F" for a in actions[:warmup]) and actions[warmup + 1].kind == "B"
        assert pipeline.peak_in_flight(actions) == warmup + 1
    # micro-batches 0 and 1 go through chunk 0, then chunk 1, then 2 and 3 (groups of P)
    assert pipeline.schedule("interleaved", 0, 2, 4, 2)[:4] == [
        ("F", 0, 0), ("F", 1, 0), ("F", 0, 1), ("F", 1, 1)]


@pytest.mark.parametrize("args, message", [
    (("gpipe", 0, 2, 0), "--microbatches must be at least 1 (got 0)"),
    (("zigzag", 0, 2, 2), "unknown pipeline schedule 'zigzag': choose one of gpipe, 1f1b, "
                          "interleaved, zb-h1"),
    (("interleaved", 0, 4, 2, 2), "--microbatches 2 is fewer than --stages 4: interleaved "
     "1F1B sends the micro-batches through each chunk in groups of P = 4, so it needs at "
     "least 4"),
    (("interleaved", 0, 4, 6, 2), "--microbatches 6 is not a multiple of --stages 4: "
     "interleaved 1F1B sends the micro-batches through each chunk in groups of P = 4; use "
     "4 or 8"),
    (("interleaved", 0, 2, 4, 0), "--chunks must be at least 1 (got 0)"),
    (("1f1b", 0, 2, 4, 2), "--chunks 2 needs the interleaved schedule; 1f1b runs one chunk "
                           "per stage"),
])
def test_bad_schedule_arguments_are_refused(args, message):
    with pytest.raises(ConfigError) as error:
        pipeline.schedule(*args)
    assert str(error.value) == message


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
@pytest.mark.parametrize("schedule_name", ["gpipe", "1f1b"])
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


@pytest.mark.distributed
@pytest.mark.parametrize("schedule_name", ["interleaved", "zb-h1"])
def test_interleaved_and_zb_h1_equal_torch_pipelining_and_the_unsplit_gpt(schedule_name):
    """float64: every gradient equals torch.distributed.pipelining's (interleaved 1F1B or
    its interleaved zero-bubble schedule, V = 2, on gloo) and the unsplit GPT's; the tied
    table's two stages hold one use each, which sum to the unsplit model's gradient."""
    results = launch.run(w.gpt_against_torch_pipelining, 2, args=(schedule_name,),
                         verbose=False, timeout=300)
    reference, reference_loss = w.gpt_single_device_gradients()
    ours = {k: g for r in results for k, g in r[0].items() if k != "3.weight"}
    theirs = {k: g for r in results for k, g in r[1].items() if k != "3.weight"}
    assert ours.keys() == theirs.keys() == reference.keys() - {"3.weight"}
    head = [r[0]["3.weight"] for r in results if "3.weight" in r[0]]
    their_head = [r[1]["3.weight"] for r in results if "3.weight" in r[1]]
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-12)
        expected = reference[key] - head[0] if key == "0.token.weight" else reference[key]
        torch.testing.assert_close(ours[key], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(head[0], their_head[0], rtol=0, atol=1e-12)
    (_, _, loss, their_loss, _) = results[-1]
    assert loss == pytest.approx(their_loss, rel=1e-12)
    assert loss == pytest.approx(reference_loss, rel=1e-12)
    assert [r[-1] for r in results] == ([5, 3] if schedule_name == "interleaved" else [2, 2])


@pytest.fixture(scope="module")
def recorded():
    config = dict(model="complex", steps=3, batch_size=32, workers=2, quiet=True)
    return {name: train(TrainConfig(strategy=f"pipeline-{name}", microbatches=4, **config))
            for name in ("gpipe", "1f1b")}


@pytest.mark.distributed
@pytest.mark.parametrize("name", ["gpipe", "1f1b"])
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


GPT_RUN = dict(model="gpt", steps=4, batch_size=8, seed=3, dtype="float64", optimizer="adam",
               lr=0.002, quiet=True)


@pytest.fixture(scope="module")
def gpt_runs():
    """The GPT trained in float64 by the single run, interleaved 1F1B (P = 2, V = 2: each
    chunk one layer) and ZB-H1 (P = 3), with their recorded timelines."""
    return {"single": train(TrainConfig(strategy="single", **GPT_RUN)),
            "interleaved": train(TrainConfig(strategy="pipeline-interleaved", workers=2,
                                             microbatches=4, **GPT_RUN)),
            "zb-h1": train(TrainConfig(strategy="pipeline-zb-h1", workers=3, microbatches=4,
                                       **GPT_RUN))}


def waits_for(event, stages, chunks):
    """What an event of a recorded step waits for: (stage, kind, micro, chunk) or None."""
    v, last = event.chunk * stages + event.stage, stages * chunks - 1
    if event.kind == "F":
        return None if v == 0 else ((v - 1) % stages, "F", event.micro, (v - 1) // stages)
    if event.kind == "B":
        return ((event.stage, "F", event.micro, event.chunk) if v == last
                else ((v + 1) % stages, "B", event.micro, (v + 1) // stages))
    return event.stage, "B", event.micro, event.chunk


@pytest.mark.distributed
@pytest.mark.parametrize("name, stages, chunks", [("interleaved", 2, 2), ("zb-h1", 3, 1)])
def test_interleaved_and_zb_h1_train_the_gpt_to_the_single_parameters(gpt_runs, name, stages,
                                                                      chunks):
    run = gpt_runs[name]
    assert list(run.state_dict) == list(gpt_runs["single"].state_dict)
    difference = compare.assert_close(run.state_dict, gpt_runs["single"].state_dict)
    print(f"gpt {name}: {difference}")
    kinds = "FBW" if name == "zb-h1" else "FB"
    assert len(run.timeline) == 4 * stages * chunks * len(kinds) * 4  # steps × … × M
    at = {(e.step, e.stage, e.kind, e.micro, e.chunk): e for e in run.timeline}
    for e in run.timeline:  # every pass starts after what it needs has ended
        needed = waits_for(e, stages, chunks)
        if needed is not None:
            assert e.start >= at[(e.step, *needed)].end
    assert run.peak_in_flight == ([5, 3] if name == "interleaved" else [3, 3, 3])
