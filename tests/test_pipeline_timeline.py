"""parcourse.pipeline_timeline: the ideal timeline of each schedule."""

import pytest

from parcourse import pipeline, pipeline_timeline


@pytest.mark.parametrize("name", pipeline.SCHEDULES)
@pytest.mark.parametrize("stages, microbatches", [(2, 1), (2, 4), (3, 5), (4, 8)])
def test_the_ideal_bubble_is_the_formula(name, stages, microbatches):
    events = pipeline_timeline.simulate(name, stages, microbatches, forward=1.0, backward=2.0)
    assert len(events) == 2 * stages * microbatches
    assert pipeline.bubble_measured(events, stages) == pytest.approx(
        pipeline.bubble_theory(stages, microbatches))
    span = max(e.end for e in events)
    assert span == pytest.approx((microbatches + stages - 1) * 3.0)


def test_messages_lengthen_the_step_and_widen_the_bubble():
    quick = pipeline_timeline.simulate("1f1b", 3, 4)
    slow = pipeline_timeline.simulate("1f1b", 3, 4, link=0.5)
    assert max(e.end for e in slow) > max(e.end for e in quick)
    assert pipeline.bubble_measured(slow, 3) > pipeline.bubble_measured(quick, 3)


def test_gantt_series_draws_one_segment_per_pass():
    events = pipeline_timeline.simulate("gpipe", 2, 3)
    series = pipeline_timeline.gantt_series(events, 2)
    assert set(series) == {"forward", "backward"}
    assert len(series["forward"].x) == 3 * 2 * 3  # (start, end, gap) per forward pass
