"""Checkpoints that survive a crash, and resuming from them (chapter 5, "when things fail").

A checkpoint holds everything a run needs to continue as if it had never stopped: the
model's parameters, the optimizer's state (Adam's moments and step count), the RNG
state, the position in the data (the next step: the batch stream of
:func:`parcourse.data.global_batch` is a function of the step), and the losses so far.

Writing is atomic: the checkpoint goes to a temporary file in the same folder, is
flushed to disk, and only then renamed over the old one (``os.replace`` is atomic on
POSIX file systems). A process killed mid-write leaves the previous checkpoint intact
and at worst a stray ``*.tmp-PID`` file, never a torn checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

FORMAT = 1


def save(path: str | os.PathLike, *, model_state: dict, optimizer_state: dict,
         next_step: int, losses: list, config: dict) -> None:
    """Atomically write a checkpoint to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "model": model_state, "optimizer": optimizer_state,
               "next_step": next_step, "losses": list(losses), "config": config,
               "torch_rng": torch.get_rng_state()}
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def load(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save`; restores the torch RNG state too."""
    payload = torch.load(path, weights_only=False)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a parcourse checkpoint (format {FORMAT})")
    torch.set_rng_state(payload["torch_rng"])
    return payload


def compatible(saved: dict, config: dict) -> str | None:
    """Why a checkpoint cannot continue ``config`` (None if it can).

    Model, data, batch, optimizer and seed must match; the number of steps may grow, and
    the strategy and number of workers may change (the computation is the same).
    """
    for key in ("model", "dataset", "batch_size", "optimizer", "lr", "seed"):
        if saved["config"].get(key) != config.get(key):
            return (f"it was written with {key}={saved['config'].get(key)!r}, "
                    f"this run has {key}={config.get(key)!r}")
    if saved["next_step"] > config["steps"]:
        return f"it is already at step {saved['next_step']}, past --steps {config['steps']}"
    return None


def merge_optimizer_states(parts: list[dict | None]) -> dict:
    """The optimizer state of the unsplit model from those of its consecutive parts.

    ``parts[s]`` is ``optimizer.state_dict()`` of the optimizer over part s's parameters
    (None for a part without parameters). PyTorch numbers an optimizer's parameters
    0, 1, … in order, and the parts of a pipeline are consecutive slices of the model, so
    part s's parameter i is the whole model's parameter (number before part s) + i. A
    checkpoint stored this way resumes under any strategy, split or not.
    """
    state, groups, offset = {}, [], 0
    for part in parts:
        if part is None:
            continue
        (group,) = part["param_groups"]
        count = len(group["params"])
        state.update({offset + i: value for i, value in part["state"].items()})
        if groups:
            groups[0]["params"] += [offset + i for i in range(count)]
        else:
            groups = [dict(group, params=list(range(count)))]
        offset += count
    return {"state": state, "param_groups": groups}


def split_optimizer_state(full: dict, start: int, count: int) -> dict:
    """The state of an optimizer over the whole model's parameters ``start … start+count−1``
    (the inverse of :func:`merge_optimizer_states`)."""
    (group,) = full["param_groups"]
    return {"state": {i - start: value for i, value in full["state"].items()
                      if start <= i < start + count},
            "param_groups": [dict(group, params=list(range(count)))]}
