"""parcourse.model_parallel.idle_time: the parts of a step's idle time add up to the measured
bubble, and each part is what its replay says on timelines built to have only it."""

import pytest

from parcourse.bench import pipeline as bench_pipeline
from parcourse.model_parallel import idle_time, pipeline, timeline
from parcourse.model_parallel.pipeline import Event


def parts(account):
    return {p: account.share(p) for p in idle_time.PARTS}


@pytest.mark.parametrize("name, chunks", [("gpipe", 1), ("1f1b", 1), ("interleaved", 2),
                                          ("zb-h1", 1)])
def test_an_ideal_timeline_is_all_ideal_bubble(name, chunks):
    events = timeline.simulate(name, 2, 4, chunks=chunks)
    account = idle_time.account(events, name, 2, 4, chunks)
    assert account.share("ideal") == pytest.approx(pipeline.bubble_measured(events, 2))
    assert all(abs(account.share(p)) < 1e-12 for p in idle_time.PARTS[1:])


def test_unequal_stages_are_imbalance_and_a_slow_pass_is_variation():
    events = timeline.simulate("gpipe", 2, 4, forward=[1.0, 1.5], backward=[2.0, 3.0])
    account = idle_time.account(events, "gpipe", 2, 4)
    assert account.share("imbalance") > 0.05 and abs(account.share("variation")) < 1e-12
    slow = timeline.simulate("1f1b", 2, 4, durations={(0, "F", 2, 0): 4.0})
    account = idle_time.account(slow, "1f1b", 2, 4)
    assert account.share("variation") > 0.04


def test_messages_are_what_their_sender_spends_and_the_rest_what_no_replay_explains():
    """A timeline whose messages cost their sender 0.2 is explained by link 0.2 exactly;
    with link 0 the same time is left as the rest."""
    events = timeline.simulate("1f1b", 3, 6, send=0.2)
    explained = idle_time.account(events, "1f1b", 3, 6, link={"F": 0.2, "B": 0.2})
    assert explained.share("messages") > 0.02 and abs(explained.share("rest")) < 1e-12
    unexplained = idle_time.account(events, "1f1b", 3, 6)
    assert unexplained.share("rest") == pytest.approx(explained.share("messages"))


def test_the_parts_add_up_to_each_stages_idle_time_and_to_the_bubble():
    events = timeline.simulate("zb-h1", 3, 6, forward=[1.0, 1.3, 0.9], backward=2.2,
                               durations={(1, "B", 3, 0): 2.5}, send=0.05)
    account = idle_time.account(events, "zb-h1", 3, 6, link=0.02)
    for s in range(3):
        assert sum(account.parts[p][s] for p in idle_time.PARTS) == pytest.approx(
            account.span - account.busy[s])
    assert sum(parts(account).values()) == pytest.approx(account.bubble)
    assert account.bubble == pytest.approx(pipeline.bubble_measured(events, 3))


def test_measured_messages_split_the_rest_into_late_and_between():
    """Stage 1 waits in a receive for the first half of a gap and does nothing for the
    second: the first half is waiting, the second is between passes."""
    events = [Event(0, 0, "F", 0, 0.0, 1.0), Event(0, 1, "F", 0, 1.0, 2.0),
              Event(0, 1, "B", 0, 2.0, 4.0), Event(0, 0, "B", 0, 5.0, 7.0),
              Event(0, 1, "F", 1, 8.0, 9.0)]
    messages = [Event(0, 0, "send", 0, 1.0, 1.0), Event(0, 1, "send", 0, 4.0, 4.5),
                Event(0, 0, "wait", 0, 1.0, 5.0), Event(0, 1, "wait", 1, 4.5, 6.0)]
    between, sending, sent = idle_time._measured(events, messages, 2)
    assert between == [pytest.approx(0.0), pytest.approx(8.0 - 4.0 - 0.5 - 1.5)]
    assert sending == [0.0, 0.5] and sent == [1, 1]


def test_the_message_cost_is_alpha_plus_n_beta_of_the_cut():
    from parcourse.bench.allreduce import AlphaBeta

    link = idle_time.message_seconds(AlphaBeta(1e-4, 1e-9), [(8, 64), (8, 64, 64),
                                                             (8, 64, 256)], 4)
    assert link == {"F": pytest.approx(1e-4 + 8 * 64 * 64 * 4 * 1e-9)} | {
        "B": pytest.approx(1e-4 + 8 * 64 * 64 * 4 * 1e-9)}


def test_the_benchmark_summarizes_rounds_and_prints_both_tables():
    from parcourse.bench.allreduce import AlphaBeta

    base = bench_pipeline.default_config()
    configs = bench_pipeline.variants(base, (4,), ("1f1b",))
    runs = []
    for config in configs:
        events = []
        for step in range(6):   # 2 rounds of 3 steps; the first of each is left out
            offset = 100.0 * step
            for e in timeline.simulate("1f1b" if config.microbatches > 1 else "gpipe", 2,
                                       config.microbatches, forward=1.0 + (step == 4)):
                events.append(Event(step, e.stage, e.kind, e.micro, e.start + offset,
                                    e.end + offset))
        runs.append({"timeline": events, "messages": [], "peak_in_flight": [2, 1],
                     "shapes": [(16, 64), (16, 64, 64), (16, 64, 256)], "chunks": 1})
    rows = [bench_pipeline.summarize(c, r, 2, 3, AlphaBeta(1e-4, 1e-9))
            for c, r in zip(configs, runs)]
    assert [r["schedule"] for r in rows] == ["naive split", "1f1b"]
    assert rows[1]["bubble"][0] == pytest.approx(pipeline.bubble_theory(2, 4))
    assert rows[1]["step_ms"][1] < rows[1]["step_ms"][2]   # round 2 has one slow step
    for row in rows:
        row["speedup"] = 1.0
    text = bench_pipeline.format_rows({"rows": rows, "references": [],
                                       "alpha_beta": AlphaBeta(1e-4, 1e-9)})
    assert "naive split" in text and "idle time, as shares of P × step" in text
    for r in rows:
        r.update(link={"F": 1e-4}, send_us=[50.0, 40.0, 60.0])
    measured = {"rows": rows, "references": [{"schedule": "torch 1f1b", "M": 4, "V": 1,
                                              "step_ms": (5.0, 4.0, 6.0)}]}
    for header, cells in ((bench_pipeline.STEP_HEADER, bench_pipeline.step_cells),
                          (bench_pipeline.BUBBLE_HEADER, bench_pipeline.bubble_cells),
                          (bench_pipeline.IDLE_HEADER, bench_pipeline.idle_cells)):
        assert {len(row) for row in cells(measured)} == {len(header)}
    assert bench_pipeline.step_cells(measured)[-1] == ["torch 1f1b", "4", "1", "5.0 (4.0–6.0)",
                                                       "–", "–", "–", "–"]
    assert bench_pipeline.step_cells(measured)[1][-2:] == ["100", "50"]  # α + nβ, an isend


def test_recorded_sends_are_replayed_as_they_took_and_leave_no_rest():
    """A timeline whose sends each took their own time (0.1 to 0.4) is explained exactly
    by the replay with the recorded sends; with the fit's α + nβ of 0.05 instead, the
    difference is left as the rest."""
    plans = timeline.simulate("interleaved", 2, 4, chunks=2)
    sends = {(e.stage, e.kind, e.micro, e.chunk): 0.1 + 0.1 * ((e.micro + e.chunk) % 4)
             for e in plans if e.kind != "W" and _sends_elsewhere(e, 2, 2)}
    events = timeline.simulate("interleaved", 2, 4, chunks=2, sends=sends)
    messages = [Event(0, e.stage, "send", e.micro, e.end, e.end + sends[key], e.chunk)
                for e in events
                if (key := (e.stage, e.kind, e.micro, e.chunk)) in sends]
    assert idle_time.recorded_sends(events, messages) == pytest.approx(sends)
    account = idle_time.account(events, "interleaved", 2, 4, 2, link=0.05, messages=messages)
    assert account.share("messages") > 0.05 and abs(account.share("rest")) < 1e-12
    assert account.replay_bubble("messages") == pytest.approx(account.bubble)
    assert account.replay_bubble("α+nβ") < account.bubble
    fitted = idle_time.account(events, "interleaved", 2, 4, 2, link=0.05)
    assert fitted.share("rest") > 0.02


def _sends_elsewhere(e, stages, chunks) -> bool:
    v = e.chunk * stages + e.stage
    to = v + 1 if e.kind == "F" else v - 1
    return 0 <= to < stages * chunks and to % stages != e.stage
