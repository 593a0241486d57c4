"""The idle-time accounting of real pipeline runs (parcourse.model_parallel.idle_time, chapter
5): every recorded send is matched to the pass that produced it, exactly the passes whose
result goes to another stage, and each stage's idle time splits into parts that add up to
what was measured. Structure only: no timing is asserted (this machine is shared)."""

import pytest

from parcourse.model_parallel import idle_time
from parcourse.training import TrainConfig, train
from parcourse.training.pipeline import PIPELINES

P, M, STEPS = 2, 4, 3


def _sends_elsewhere(kind, stage, chunk, chunks):
    v = chunk * P + stage
    to = v + 1 if kind == "F" else v - 1
    return kind != "W" and 0 <= to < P * chunks and to % P != stage


@pytest.mark.parametrize("strategy, chunks", [("pipeline-1f1b", 1),
                                              ("pipeline-interleaved", 2),
                                              ("pipeline-zb-h1", 1)])
def test_every_send_is_matched_to_its_pass_and_the_parts_add_up(strategy, chunks):
    result = train(TrainConfig(model="gpt", strategy=strategy, workers=P, microbatches=M,
                               chunks=chunks if chunks > 1 else 0, steps=STEPS,
                               batch_size=8, quiet=True))
    name = PIPELINES[strategy].schedule
    for step in range(STEPS):
        events = [e for e in result.timeline if e.step == step]
        messages = [m for m in result.messages if m.step == step]
        expected = {(e.stage, e.kind, e.micro, e.chunk) for e in events
                    if _sends_elsewhere(e.kind, e.stage, e.chunk, chunks)}
        assert len(expected) == 2 * M * (P * chunks - 1)
        sends = idle_time.recorded_sends(events, messages)
        assert set(sends) == expected
        assert sum(1 for m in messages if m.kind == "send") == len(expected)
        account = idle_time.account(events, name, P, M, chunks, link=1e-4, messages=messages)
        for s in range(P):
            assert sum(account.parts[p][s] for p in idle_time.PARTS) == pytest.approx(
                account.span - account.busy[s], abs=1e-9)
        assert sum(account.share(p) for p in idle_time.PARTS) == pytest.approx(
            account.bubble, abs=1e-9)
