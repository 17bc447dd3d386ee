"""Plots the chapters share: learning curves, image grids, confusion matrices.

Explained in book/01_training_cnn.ipynb. Each function returns its matplotlib Figure; in a
notebook, end the call with ``;`` so that only the picture shows.
"""
from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
import torch


def curves(history, title: str | None = None):
    """Loss and accuracy per epoch, training and (when recorded) validation."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
    epochs = range(1, history.epochs + 1)
    ax_loss.plot(epochs, history.train_loss, "o-", label="train")
    ax_acc.plot(epochs, history.train_acc, "o-", label="train")
    if history.val_loss:
        ax_loss.plot(epochs, history.val_loss, "s-", label="validation")
        ax_acc.plot(epochs, history.val_acc, "s-", label="validation")
    if history.best_epoch:
        for ax in (ax_loss, ax_acc):
            ax.axvline(history.best_epoch, color="grey", ls=":", label="best epoch")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _as_image(img: torch.Tensor):
    img = img.detach().float().cpu()
    if img.dim() == 3 and img.shape[0] == 1:
        return img[0].numpy(), "gray"
    if img.dim() == 3:
        return img.permute(1, 2, 0).clamp(0, 1).numpy(), None  # (C, H, W) -> (H, W, C)
    return img.numpy(), "gray"


def image_grid(x: torch.Tensor, labels: Sequence | torch.Tensor | None = None,
               preds: Sequence | torch.Tensor | None = None, classes: Sequence[str] | None = None,
               ncols: int = 8, title: str | None = None, size: float = 1.3):
    """Images in a grid, titled "label" or "label → prediction" (red when they differ)."""
    n = len(x)
    if n == 0:
        raise ValueError("no images to show")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.3), squeeze=False)
    name = (lambda i: classes[int(i)]) if classes is not None else (lambda i: str(int(i)))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img, cmap = _as_image(x[i])
        ax.imshow(img, cmap=cmap, vmin=0, vmax=1)
        if labels is not None and preds is not None:
            wrong = int(labels[i]) != int(preds[i])
            ax.set_title(f"{name(labels[i])} → {name(preds[i])}", fontsize=8,
                         color="crimson" if wrong else "black")
        elif labels is not None:
            ax.set_title(name(labels[i]), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion(cm: torch.Tensor, classes: Sequence[str], title: str = "confusion matrix",
              normalize: bool = False):
    """A confusion matrix (rows: true class, columns: predicted), counts written in the cells."""
    cm = cm.detach().cpu().float()
    shown = cm / cm.sum(1, keepdim=True).clamp_min(1) if normalize else cm
    k = len(classes)
    fig, ax = plt.subplots(figsize=(0.45 * k + 2.2, 0.45 * k + 1.8))
    im = ax.imshow(shown.numpy(), cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set(xticks=range(k), yticks=range(k), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title=title)
    top = shown.max().item() or 1.0
    for i in range(k):
        for j in range(k):
            value = shown[i, j].item()
            if value:
                ax.text(j, i, f"{value:.2f}" if normalize else f"{int(value)}", ha="center",
                        va="center", fontsize=7, color="white" if value > top / 2 else "black")
    fig.tight_layout()
    return fig
