"""Offline data for every chapter, and the deterministic batch stream (chapters 3–5).

``load_dataset("digits")`` uses scikit-learn's handwritten digits (1,797 images of
8×8 pixels, a data file shipped inside the scikit-learn package, so it works without a
network),
upsampled to 28×28 so that it feeds the 784-input ``SimpleModel`` exactly like MNIST.
``load_dataset("mnist")`` downloads the real MNIST where the network allows.

Images are float32 tensors of shape (N, 1, 28, 28) with values in [0, 1]; labels are
int64. The train/test split is a fixed function of ``seed``.

``load_dataset("text", sequence=T)`` is the GPT's data (:mod:`parcourse.gpt`), also
offline: the docstrings of a fixed list of standard-library modules (:data:`TEXT_MODULES`,
read from their source files with :mod:`ast`, nothing imported), about 230 kB of English
and code, the same for a given Python version. Its tokens are the UTF-8 bytes (ids
0 … 255). The first 90 % of the text trains, the rest tests; each is cut into windows of
T tokens, x = bytes s … s+T−1, and the targets are the next bytes, y = bytes s+1 … s+T
(int64, both). A sample is a window, so batches and shards below work unchanged.

The batch stream is what makes parallel runs comparable with a single-device run:
step ``s`` always trains on the same ``batch_size`` global indices, whatever the number
of workers, and worker ``k`` of ``K`` takes the ``k``-th contiguous shard of them
(shards differ in size by at most one sample when ``K`` does not divide the batch).
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import os
import struct
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataUnavailableError

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}


# The text data set: these modules' docstrings, in this order (prose-rich, top-level
# modules, so that finding their files imports nothing).
TEXT_MODULES = ("typing", "doctest", "logging", "inspect", "statistics", "threading",
                "configparser", "subprocess", "shutil", "collections", "argparse", "json",
                "pathlib", "random", "textwrap")
TEXT_TRAIN_FRACTION = 0.9


@dataclass(frozen=True)
class Dataset:
    """A train/test split: 1×28×28 images with integer labels, or windows of token ids with
    the next token of each position as its labels."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def to(self, dtype: torch.dtype) -> "Dataset":
        """The same data set with its images in ``dtype`` (labels and token ids stay int64)."""
        if self.train_x.dtype == dtype or not self.train_x.is_floating_point():
            return self
        return Dataset(self.name, self.train_x.to(dtype), self.train_y,
                       self.test_x.to(dtype), self.test_y)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={len(self.train_y)}, "
                f"test={len(self.test_y)}, "
                f"{'image' if self.train_x.is_floating_point() else 'window'}="
                f"{tuple(self.train_x.shape[1:])})")


def load_dataset(name: str = "digits", *, test_fraction: float = 0.2, seed: int = 0,
                 root: str | os.PathLike | None = None,
                 dtype: torch.dtype = torch.float32, sequence: int = 32) -> Dataset:
    """Load ``"digits"`` (offline), ``"mnist"`` (downloaded once into ``root``), with its
    images in ``dtype``, or ``"text"`` (offline) in windows of ``sequence`` tokens."""
    if name == "digits":
        return _load_digits(test_fraction, seed).to(dtype)
    if name == "mnist":
        return _load_mnist(Path(root) if root else _default_root() / "mnist").to(dtype)
    if name == "text":
        return _load_text(sequence)
    raise ValueError(f"unknown dataset {name!r}: choose 'digits' (offline), 'mnist' or "
                     f"'text' (offline)")


@lru_cache(maxsize=1)
def text_corpus() -> bytes:
    """The docstrings of :data:`TEXT_MODULES` in source order, UTF-8, one blank line apart."""
    def docstrings(node):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            text = ast.get_docstring(node)
            if text:
                yield text
            for child in node.body:
                yield from docstrings(child)

    parts = []
    for module in TEXT_MODULES:
        path = importlib.util.find_spec(module).origin
        with open(path, encoding="utf-8") as f:
            parts.extend(docstrings(ast.parse(f.read(), filename=path)))
    return "\n\n".join(parts).encode("utf-8")


def windows(tokens: torch.Tensor, sequence: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Consecutive windows of ``sequence`` tokens and their next-token targets (the window
    shifted by one): ⌊(n − 1)/T⌋ of each, (N, T)."""
    count = (len(tokens) - 1) // sequence
    x = tokens[:count * sequence].view(count, sequence)
    y = tokens[1:count * sequence + 1].view(count, sequence)
    return x, y


def text_max_sequence() -> int:
    """The longest window the text's test part holds (a window of T needs T + 1 bytes)."""
    return len(text_corpus()) - int(TEXT_TRAIN_FRACTION * len(text_corpus())) - 1


def _load_text(sequence: int) -> Dataset:
    if not 1 <= sequence <= text_max_sequence():
        raise ValueError(f"sequence must be 1 … {text_max_sequence()} tokens (the text's "
                         f"test part holds one window of that), got {sequence}")
    tokens = torch.frombuffer(bytearray(text_corpus()), dtype=torch.uint8).to(torch.int64)
    cut = int(TEXT_TRAIN_FRACTION * len(tokens))
    train_x, train_y = windows(tokens[:cut], sequence)
    test_x, test_y = windows(tokens[cut:], sequence)
    return Dataset("text", train_x, train_y, test_x, test_y)


def _load_digits(test_fraction: float, seed: int) -> Dataset:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    pixels, target = _read_digits_file()
    images = torch.tensor(pixels, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
    images = images.clamp_(0.0, 1.0)
    labels = torch.tensor(target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(labels)))
    test, train = order[:n_test], order[n_test:]
    return Dataset("digits", images[train], labels[train], images[test], labels[test])


def _read_digits_file() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits (64 pixel values 0–16, then the label) from scikit-learn's data file.

    Read directly, without importing scikit-learn: that import costs every spawned
    worker about a second and starts joblib's machinery for nothing.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the digits data set ships with scikit-learn: pip install scikit-learn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return table[:, :64], table[:, 64].astype(np.int64)


def _default_root() -> Path:
    return Path(os.environ.get("PARCOURSE_DATA", Path.home() / ".cache" / "parcourse"))


def _load_mnist(folder: Path) -> Dataset:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for key, filename in MNIST_FILES.items():
        path = folder / filename
        if not path.exists():
            try:
                urllib.request.urlretrieve(MNIST_URL + filename, path.with_suffix(".part"))
            except OSError as err:
                raise DataUnavailableError(
                    f"MNIST could not be downloaded from {MNIST_URL} ({_reason(err)}): "
                    f"use --dataset digits, which ships with scikit-learn and needs no "
                    f"network, or put the four MNIST .gz files in {folder}") from None
            path.with_suffix(".part").rename(path)
        arrays[key] = read_idx(path)
    images = {k: torch.from_numpy(arrays[k].astype(np.float32) / 255.0).unsqueeze(1)
              for k in ("train_x", "test_x")}
    labels = {k: torch.from_numpy(arrays[k].astype(np.int64)) for k in ("train_y", "test_y")}
    return Dataset("mnist", images["train_x"], labels["train_y"], images["test_x"],
                   labels["test_y"])


def _reason(err: OSError) -> str:
    """The innermost reason of a failed download, in one line."""
    reason = getattr(err, "reason", None) or err
    return " ".join(str(reason).split())


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not, into a uint8 array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        zero, dtype_code, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype_code != 0x08:
            raise ValueError(f"{path} is not an unsigned-byte IDX file")
        shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        data = np.frombuffer(f.read(), dtype=np.uint8)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {data.size} bytes")
    return data.reshape(shape)


@lru_cache(maxsize=8)
def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def global_batch(n: int, batch_size: int, step: int, seed: int = 0) -> torch.Tensor:
    """Indices of the global batch at ``step``: a slice of a stream of shuffled epochs.

    The stream is epoch 0's permutation of ``range(n)``, then epoch 1's, and so on, so a
    batch may span two epochs and every sample is seen once per epoch.
    """
    if n < 1 or batch_size < 1 or step < 0:
        raise ValueError(f"need n ≥ 1, batch_size ≥ 1, step ≥ 0; got {n}, {batch_size}, {step}")
    start, end = step * batch_size, (step + 1) * batch_size
    parts = []
    while start < end:
        epoch, offset = divmod(start, n)
        take = min(end - start, n - offset)
        parts.append(_epoch_permutation(n, seed, epoch)[offset:offset + take])
        start += take
    return torch.cat(parts)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, end)`` of worker ``rank``'s contiguous shard of ``n`` items.

    The first ``n mod K`` shards get ``⌈n/K⌉`` items, the others ``⌊n/K⌋``; the shards
    cover ``0 … n-1`` exactly once, in order.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 ≤ rank < world_size, got rank {rank} of {world_size}")
    if n < 0:
        raise ValueError(f"n must be ≥ 0, got {n}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_sizes(batch_size: int, world_size: int) -> list[int]:
    """B_k for k = 0…K−1 of a global batch: every worker gets at least one sample."""
    if batch_size < world_size:
        raise ValueError(f"a batch of {batch_size} cannot give each of {world_size} workers "
                         f"a sample: use a batch of at least {world_size}")
    return [end - start for start, end in
            (shard_bounds(batch_size, k, world_size) for k in range(world_size))]


def shard(indices: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Worker ``rank``'s contiguous shard of a global batch (sizes from :func:`shard_sizes`)."""
    shard_sizes(len(indices), world_size)  # refuses a batch smaller than the workers
    start, end = shard_bounds(len(indices), rank, world_size)
    return indices[start:end]
