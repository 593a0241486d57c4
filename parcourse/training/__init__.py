"""Training: one configuration, one registry of strategies, one loop (chapter 5).

``train(TrainConfig(strategy=..., workers=K, ...))`` is what ``python -m parcourse train``
runs. Each strategy is declared once, in its module, with :func:`registry.register`;
importing this package imports them all, in the order the command line lists them.

* :mod:`.config` — :class:`TrainConfig` (every option) and :class:`TrainResult`;
* :mod:`.registry` — :class:`Strategy`, :data:`REGISTRY`, :func:`validate`, :func:`train`;
* :mod:`.loop` — the training loop every strategy runs, with its inner step;
* :mod:`.worker` — a worker's set-up, resume and checkpoints, and rank 0's result;
* :mod:`.adapters` — each strategy's part of the model ↔ the unsplit model (checkpoints);
* strategies: :mod:`.single`, :mod:`.ddp` (ddp, dp-manual, dp-bucketed), :mod:`.zero`
  (zero1, zero2, zero3), :mod:`.fsdp`, :mod:`.torch_zero` (torch-zero1), :mod:`.horovod`,
  :mod:`.horovod_elastic`, :mod:`.pipeline` (pipeline-gpipe, pipeline-1f1b,
  pipeline-interleaved, pipeline-zb-h1, dp-pp, dp-pp-tp),
  :mod:`.tensor`, :mod:`.context`, :mod:`.expert`.
"""

from .. import launch_start
from . import (single, ddp, zero, fsdp, torch_zero,  # noqa: F401  (each registers its own)
               horovod, horovod_elastic, pipeline, tensor, context, expert)
from .config import DATASETS, DTYPES, OPTIMIZERS, TrainConfig, TrainResult
from .registry import REGISTRY, Strategy, register, train, validate

launch_start.preload(__name__)   # workers forked from the server start with the strategies

__all__ = ["DATASETS", "DTYPES", "OPTIMIZERS", "REGISTRY", "Strategy", "TrainConfig",
           "TrainResult", "register", "train", "validate"]
