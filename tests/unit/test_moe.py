"""parcourse.moe: the router's top-k choices and their deterministic ties, the capacity per
window and the dropped assignments, Switch's load-balancing loss and how it enters the
training loss, and the mixture in the GPT (in one process)."""

import pytest
import torch

from parcourse import moe
from parcourse.errors import ConfigError
from parcourse.models import build_model
from parcourse.training import TrainConfig, validate
from parcourse.training.loop import mean_loss, replica_loss


def probabilities(rows):
    return torch.tensor(rows, dtype=torch.float64).unsqueeze(0)    # one window (1, T, E)


def test_top_k_choices_with_ties_broken_by_the_lower_expert():
    p = probabilities([[0.1, 0.5, 0.3, 0.1], [0.25, 0.25, 0.25, 0.25], [0.4, 0.1, 0.1, 0.4]])
    routing = moe.route(p, top_k=2, capacity_per_window=10)
    assert routing.experts[0].tolist() == [[1, 2], [0, 1], [0, 3]]
    assert torch.equal(routing.gates[0], torch.tensor([[0.5, 0.3], [0.25, 0.25], [0.4, 0.4]],
                                                      dtype=torch.float64))
    assert routing.kept.all() and routing.dropped == 0


def test_the_queue_takes_first_choices_before_second_ones_and_drops_past_capacity():
    # 4 tokens, E = 2, k = 2, c = 0.5: C = ⌈0.5·2·4/2⌉ = 2 places per expert and window
    assert moe.capacity(4, 2, 2, 0.5) == 2
    p = probabilities([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.4, 0.6]])
    routing = moe.route(p, top_k=2, capacity_per_window=2)
    # first choices: expert 0 gets tokens 0, 1, 2 (places 0, 1, 2), expert 1 token 3 (0);
    # second choices: expert 1 gets tokens 0, 1, 2 (places 1, 2, 3), expert 0 token 3 (3)
    assert routing.slots[0].tolist() == [[0, 1], [1, 2], [2, 3], [0, 3]]
    assert routing.kept[0].tolist() == [[True, True], [True, False], [False, False],
                                        [True, False]]
    assert routing.dropped == 4
    assert routing.tokens_per_expert(2).tolist() == [4, 4]
    assert routing.tokens_per_expert(2, kept=True).tolist() == [2, 2]


def test_capacity_is_per_window_so_a_batch_drops_what_its_windows_drop():
    torch.manual_seed(0)
    p = torch.rand(6, 8, 4, dtype=torch.float64).softmax(-1)
    whole = moe.route(p, 2, moe.capacity(8, 4, 2, 0.75))
    for n in range(6):
        alone = moe.route(p[n:n + 1], 2, moe.capacity(8, 4, 2, 0.75))
        assert all(torch.equal(a[0], b[n]) for a, b in zip(alone, whole))


def test_the_balance_loss_is_one_when_even_and_e_when_one_expert_takes_all():
    e = 4
    even = torch.full((1, 8, e), 1 / e, dtype=torch.float64)
    routing = moe.route(even, 1, 8)     # ties: every token to expert 0, f = (1, 0, 0, 0)
    assert moe.window_balance(even, routing).item() == pytest.approx(1.0)  # P uniform
    spread = torch.eye(e, dtype=torch.float64).repeat(2, 1).unsqueeze(0)   # token s → s mod 4
    assert moe.window_balance(spread, moe.route(spread, 1, 8)).item() == pytest.approx(1.0)
    one = torch.zeros(1, 8, e, dtype=torch.float64)
    one[..., 2] = 1.0
    assert moe.window_balance(one, moe.route(one, 1, 8)).item() == pytest.approx(e)


def gpt(**sizes):
    return build_model("gpt", seed=0, dtype=torch.float64, layers=2, width=16, heads=2,
                       sequence=16, **sizes)


def ids(n=4, t=16):
    return torch.randint(0, 256, (n, t), generator=torch.Generator().manual_seed(1))


def test_the_mixture_is_a_sum_of_gated_experts_and_dropped_tokens_skip_them():
    model = gpt(experts=4, top_k=2, capacity_factor=0.5)
    layer = model[1].mlp
    x = torch.randn(3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = layer(x)
    r = layer.routing
    expected = torch.zeros_like(x)
    for n in range(3):
        for s in range(16):
            for j in range(2):
                if r.kept[n, s, j]:
                    expected[n, s] += r.gates[n, s, j] * layer.experts[r.experts[n, s, j]](x[n, s])
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    assert r.dropped > 0                                       # C = ⌈0.5·2·16/4⌉ = 4
    assert (y[~r.kept.any(-1)] == 0).all()                     # only the residual is left
    assert r.tokens_per_expert(4, kept=True).max() <= 3 * 4


def test_the_training_loss_adds_alpha_times_the_blocks_balance_loss():
    model, x = gpt(experts=4), ids()
    y = torch.roll(x, -1, 1)
    loss = replica_loss(model, x, y, 1, 1.0)
    aux = [m.aux_loss.item() for m in moe.layers(model)]
    assert len(aux) == 2 and all(0 < a < 4 for a in aux)
    assert loss == pytest.approx(mean_loss(model(x), y).item() + moe.AUX_WEIGHT * sum(aux),
                                 abs=1e-12)
    dense = gpt()
    assert replica_loss(dense, x, y, 1, 1.0) == pytest.approx(mean_loss(dense(x), y).item())


def test_every_expert_gets_a_gradient_even_without_tokens():
    model = gpt(experts=8, top_k=1, capacity_factor=0.1)
    (model(ids(1, 4)).sum() + moe.balance_loss(model)).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_experts_zero_keeps_the_dense_gpt():
    assert list(gpt().state_dict()) == list(build_model("gpt", layers=2, width=16, heads=2,
                                                        sequence=16).state_dict())
    names = list(gpt(experts=2).state_dict())
    assert "1.mlp.router.weight" in names and "2.mlp.experts.1.2.bias" in names


@pytest.mark.parametrize("options, message", [
    (dict(experts=4, top_k=5), "--top-k 5 is larger than --experts 4: each token picks k "
                               "different experts"),
    (dict(experts=4, capacity_factor=0.0), "--capacity-factor must be a positive number "
                                           "(got 0.0)"),
    (dict(experts=4, capacity_factor=-1.0), "--capacity-factor must be a positive number "
                                            "(got -1.0)"),
    (dict(top_k=2), "--top-k needs --experts E: it chooses how tokens reach the experts of "
                    "a mixture (got --experts 0, the dense MLP)"),
    (dict(capacity_factor=1.25), "--capacity-factor needs --experts E: it chooses how tokens "
                                 "reach the experts of a mixture (got --experts 0, the dense "
                                 "MLP)"),
    (dict(top_k=2, capacity_factor=2.0), "--top-k and --capacity-factor need --experts E: "
     "they choose how tokens reach the experts of a mixture (got --experts 0, the dense MLP)"),
    (dict(experts=-1), "--experts must be 0 (the dense MLP) or more (got -1)"),
    (dict(experts=4, strategy="tensor", workers=2),
     "--experts works with --strategy single, ddp, dp-manual, dp-bucketed, zero1, zero2, "
     "zero3, fsdp, torch-zero1, horovod or expert (got --strategy tensor)"),
    (dict(experts=4, strategy="pipeline-1f1b", workers=2),
     "--experts works with --strategy single, ddp, dp-manual, dp-bucketed, zero1, zero2, "
     "zero3, fsdp, torch-zero1, horovod or expert (got --strategy pipeline-1f1b)"),
    (dict(experts=3, strategy="expert", workers=2),
     "--experts 3 cannot be spread evenly over --workers 2: each rank holds E/K experts, "
     "so use a multiple of 2, e.g. 2 or 4"),
    (dict(strategy="expert", workers=2),
     "--strategy expert spreads the experts of a mixture over the workers: give --experts "
     "E (got --experts 0)"),
])
def test_bad_mixtures_are_one_line(options, message):
    with pytest.raises(ConfigError) as err:
        validate(TrainConfig(**{"model": "gpt", **options}))
    assert str(err.value) == message


def test_the_mixture_options_belong_to_the_gpt():
    with pytest.raises(ConfigError, match=r"^--experts works with --model gpt \(got --model "
                                          r"simple\)$"):
        validate(TrainConfig(model="simple", experts=2))
    with pytest.raises(ConfigError, match=r"^--strategy expert trains --model gpt only"):
        validate(TrainConfig(model="simple", strategy="expert", workers=2))


def test_a_checkpoint_older_than_the_mixture_options_still_resumes_the_dense_gpt():
    from dataclasses import asdict

    from parcourse import checkpoint

    config = asdict(TrainConfig(model="gpt", layers=2, width=16, heads=2, sequence=16))
    model = build_model("gpt", **{k: config[k] for k in ("layers", "width", "heads", "sequence")})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    old = {k: v for k, v in config.items() if k not in ("experts", "top_k", "capacity_factor")}
    saved = {"config": old, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "losses": [], "next_step": 0}
    assert checkpoint.compatible(saved, config) is None
    problem = checkpoint.compatible(saved, dict(config, experts=2))
    assert problem.startswith("its parameters are not those of the gpt model (missing: "
                              "1.mlp.router.weight")
