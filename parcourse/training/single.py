"""``--strategy single``: one process, the whole global batch each step — the reference
every other strategy is compared with (chapter 3). With ``--accumulation M`` the batch
is cut into M micro-batches whose gradients add up to the whole batch's (chapter 4)."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .adapters import Replica, cpu_state
from .config import TrainConfig
from ..mixed_precision import LossScaler
from .loop import make_optimizer, optimizer_step, replica_loss
from .registry import WHOLE, Strategy, register
from .worker import batch_of, load_data_and_model, result, train_worker


def train_single(config: TrainConfig):
    """The single-device reference: on the GPU when there is one, else the CPU."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dataset, model = load_data_and_model(config, device)
    optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr)
    scaler = LossScaler(config.precision)

    def inner_step(step: int) -> float:
        batch = batch_of(dataset, config, step)
        optimizer.zero_grad()  # frees the gradients (set_to_none, the default)
        loss = replica_loss(model, dataset.train_x[batch].to(device),
                            dataset.train_y[batch].to(device), config.accumulation,
                            scaler.scale, config.precision)
        optimizer_step(optimizer, scaler)
        return loss

    losses, times = train_worker(config, inner_step, Replica(model, optimizer), device=device)
    return result(config, cpu_state(model), losses, times, dataset)


def _check(config: TrainConfig) -> None:
    if config.accumulation > config.batch_size:
        raise ConfigError(f"--accumulation {config.accumulation} is larger than --batch-size "
                          f"{config.batch_size}: each micro-batch needs at least one sample")


register(Strategy("single", train_single, "one process, the reference",
                  options=("accumulation", "recompute", "precision"), batch=WHOLE, parallel=False, check=_check,
                  experts=True))
