"""The source document's two models, in PyTorch (book chapters 3 and 5).

``SimpleModel`` is the multilayer perceptron of the data-parallel example (§5.2.1):
784 → 64 → ReLU → 64 → ReLU → 10. ``ComplexModel`` is the convolutional network of
the model-parallel example (§5.2.2): conv 32@3×3 → ReLU → max-pool 2 → conv 64@3×3 →
ReLU → max-pool 2 → flatten → fc 64 → ReLU → fc 10, for 1×28×28 images ("valid"
convolutions, as in the Keras original: 28 → 26 → 13 → 11 → 5, so fc1 sees 64·5·5).

Both return logits; the loss is ``torch.nn.functional.cross_entropy``.
Both are ``nn.Sequential`` so that later chapters can split them layer by layer.
"""

from __future__ import annotations

import torch
from torch import nn

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


MODELS = {"simple": SimpleModel, "complex": ComplexModel}


def build_model(name: str, seed: int | None = None,
                dtype: torch.dtype = torch.float32) -> nn.Module:
    """Return a fresh model by name; with ``seed`` its initial weights are reproducible.

    The weights are drawn in float32 and then converted to ``dtype``, so a float64 model
    starts from exactly the values of its float32 twin (chapter 3: equality in float64).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    if seed is None:
        return MODELS[name]().to(dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[name]().to(dtype)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
