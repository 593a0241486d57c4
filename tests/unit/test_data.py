"""parcourse.data: an offline data set, deterministic splits and a deterministic batch stream."""

import gzip
import struct

import numpy as np
import pytest
import torch

from parcourse import data
from parcourse.errors import DataUnavailableError


def test_digits_are_28_by_28_images_in_the_unit_range():
    ds = data.load_dataset("digits")
    assert ds.train_x.shape[1:] == (1, 28, 28) and ds.train_x.dtype == torch.float32
    assert len(ds.train_y) + len(ds.test_y) == 1797
    assert len(ds.test_y) == round(0.2 * 1797)
    assert 0.0 <= ds.train_x.min() and ds.train_x.max() <= 1.0
    assert set(ds.train_y.tolist()) == set(range(10)) == set(ds.test_y.tolist())


def test_the_split_is_a_function_of_the_seed():
    a, b, c = data.load_dataset(seed=0), data.load_dataset(seed=0), data.load_dataset(seed=1)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_y, c.train_y)


def test_upsampling_keeps_the_digit():
    from sklearn.datasets import load_digits

    raw = load_digits()
    originals = torch.tensor(raw.images, dtype=torch.float32).flatten(1) / 16
    ds = data.load_dataset("digits")
    images = torch.cat([ds.train_x, ds.test_x])
    labels = torch.cat([ds.train_y, ds.test_y])
    # pooling each 28×28 image back to 8×8 gives an image closest to its own original
    back = torch.nn.functional.adaptive_avg_pool2d(images, 8).flatten(1)
    distances = torch.cdist(back, originals)
    nearest = distances.argmin(dim=1)
    assert torch.equal(torch.tensor(raw.target)[nearest], labels)
    own = distances.min(dim=1).values
    assert (own < 0.5 * distances.median(dim=1).values).all()


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        data.load_dataset("cifar")
    with pytest.raises(ValueError, match="test_fraction must lie strictly between 0 and 1"):
        data.load_dataset("digits", test_fraction=1.0)


def test_global_batches_walk_through_shuffled_epochs():
    n, b = 10, 4
    stream = torch.cat([data.global_batch(n, b, s, seed=3) for s in range(5)])  # 20 = 2 epochs
    assert sorted(stream[:10].tolist()) == list(range(10))
    assert sorted(stream[10:].tolist()) == list(range(10))
    assert not torch.equal(stream[:10], stream[10:])
    assert torch.equal(data.global_batch(n, b, 2, seed=3), stream[8:12])
    assert not torch.equal(data.global_batch(n, b, 0, seed=4), stream[:4])


@pytest.mark.parametrize("batch, k", [(12, 4), (10, 3), (5, 5), (7, 2)])
def test_shards_partition_the_global_batch(batch, k):
    indices = data.global_batch(100, batch, 0)
    sizes = data.shard_sizes(batch, k)
    assert sum(sizes) == batch and max(sizes) - min(sizes) <= 1
    parts = [data.shard(indices, r, k) for r in range(k)]
    assert [len(p) for p in parts] == sizes
    assert torch.equal(torch.cat(parts), indices)


def test_a_batch_smaller_than_the_workers_is_refused():
    with pytest.raises(ValueError, match="a batch of 3 cannot give each of 4 workers a sample: "
                                         "use a batch of at least 4"):
        data.shard_sizes(3, 4)


def _write_idx(path, array, compress):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("compress", [False, True])
def test_idx_reader_round_trips(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x.idx.gz" if compress else "x.idx")
    _write_idx(path, array, compress)
    assert np.array_equal(data.read_idx(path), array)


def test_truncated_idx_is_reported(tmp_path):
    path = tmp_path / "bad.idx"
    _write_idx(path, np.zeros((4, 4)), compress=False)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"is truncated: header says \(4, 4\), found 13 bytes"):
        data.read_idx(path)


def test_mnist_offline_points_to_digits(tmp_path, monkeypatch):
    def no_network(url, filename):
        raise OSError("network unreachable")

    monkeypatch.setattr(data.urllib.request, "urlretrieve", no_network)
    with pytest.raises(DataUnavailableError) as error:
        data.load_dataset("mnist", root=tmp_path)
    assert str(error.value) == (f"MNIST could not be downloaded from {data.MNIST_URL} (network "
                                f"unreachable): use --dataset digits, which ships with "
                                f"scikit-learn and needs no network, or put the four MNIST .gz "
                                f"files in {tmp_path}")


def test_mnist_loads_from_files_already_there(tmp_path):
    for key, name in data.MNIST_FILES.items():
        n = 3 if key.startswith("train") else 2
        array = np.full((n, 28, 28), 255) if key.endswith("x") else np.arange(n)
        _write_idx(tmp_path / name, array, compress=True)
    ds = data.load_dataset("mnist", root=tmp_path)
    assert ds.train_x.shape == (3, 1, 28, 28) and ds.test_x.shape == (2, 1, 28, 28)
    assert ds.train_x.max() == 1.0 and ds.train_y.tolist() == [0, 1, 2]


def test_text_windows_are_bytes_with_the_next_byte_as_targets():
    ds = data.load_dataset("text", sequence=16)
    assert ds.train_x.shape[1:] == (16,) and ds.train_x.dtype == ds.train_y.dtype == torch.int64
    assert 0 <= ds.train_x.min() and ds.train_x.max() < 256
    assert torch.equal(ds.train_y[:, :-1], ds.train_x[:, 1:])      # shifted by one …
    assert torch.equal(ds.train_y[:-1, -1], ds.train_x[1:, 0])     # … across windows too
    assert data.load_dataset("text", sequence=16, dtype=torch.float64).train_x.dtype == torch.int64
    assert "window=(16,)" in repr(ds)


def test_the_text_splits_at_ninety_percent_and_is_the_same_every_time():
    corpus = data.text_corpus()
    assert len(corpus) > 100_000
    assert corpus.startswith(b"The typing module")   # TEXT_MODULES[0]'s docstring first
    cut = int(data.TEXT_TRAIN_FRACTION * len(corpus))
    a, b = data.load_dataset("text", sequence=32), data.load_dataset("text", sequence=32)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert bytes(a.train_x.flatten().tolist()) == corpus[:len(a.train_x) * 32]
    assert bytes(a.test_x.flatten().tolist()) == corpus[cut:cut + len(a.test_x) * 32]
    assert len(a.train_x) == (cut - 1) // 32 and len(a.test_x) == (len(corpus) - cut - 1) // 32
    with pytest.raises(ValueError, match="sequence must be 1 … "):
        data.load_dataset("text", sequence=data.text_max_sequence() + 1)
