"""The networks the chapters train, for any input size and channel count.

Explained in book/01_training_cnn.ipynb.
"""
from __future__ import annotations

import torch
from torch import nn


def _after(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial size after a conv or pool layer: floor((size + 2p - k) / s) + 1."""
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ValueError(f"an input of size {size} is too small for a kernel of {kernel}")
    return out


class SeedCNN(nn.Module):
    """The source documents' classifier, in PyTorch:
    Conv(32, 3×3) → ReLU → MaxPool(2) → Flatten → Dense(64) → ReLU → Dense(classes).

    The seeds use 32×32×3 inputs (``SeedCNN(3, 10, 32)``); MNIST is ``SeedCNN(1, 10, 28)``.
    The convolution has no padding, as Keras' default ``padding="valid"``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28):
        super().__init__()
        side = _after(_after(image_size, 3), 2, 2)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=3), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * side * side, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 32, side, side)
        return self.classifier(x)  # (B, classes)


class TwoConvNet(nn.Module):
    """A stronger small CNN: Conv(32)-Pool-Conv(64)-Pool-Dense(128)-Dense(classes), 3×3 'same'."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28):
        super().__init__()
        side = image_size // 2 // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * side * side, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # (B, 64, s, s) -> (B, classes)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, as it is usually trained today.

    The first convolution pads by 2 so that a 28×28 MNIST digit is seen as the paper's 32×32.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28):
        super().__init__()
        side = _after(_after(_after(_after(image_size, 5, 1, 2), 2, 2), 5), 2, 2)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * side * side, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LeNet300100(nn.Module):
    """The fully connected LeNet-300-100: input → 300 → 100 → classes, ReLU between."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_channels * image_size * image_size, 300), nn.ReLU(),
            nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with batch norm and an identity (or 1×1 projection) shortcut
    (He et al. 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A small residual network: a 3×3 stem, then stages of :class:`BasicBlock` that halve the
    resolution and double the width, global average pooling, and a linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 widths: tuple[int, ...] = (16, 32, 64), blocks_per_stage: int = 1):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
        c = widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks_per_stage):
                layers.append(BasicBlock(c, w, stride=2 if i > 0 and j == 0 else 1))
                c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, C, h, w) -> (B, C) -> (B, classes)


MODELS = {"seedcnn": SeedCNN, "twoconv": TwoConvNet, "lenet5": LeNet5,
          "lenet300100": LeNet300100, "resnet": SmallResNet}


def build(name: str, **kwargs) -> nn.Module:
    """A model by name: one of ``MODELS``."""
    if name.lower() not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name.lower()](**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
