"""parcourse.model_parallel.timeline: the ideal timeline of each schedule."""

import pytest

from parcourse.model_parallel import pipeline, timeline as pipeline_timeline


@pytest.mark.parametrize("name", ["gpipe", "1f1b"])
@pytest.mark.parametrize("stages, microbatches", [(2, 1), (2, 4), (3, 5), (4, 8)])
def test_the_ideal_bubble_is_the_formula(name, stages, microbatches):
    events = pipeline_timeline.simulate(name, stages, microbatches, forward=1.0, backward=2.0)
    assert len(events) == 2 * stages * microbatches
    assert pipeline.bubble_measured(events, stages) == pytest.approx(
        pipeline.bubble_theory(stages, microbatches))
    span = max(e.end for e in events)
    assert span == pytest.approx((microbatches + stages - 1) * 3.0)


@pytest.mark.parametrize("stages, microbatches, chunks", [(2, 4, 2), (4, 8, 2), (4, 8, 3),
                                                         (2, 2, 2), (3, 6, 2), (2, 8, 4)])
def test_interleaving_divides_the_fill_and_drain_by_v(stages, microbatches, chunks):
    """(P − 1)/(V·M + P − 1): the bubble's time is (P − 1)(t_F + t_B)/V."""
    events = pipeline_timeline.simulate("interleaved", stages, microbatches, chunks=chunks)
    assert len(events) == 2 * stages * microbatches * chunks
    assert pipeline.bubble_measured(events, stages) == pytest.approx(
        pipeline.bubble_theory(stages, microbatches, chunks))
    span = max(e.end for e in events)
    assert span == pytest.approx(microbatches * 3.0 + (stages - 1) * 3.0 / chunks)


@pytest.mark.parametrize("stages, microbatches", [(2, 2), (2, 4), (3, 6), (4, 4), (4, 8)])
def test_zb_h1_leaves_a_third_of_the_1f1b_bubble(stages, microbatches):
    """t_F = t_B = t_W = 1: 1F1B idles (P − 1)·3 per stage, ZB-H1 (P − 1)·1 (M ≥ P)."""
    zb = pipeline_timeline.simulate("zb-h1", stages, microbatches, forward=1.0, backward=2.0,
                                    weight=1.0)
    one_f_one_b = pipeline_timeline.simulate("1f1b", stages, microbatches, forward=1.0,
                                             backward=2.0)
    assert max(e.end for e in zb) == pytest.approx(3 * microbatches + (stages - 1))
    assert max(e.end for e in one_f_one_b) == pytest.approx(3 * (microbatches + stages - 1))
    assert pipeline.bubble_measured(zb, stages) == pytest.approx(
        (stages - 1) / (3 * microbatches + stages - 1))


def test_a_replay_of_recorded_durations_takes_each_pass_as_recorded():
    durations = {(0, "F", 0, 0): 5.0}
    events = pipeline_timeline.simulate("gpipe", 2, 2, durations=durations)
    at = {(e.stage, e.kind, e.micro): e for e in events}
    assert at[0, "F", 0].end == 5.0 and at[1, "F", 0].start == 5.0
    assert at[0, "F", 1].end - at[0, "F", 1].start == 1.0


def test_a_message_occupies_its_sender_for_its_send_time():
    events = pipeline_timeline.simulate("gpipe", 2, 2, send=0.5)
    at = {(e.stage, e.kind, e.micro): e for e in events}
    assert at[0, "F", 1].start == at[0, "F", 0].end + 0.5   # stage 0 sent F_0 first
    assert at[1, "F", 0].start == at[0, "F", 0].end + 0.5   # F_0 arrives once sent
    assert at[1, "B", 1].start == at[1, "B", 0].end + 0.5


def test_messages_lengthen_the_step_and_widen_the_bubble():
    quick = pipeline_timeline.simulate("1f1b", 3, 4)
    slow = pipeline_timeline.simulate("1f1b", 3, 4, link=0.5)
    assert max(e.end for e in slow) > max(e.end for e in quick)
    assert pipeline.bubble_measured(slow, 3) > pipeline.bubble_measured(quick, 3)


def test_gantt_series_draws_one_segment_per_pass():
    events = pipeline_timeline.simulate("gpipe", 2, 3)
    series = pipeline_timeline.gantt_series(events, 2)
    assert set(series) == {"forward", "backward"}
    zb = pipeline_timeline.gantt_series(pipeline_timeline.simulate("zb-h1", 2, 3), 2)
    assert set(zb) == {"forward", "backward", "weight gradient"}
    assert len(series["forward"].x) == 3 * 2 * 3  # (start, end, gap) per forward pass


def test_an_unequal_stage_sets_the_pace():
    """Stage 1 twice as slow as stage 0: the step takes M passes of the slow stage plus the
    fill and drain, and the bubble exceeds the formula's."""
    events = pipeline_timeline.simulate("gpipe", 2, 4, forward=[1.0, 2.0], backward=[2.0, 4.0])
    assert max(e.end for e in events) == pytest.approx(1.0 + 4 * 2.0 + 4 * 4.0 + 2.0)
    assert pipeline.bubble_measured(events, 2) > pipeline.bubble_theory(2, 4)
    forward, backward = pipeline_timeline.stage_times(events, 2)
    assert forward == pytest.approx([1.0, 2.0]) and backward == pytest.approx([2.0, 4.0])


def test_gantt_bars_are_thick_segments():
    series = pipeline_timeline.gantt_series(pipeline_timeline.simulate("1f1b", 2, 2), 2)
    assert all(s.width > 2 for s in series.values())
