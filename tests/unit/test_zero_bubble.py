"""parcourse.model_parallel.zero_bubble: the backward split into input gradients (B) and weight
gradients (W) gives the gradients of one loss.backward()."""

import pytest
import torch
import torch.nn.functional as F

from parcourse.model_parallel import zero_bubble
from parcourse.models import build_model


def batch(name):
    generator = torch.Generator().manual_seed(4)
    if name == "gpt":
        return (torch.randint(0, 256, (3, 32), generator=generator),
                torch.randint(0, 256, (3, 32), generator=generator))
    return (torch.randn(3, 1, 28, 28, generator=generator, dtype=torch.float64),
            torch.randint(0, 10, (3,), generator=generator))


def loss_of(model, x, y):
    return F.cross_entropy(model(x).flatten(0, -2), y.flatten())


@pytest.mark.parametrize("name", ["gpt", "complex", "simple"])
def test_b_then_w_gives_the_gradients_of_one_backward(name):
    x, y = batch(name)
    reference = build_model(name, seed=0, dtype=torch.float64)
    loss_of(reference, x, y).backward()
    model = build_model(name, seed=0, dtype=torch.float64)
    deferred = zero_bubble.defer_weight_gradients(model)
    pending = [deferred.collect() for _ in range(2)]  # two micro-batches: halves of x
    losses = []
    for half, kept in zip((slice(0, 2), slice(2, 3)), pending):
        deferred.current = kept
        losses.append(loss_of(model, x[half], y[half]) * (len(x[half]) / len(x)))
    for loss in losses:
        loss.backward()                           # B: no parameter gets a gradient
    assert all(p.grad is None for p in model.parameters())
    assert all(len(kept) == len(zero_bubble.units(model)) for kept in pending)
    for kept in pending:
        deferred.apply(kept)                       # W
        assert kept == []
    for (key, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-15, msg=key)


def test_the_units_are_the_layers_that_own_parameters():
    gpt = build_model("gpt", layers=1)
    names = {type(u).__name__ for u in zero_bubble.units(gpt)}
    assert names == {"Embedding", "LayerNorm", "Linear", "Head"}
    assert len(zero_bubble.units(gpt)) == 2 + 6 + 1   # 2 tables, 2 norms + 4 linears, head


def test_b_gives_the_input_gradient_at_once():
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    layer = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(),
                                torch.nn.Linear(5, 2)).double()
    expected = torch.autograd.grad(layer(x).sum(), x)[0]
    deferred = zero_bubble.defer_weight_gradients(layer)
    deferred.collect()
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=1e-15)


def test_a_forward_outside_a_collection_is_refused():
    layer = torch.nn.Linear(2, 2)
    zero_bubble.defer_weight_gradients(layer)
    with pytest.raises(RuntimeError, match=r"^call WeightGradients.collect\(\) before the "
                                           r"forward pass$"):
        layer(torch.zeros(1, 2))
