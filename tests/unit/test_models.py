"""parcourse.models: the source document's two models, with the shapes it describes."""

import pytest
import torch

from parcourse.models import ComplexModel, SimpleModel, build_model, count_parameters


def test_simple_model_maps_images_or_vectors_to_ten_logits():
    model = SimpleModel()
    assert model(torch.zeros(5, 784)).shape == (5, 10)
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    # 784→64, 64→64, 64→10, each with a bias
    assert count_parameters(model) == (784 * 64 + 64) + (64 * 64 + 64) + (64 * 10 + 10)


def test_complex_model_follows_the_keras_shapes():
    model = ComplexModel()
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    # conv 1→32 3×3, conv 32→64 3×3, fc 64·5·5→64, fc 64→10
    expected = (9 * 32 + 32) + (9 * 32 * 64 + 64) + (1600 * 64 + 64) + (64 * 10 + 10)
    assert count_parameters(model) == expected
    after_features = model[:7](torch.zeros(1, 1, 28, 28))
    assert after_features.shape == (1, 64 * 5 * 5)


def test_seeded_models_are_reproducible_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b = build_model("simple", seed=7), build_model("simple", seed=7)
    assert torch.rand(1) == before
    c = build_model("simple", seed=8)
    for (ka, pa), (_, pb), (_, pc) in zip(a.state_dict().items(), b.state_dict().items(),
                                          c.state_dict().items()):
        assert torch.equal(pa, pb), ka
    assert not torch.equal(a[1].weight, c[1].weight)


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError,
                       match="unknown model 'resnet': choose one of simple, complex, gpt"):
        build_model("resnet")


def test_slices_keep_the_layer_names_of_the_whole_model():
    model = SimpleModel()
    first, second = model[:3], model[3:]
    assert isinstance(first, SimpleModel)
    assert list(second.state_dict()) == ["3.weight", "3.bias", "5.weight", "5.bias"]
    x = torch.randn(2, 784)
    assert torch.equal(second(first(x)), model(x))
