"""parcourse.gpt: the small GPT's shapes, its causal mask, its one tied token table, and
that it learns (parcourse.chapters.transformer)."""

import math

import pytest
import torch
import torch.nn.functional as F

from parcourse.chapters.transformer import UNIFORM_LOSS, learn
from parcourse.data import text_max_sequence
from parcourse.errors import ConfigError
from parcourse.gpt import GPT, generate
from parcourse.models import build_model, count_parameters, shared_parameters
from parcourse.recompute import blocks
from parcourse.training import TrainConfig, validate


def ids(n=3, t=32, seed=0):
    return torch.randint(0, 256, (n, t), generator=torch.Generator().manual_seed(seed))


def test_logits_of_the_next_byte_at_every_position():
    model = GPT()
    assert model(ids()).shape == (3, 32, 256)
    assert model(ids(t=5)).shape == (3, 5, 256)       # shorter windows too
    assert [type(layer).__name__ for layer in model] == ["Embeddings", "Block", "Block", "Head"]


def test_the_parameter_count_follows_the_sizes():
    def expected(layers, d, t, vocab=256):
        norms, attention = 2 * 2 * d, (d * 3 * d + 3 * d) + (d * d + d)
        block = norms + attention + (d * 4 * d + 4 * d) + (4 * d * d + d)
        return vocab * d + t * d + layers * block + 2 * d     # the head adds only its LayerNorm
    assert count_parameters(GPT()) == expected(2, 32, 32) == 34_688
    model = build_model("gpt", layers=3, width=48, heads=4, sequence=16)
    assert count_parameters(model) == expected(3, 48, 16)


def test_a_later_token_never_changes_earlier_logits():
    model = build_model("gpt", seed=1, dtype=torch.float64)
    x = ids()
    changed = x.clone()
    changed[:, 20] = (changed[:, 20] + 1) % 256
    before, after = model(x), model(changed)
    assert torch.equal(before[:, :20], after[:, :20])             # exactly: weights 0
    assert (before[:, 20:] - after[:, 20:]).abs().amax(dim=-1).min() > 0   # later ones do


def test_the_head_and_the_token_table_are_one_parameter():
    model = build_model("gpt", seed=0, dtype=torch.float64)
    assert model[3].weight is model[0].token.weight                # kept through .to()
    names = [name for name, _ in model.named_parameters()]
    assert names.count("0.token.weight") == 1 and "3.weight" not in names
    assert list(model.state_dict())[-3:] == ["3.weight", "3.norm.weight", "3.norm.bias"]
    assert shared_parameters(model) == {"3.weight": "0.token.weight"}
    assert shared_parameters(build_model("simple")) == {}


def test_the_tied_gradient_is_the_sum_of_both_uses():
    model = build_model("gpt", seed=0, dtype=torch.float64)
    x, y = ids(2), ids(2, seed=1)
    F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    embeddings, head = model[0], model[3]
    inside, outside = (embeddings.token.weight.detach().clone().requires_grad_()
                       for _ in range(2))          # the same table, untied: two leaves
    h = F.embedding(x, inside) + embeddings.position.weight[:32]
    for block in model[1:3]:
        h = block(h)
    F.cross_entropy((head.norm(h) @ outside.t()).flatten(0, 1), y.flatten()).backward()
    assert inside.grad.abs().max() > 0 and outside.grad.abs().max() > 0
    torch.testing.assert_close(embeddings.token.weight.grad, inside.grad + outside.grad,
                               rtol=1e-12, atol=1e-15)


def test_seeded_gpts_are_reproducible_and_float64_starts_from_the_float32_values():
    a, b = build_model("gpt", seed=5), build_model("gpt", seed=5)
    wide = build_model("gpt", seed=5, dtype=torch.float64)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
        assert torch.equal(value.double(), wide.state_dict()[key]), key
    assert not torch.equal(a[0].token.weight, build_model("gpt", seed=6)[0].token.weight)
    assert abs(a[0].token.weight.std().item() - 0.02) < 0.002


def test_slices_keep_names_and_compose():
    model = build_model("gpt", seed=0, dtype=torch.float64)
    first, second = model[:2], model[2:]
    assert isinstance(second, GPT) and list(second.state_dict())[0] == "2.norm1.weight"
    assert torch.equal(second(first(ids())), model(ids()))


def test_sizes_are_checked():
    with pytest.raises(ValueError, match="width 30 is not divisible by 4 heads"):
        build_model("gpt", width=30, heads=4)
    with pytest.raises(ValueError, match="the simple model has no size option 'layers'"):
        build_model("simple", layers=2)
    with pytest.raises(ValueError, match="the gpt model has no size option 'depth': choose "
                                         "from layers, width, heads, sequence"):
        build_model("gpt", depth=2)


def test_each_layer_is_a_block_to_recompute():
    assert [len(block) for block in blocks(build_model("gpt", layers=3))] == [1, 1, 1, 1, 1]


def test_generation_is_the_prompt_and_new_bytes():
    model = build_model("gpt", seed=0, sequence=8)
    greedy = generate(model, "Return ", 20)                    # longer than the context
    assert greedy.startswith("Return ") and len(greedy) > len("Return ")
    assert generate(model, "Return ", 20) == greedy
    assert generate(model, "Return ", 20, temperature=1.0, seed=3) == \
        generate(model, "Return ", 20, temperature=1.0, seed=3)


def test_the_tiny_gpt_learns_below_the_uniform_loss():
    run = learn(steps=60)
    assert UNIFORM_LOSS == pytest.approx(math.log(256))
    assert abs(run.losses[0] - UNIFORM_LOSS) < 0.05             # it starts knowing nothing
    assert run.losses[-1] < UNIFORM_LOSS - 1.5 and run.test_loss < UNIFORM_LOSS - 1.5
    assert run.test_accuracy > 1 / 256 * 20
    assert run.greedy.startswith(run.prompt) and run.sampled.startswith(run.prompt)


@pytest.mark.parametrize("options, message", [
    (dict(model="gpt", dataset="digits"),
     "--model gpt trains on --dataset text (got --dataset digits)"),
    (dict(dataset="text"),
     "--model simple trains on --dataset digits or mnist (got --dataset text)"),
    (dict(layers=3), "--layers works with --model gpt (got --model simple)"),
    (dict(model="complex", sequence=64),
     "--sequence works with --model gpt (got --model complex)"),
    (dict(model="gpt", width=30, heads=4),
     "--width 30 is not divisible by --heads 4: each head takes --width / --heads channels"),
    (dict(model="gpt", layers=0), "--layers must be at least 1 (got 0)"),
    (dict(model="gpt", sequence=10 ** 6),
     f"--sequence 1000000 is longer than the text's test part allows: use at most "
     f"{text_max_sequence()}"),
    (dict(model="gpt", strategy="dp-pp-tp", workers=6),
     "--workers 6 does not fit --stages 2 × --tensor 2 × replicas: use a multiple of 4 "
     "workers"),
    (dict(model="gpt", strategy="dp-pp-tp", workers=4, stages=1, tensor=4),
     "--strategy dp-pp-tp gives each tensor rank whole heads, but --heads 2 cannot be split "
     "over --tensor 4: use a --tensor that divides 2"),
    (dict(model="gpt", strategy="dp-pp-tp", workers=4, width=30, heads=6, stages=1, tensor=4),
     "--strategy dp-pp-tp splits the GPT's --width 30 over --tensor 4: use a --tensor that "
     "divides 30"),
    (dict(model="gpt", strategy="dp-pp-tp", workers=4, stages=1, tensor=4, heads=4,
          sequence=30, sequence_parallel=True),
     "--sequence-parallel splits each window of --sequence 30 tokens over --tensor 4: use a "
     "--sequence that is a multiple of 4, e.g. 28 or 32"),
    (dict(model="gpt", strategy="dp-pp-tp", workers=4, tensor=-1),
     "--tensor must be at least 1 (got -1)"),
    (dict(model="gpt", strategy="dp-pp", workers=4, tensor=2),
     "--tensor works with --strategy dp-pp-tp (got --strategy dp-pp)"),
    (dict(strategy="dp-pp-tp", workers=4),
     "--strategy dp-pp-tp trains --model gpt only (got --model simple)"),
    (dict(model="gpt", strategy="dp-pp-tp", workers=16, stages=5, tensor=2),
     "--stages 5 is more than the 4 layers of --model gpt (the embeddings, --layers 2 blocks "
     "and the head): each stage needs at least one layer, so use --stages 4 or fewer"),
    (dict(model="gpt", strategy="dp-pp", workers=4, stages=4, layers=1),
     "--stages 4 is more than the 3 layers of --model gpt (the embeddings, --layers 1 blocks "
     "and the head): each stage needs at least one layer, so use --stages 3 or fewer"),
])
def test_gpt_options_are_checked_in_one_line(options, message):
    with pytest.raises(ConfigError) as refused:
        validate(TrainConfig(**options))
    assert str(refused.value) == message


def test_the_dataset_follows_the_model_unless_given():
    assert TrainConfig().dataset == "digits" and TrainConfig(model="gpt").dataset == "text"
    assert TrainConfig(model="simple", dataset="mnist").dataset == "mnist"
    validate(TrainConfig(model="gpt", layers=1, width=16, heads=4, sequence=8, recompute=True))
