"""The book's models: the source document's two, in PyTorch (chapters 3 and 5), and a
small GPT (:mod:`parcourse.gpt`, chapter 5).

``SimpleModel`` is the multilayer perceptron of the data-parallel example (§5.2.1):
784 → 64 → ReLU → 64 → ReLU → 10. ``ComplexModel`` is the convolutional network of
the model-parallel example (§5.2.2): conv 32@3×3 → ReLU → max-pool 2 → conv 64@3×3 →
ReLU → max-pool 2 → flatten → fc 64 → ReLU → fc 10, for 1×28×28 images ("valid"
convolutions, as in the Keras original: 28 → 26 → 13 → 11 → 5, so fc1 sees 64·5·5).

All three return logits; the loss is ``torch.nn.functional.cross_entropy`` (for the GPT,
over every position of every window). All are ``nn.Sequential`` so that later chapters
can split them layer by layer. The GPT's sizes are options (:data:`SIZES`); the other two
have fixed sizes.
"""

from __future__ import annotations

import torch
from torch import nn

from .gpt import GPT

IMAGE_SHAPE = (1, 28, 28)
NUM_CLASSES = 10


class SimpleModel(nn.Sequential):
    """784 → 64 → 64 → 10 perceptron with ReLU; accepts (N, 784) or (N, 1, 28, 28).

    ``model[a:b]`` is a slice of the layers with their original names (what a pipeline
    stage holds); slicing passes the layers back in, hence ``*layers``.
    """

    def __init__(self, *layers: nn.Module, hidden: int = 64):
        super().__init__(*layers or (
            nn.Flatten(),
            nn.Linear(28 * 28, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, NUM_CLASSES),
        ))


class ComplexModel(nn.Sequential):
    """Two conv/pool stages and two dense layers; input (N, 1, 28, 28). Sliceable likewise."""

    def __init__(self, *layers: nn.Module):
        super().__init__(*layers or (
            nn.Conv2d(1, 32, kernel_size=3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 5 * 5, 64),
            nn.ReLU(),
            nn.Linear(64, NUM_CLASSES),
        ))


MODELS = {"simple": SimpleModel, "complex": ComplexModel, "gpt": GPT}
# The size options each model takes (keywords of build_model, fields of TrainConfig).
SIZES = {"gpt": ("layers", "width", "heads", "sequence",
                 "experts", "top_k", "capacity_factor")}   # the last three: parcourse.moe


def build_model(name: str, seed: int | None = None,
                dtype: torch.dtype = torch.float32, **sizes: int) -> nn.Module:
    """Return a fresh model by name; with ``seed`` its initial weights are reproducible.

    ``sizes`` are the model's size options (:data:`SIZES`, e.g. ``layers=4, width=64`` for
    the GPT; unset ones take their defaults). The weights are drawn in float32 and then
    converted to ``dtype``, so a float64 model starts from exactly the values of its
    float32 twin (chapter 3: equality in float64).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    unknown = [key for key in sizes if key not in SIZES.get(name, ())]
    if unknown:
        raise ValueError(f"the {name} model has no size option {unknown[0]!r}"
                         + (f": choose from {', '.join(SIZES[name])}" if name in SIZES else ""))
    if seed is None:
        return MODELS[name](**sizes).to(dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[name](**sizes).to(dtype)


def sizes_of(name: str, options) -> dict:
    """The size options of model ``name`` taken from ``options`` (a TrainConfig or a dict
    of its fields, as a checkpoint stores it): ``{}`` for a model without any."""
    get = options.get if isinstance(options, dict) else lambda key: getattr(options, key)
    return {key: get(key) for key in SIZES.get(name, ())}


def shared_parameters(model: nn.Module) -> dict[str, str]:
    """Each *other* name of a parameter registered under several names → the name that
    ``named_parameters()`` lists it under (for the GPT: the head's ``weight`` → the token
    table's ``0.token.weight``). ``state_dict()`` holds the tensor under every name."""
    first: dict[int, str] = {}
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owner = first.setdefault(id(p), name)
        if owner != name:
            aliases[name] = owner
    return aliases


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
