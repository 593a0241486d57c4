"""Chapter 5, "Training a transformer": the small GPT learns Python's docstrings on a CPU.

:func:`learn` trains the GPT of :mod:`parcourse.gpt` on the text data set
(:func:`parcourse.data.text_corpus`) with the package's one training loop — the run of
``python -m parcourse train --model gpt --optimizer adam --lr 0.005 --steps 500`` — and
returns its loss curve, its loss and next-byte accuracy on the held-out text, and lines
the trained model writes. A model that knows nothing gives each of the 256 bytes
probability 1/256, a loss of log 256 ≈ 5.55 nats per byte: the curve starts there, and
every nat below it is something learned. Measured on a 2-core CPU (float32, torch 2.13,
seed 0): 5.54 → 2.14 in 500 steps (about 5 s), 2.18 on the held-out text, 39 % of its
next bytes right; sampled at temperature 0.8 it writes "Return the sospys option which
that diction objecst samete_spripiquences." — English-shaped words and Python names,
from 35 k parameters and 1 M bytes seen.

Every data-parallel and sharded strategy trains this model to the same parameters (the
tests prove it in float64), so the curve is also theirs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .. import data as datasets
from ..gpt import VOCAB, generate
from ..models import build_model, count_parameters, sizes_of
from ..training import TrainConfig, train
from ..training.loop import mean_loss

UNIFORM_LOSS = math.log(VOCAB)   # the loss of guessing every byte with probability 1/256


@dataclass
class Learning:
    """What :func:`learn` measured."""

    config: TrainConfig = field(repr=False)
    losses: list[float] = field(repr=False)   # mean loss of each step's batch, nats per byte
    test_loss: float                          # on the held-out last 10 % of the text
    test_accuracy: float                      # next byte predicted right, held-out text
    seconds: float                            # wall time of the training loop
    parameters: int
    prompt: str
    greedy: str                               # the prompt continued, most likely byte each time
    sampled: str                              # … drawn at the temperature, seeded


def learn(steps: int = 500, batch_size: int = 64, lr: float = 5e-3, seed: int = 0,
          prompt: str = "Return the ", new_tokens: int = 80, temperature: float = 0.8,
          **sizes: int) -> Learning:
    """Train the GPT (``sizes``: ``layers``, ``width``, ``heads``, ``sequence``; defaults:
    the tiny model) with Adam on one process; measure it and let it write."""
    config = TrainConfig(model="gpt", steps=steps, batch_size=batch_size, optimizer="adam",
                         lr=lr, seed=seed, quiet=True, **sizes)
    result = train(config)
    model = build_model("gpt", **sizes_of("gpt", config))
    model.load_state_dict(result.state_dict)
    model.eval()
    test = datasets.load_dataset("text", sequence=config.sequence)
    with torch.no_grad():
        test_loss = mean_loss(model(test.test_x), test.test_y).item()
    return Learning(config, result.losses, test_loss, result.test_accuracy, result.seconds,
                    count_parameters(model), prompt,
                    generate(model, prompt, new_tokens),
                    generate(model, prompt, new_tokens, temperature, seed))
