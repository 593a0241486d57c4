"""Checkpoints that survive a crash, and resuming from them (chapter 9, "What happens when a
worker fails, and how do I resume?"; chapter 5's model-parallel page, "Checkpoints that
outlive the split").

A checkpoint holds everything a run needs to continue as if it had never stopped: the
model's parameters, the optimizer's state (Adam's moments and step count), the RNG
state, the position in the data (the next step: the batch stream of
:func:`parcourse.data.global_batch` is a function of the step), and the losses so far.

Writing is atomic: the checkpoint goes to a temporary file in the same folder, is
flushed to disk, and only then renamed over the old one (``os.replace`` is atomic on
POSIX file systems). A process killed mid-write leaves the previous checkpoint intact
and at worst a stray ``*.tmp-PID`` file, never a torn checkpoint.

Reading runs nothing in the file: :func:`read` unpickles with
``torch.load(weights_only=True)``, which rebuilds tensors, dicts, lists, tuples, numbers
and strings only, and refuses a file that asks for any other object (a class, or a
function such as ``os.system``) before calling it. It then checks that the file holds
what :func:`save` writes, and :func:`compatible` that its parameters and optimizer state
fit the model to resume. Any other file ends in a one-line
:class:`~parcourse.errors.CheckpointError` naming the file and what is wrong.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import torch

from .errors import CheckpointError
from .models import SIZES, build_model, sizes_of

FORMAT = 1
_HOLDS = "a checkpoint holds only tensors, dicts, lists, numbers and strings"
_PLAIN = (str, int, float, bool, type(None))


def _plain(value) -> bool:
    """A training option's value: a string, number, boolean or None, or a list of them."""
    return isinstance(value, _PLAIN) or (isinstance(value, (list, tuple))
                                         and all(_plain(v) for v in value))


_ENTRIES = {  # what save() writes: entry -> (test, what it must be)
    "model": (lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items()),
        "a dict of named tensors"),
    "optimizer": (lambda v: isinstance(v, dict), "a dict (an optimizer's state_dict)"),
    "next_step": (lambda v: type(v) is int and v >= 0, "a step number (an int >= 0)"),
    "losses": (lambda v: isinstance(v, list) and all(type(x) in (int, float) for x in v),
               "a list of numbers"),
    "config": (lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and _plain(x) for k, x in v.items()),
        "a dict of training options (strings, numbers, booleans)"),
    "torch_rng": (lambda v: isinstance(v, torch.Tensor) and v.dtype == torch.uint8
                  and v.shape == torch.get_rng_state().shape, "torch's RNG state"),
}


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
    """Read a checkpoint written by :func:`save` (as :func:`read` does); restores the
    torch RNG state too."""
    payload = read(path)
    torch.set_rng_state(payload["torch_rng"])
    return payload


def read(path: str | os.PathLike) -> dict:
    """The checkpoint in ``path``, checked to be what :func:`save` writes; tensors on the CPU.

    Nothing in the file runs (``weights_only=True``). Raises
    :class:`~parcourse.errors.CheckpointError` for anything else: a file that cannot be
    read, is empty, truncated or not written by ``torch.save``, holds other objects, or
    lacks an entry of a checkpoint.
    """
    payload = _unpickle(path)
    problem = _malformed(payload)
    if problem:
        raise CheckpointError(f"{path} is not a parcourse checkpoint: {problem}")
    return payload


def _unpickle(path: str | os.PathLike):
    """``torch.load(path, weights_only=True)``, its failures said in one line."""
    def refuse(problem: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a parcourse checkpoint: {problem}")

    try:
        with open(path, "rb") as f:
            head = f.read(4)
            complete = zipfile.is_zipfile(f)  # torch.save writes a zip archive
    except OSError as err:
        raise CheckpointError(f"{path} cannot be read as a checkpoint: "
                              f"{err.strerror or err}") from None
    if not complete:
        raise refuse("it is empty" if not head else
                     "it is truncated (a zip archive without its end)" if head == b"PK\x03\x04"
                     else "it is not a file written by torch.save")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        name = re.search(r"GLOBAL ([\w.]+)", str(err))
        if name:
            raise refuse(f"it refers to {name.group(1)}, but {_HOLDS}; nothing in the file "
                         f"was run") from None
        raise refuse(f"its data is damaged ({_reason(err, 'WeightsUnpickler error:')}); "
                     f"nothing in the file was run") from None
    except Exception as err:  # a damaged or foreign archive: torch says which part
        raise refuse(f"it is a zip archive that torch.load cannot read "
                     f"({_reason(err)})") from None


def _reason(err: Exception, after: str = "") -> str:
    """The first line of what torch says in ``err`` (after ``after``), without its tags."""
    text = str(err).split(after, 1)[-1] if after else str(err)
    text = re.sub(r"\[enforce fail at [^]]*\]\s*\.?\s*", "", text).strip()
    return text.splitlines()[0].rstrip(".") if text else type(err).__name__


def _malformed(payload) -> str | None:
    """What makes ``payload`` other than what :func:`save` writes (None if nothing)."""
    if not isinstance(payload, dict):
        return f"it holds a {type(payload).__name__}, where a checkpoint is a dict"
    if "format" not in payload:
        if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            return ("it holds only named tensors, like the parameters that --save writes; "
                    "checkpoints are written with --checkpoint FILE --checkpoint-every N")
        return "it has no 'format' entry"
    if payload["format"] != FORMAT:
        return f"it is format {payload['format']!r}, and this parcourse reads format {FORMAT}"
    missing = [key for key in _ENTRIES if key not in payload]
    if missing:
        return f"it has no {', '.join(repr(key) for key in missing)} entry"
    for key, (test, expected) in _ENTRIES.items():
        if not test(payload[key]):
            return f"its {key!r} entry is not {expected}"
    return None


def compatible(saved: dict, config: dict) -> str | None:
    """Why a checkpoint (from :func:`read`) cannot continue ``config`` (None if it can).

    Model (and its sizes), data, batch, optimizer and seed must match, and the parameters
    and optimizer state must be those of ``config["model"]`` (names and shapes); the number
    of steps may grow, and the strategy and number of workers may change (the computation
    is the same).
    """
    sizes = SIZES.get(config.get("model"), ())
    for key in ("model", "dataset", *sizes, "batch_size", "optimizer", "lr", "seed"):
        if key in sizes and key not in saved["config"]:
            continue   # a size option newer than the checkpoint: the shapes below decide
        if saved["config"].get(key) != config.get(key):
            return (f"it was written with {key}={saved['config'].get(key)!r}, "
                    f"this run has {key}={config.get(key)!r}")
    problem = _mismatch(saved, config["model"], sizes_of(config["model"], config))
    if problem:
        return problem
    if len(saved["losses"]) != saved["next_step"]:
        return (f"it holds {len(saved['losses'])} losses for its {saved['next_step']} "
                f"steps done")
    if saved["next_step"] > config["steps"]:
        return f"it is already at step {saved['next_step']}, past --steps {config['steps']}"
    return None


def _mismatch(saved: dict, model_name: str, sizes: dict | None = None) -> str | None:
    """How the saved parameters and optimizer state differ from those of the model (of
    ``sizes``). A parameter registered under two names (the GPT's tied token table) is in
    the state_dict twice and in the optimizer once."""
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation
        model = build_model(model_name, **(sizes or {}))
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in saved["model"].items()}
    missing, extra = [k for k in expected if k not in found], [k for k in found if k not in expected]
    if missing or extra:
        return (f"its parameters are not those of the {model_name} model ("
                + "; ".join(f"{what}: {', '.join(keys[:3])}{', …' if len(keys) > 3 else ''}"
                            for what, keys in (("missing", missing), ("unknown", extra)) if keys)
                + ")")
    for key, shape in expected.items():
        if found[key] != shape:
            return (f"its {key} has shape {list(found[key])}, where the {model_name} model's "
                    f"has {list(shape)}")
    shapes = [tuple(p.shape) for p in model.parameters()]
    optimizer = saved["optimizer"]
    groups, state = optimizer.get("param_groups"), optimizer.get("state")
    if not (isinstance(groups, list) and len(groups) == 1 and isinstance(groups[0], dict)
            and isinstance(groups[0].get("params"), list)
            and len(groups[0]["params"]) == len(shapes) and isinstance(state, dict)
            and all(i in groups[0]["params"] and isinstance(s, dict) for i, s in state.items())):
        return (f"its optimizer state is not that of one optimizer over the {model_name} "
                f"model's {len(shapes)} parameters")
    for index, entries in state.items():
        shape = shapes[groups[0]["params"].index(index)]
        for name, value in entries.items():
            if isinstance(value, torch.Tensor) and value.dim() and tuple(value.shape) != shape:
                return (f"its optimizer's {name} of parameter {index} has shape "
                        f"{list(value.shape)}, where the parameter has {list(shape)}")
    return None


def merge_optimizer_states(parts: list[dict | None],
                           indices: list[list[int]] | None = None) -> dict:
    """The optimizer state of the unsplit model from those of its parts.

    ``parts[s]`` is ``optimizer.state_dict()`` of the optimizer over part s's parameters
    (None for a part without parameters). PyTorch numbers an optimizer's parameters
    0, 1, … in order. ``indices[s][i]`` is the whole model's number of part s's parameter
    i; by default the parts are consecutive slices of the model, so it is (number before
    part s) + i. A parameter that two parts hold (the GPT's tied token table: the
    embeddings on the first stage of a pipeline, the head on the last) has one number and
    is kept once, from the first part that holds it. A checkpoint stored this way resumes
    under any strategy, split or not.
    """
    held = [p for p in parts if p is not None]
    if indices is None:
        indices, offset = [], 0
        for part in held:
            count = len(part["param_groups"][0]["params"])
            indices.append(list(range(offset, offset + count)))
            offset += count
    else:
        indices = [numbers for part, numbers in zip(parts, indices) if part is not None]
    state, groups, seen = {}, [], set()
    for part, numbers in zip(held, indices):
        (group,) = part["param_groups"]
        new = [n for n in numbers if n not in seen]
        state.update({numbers[i]: value for i, value in part["state"].items()
                      if numbers[i] not in seen})
        seen.update(numbers)
        if groups:
            groups[0]["params"] += new
        else:
            groups = [dict(group, params=new)]
    if groups:
        groups[0]["params"] = sorted(groups[0]["params"])
    return {"state": dict(sorted(state.items())), "param_groups": groups}


def split_optimizer_state(full: dict, start: int, count: int,
                          indices: list[int] | None = None) -> dict:
    """The state of an optimizer over the whole model's parameters ``start … start+count−1``,
    or over those numbered ``indices`` (the inverse of :func:`merge_optimizer_states`)."""
    (group,) = full["param_groups"]
    numbers = list(range(start, start + count)) if indices is None else list(indices)
    return {"state": {i: full["state"][n] for i, n in enumerate(numbers) if n in full["state"]},
            "param_groups": [dict(group, params=list(range(len(numbers))))]}
