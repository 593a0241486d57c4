"""The CPU memory meter against the profiler's allocator records (chapter 5)."""

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from parcourse.memory_meter import LiveBytes, tensor_bytes
from parcourse.models import build_model
from parcourse.recompute import blocks, recompute


def _profiled_peak(work, before: int) -> int:
    """Peak from the allocator's own records (one thread): held before + running maximum."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    running = peak = 0
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return before + peak


def _setup(name):
    model = build_model(name, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 28, 28, generator=generator)
    y = torch.randint(10, (16,), generator=generator)
    return model, optimizer, x, y


def _state(model, optimizer, x, y):
    return [*model.parameters(), *(p.grad for p in model.parameters() if p.grad is not None),
            *(v for s in optimizer.state.values() for v in s.values()), x, y]


@pytest.mark.parametrize("name", ["simple", "complex"])
def test_forward_and_backward_peak_equals_the_allocators_records(name):
    model, optimizer, x, y = _setup(name)

    def forward_backward():
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()

    forward_backward()
    state = _state(model, optimizer, x, y)
    with LiveBytes(track=state) as meter:
        forward_backward()
    assert meter.peak == _profiled_peak(forward_backward, tensor_bytes(state))


def test_the_optimizer_step_is_measured_to_the_bytes_of_python_numbers():
    """The step's C++ wraps Python numbers (lr, betas) in 0-dim tensors of 8 bytes that no
    operator receives as a tensor: the meter may miss a few of those, nothing else."""
    model, optimizer, x, y = _setup("simple")
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    state = _state(model, optimizer, x, y)
    with LiveBytes(track=state) as meter:
        optimizer.step()
    expected = _profiled_peak(optimizer.step, tensor_bytes(state))
    assert 0 <= expected - meter.peak <= 64


def test_recomputation_holds_fewer_activations_and_keeps_the_gradients():
    """Between forward and backward a recomputed model holds only its blocks' inputs. The
    CNN's peak does not fall: it comes in the first block's backward, whose activations
    (26×26×32 per sample) exist either way."""
    held, peaks, grads = {}, {}, {}
    for recomputed in (False, True):
        model, optimizer, x, y = _setup("complex")
        if recomputed:
            recompute(model)
        with LiveBytes(track=_state(model, optimizer, x, y)) as meter:
            loss = F.cross_entropy(model(x), y)
            held[recomputed] = meter.current()
            loss.backward()
        peaks[recomputed], grads[recomputed] = meter.peak, [p.grad for p in model.parameters()]
    assert held[True] < held[False] / 2
    assert peaks[True] == peaks[False]
    for a, b in zip(grads[True], grads[False]):
        assert torch.equal(a, b)


def test_blocks_follow_the_layers_with_parameters():
    assert [len(b) for b in blocks(build_model("simple"))] == [3, 2, 1]
    assert [len(b) for b in blocks(build_model("complex"))] == [3, 4, 2, 1]
    with pytest.raises(ValueError, match="^Linear has no blocks to recompute: it is not an "
                                         "nn.Sequential and defines no blocks\\(\\)$"):
        blocks(torch.nn.Linear(2, 2))
