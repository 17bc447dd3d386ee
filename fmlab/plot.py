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


# --- attribution overlays (book/06_explanation.ipynb) ------------------------------------------

def _normalised(heat: torch.Tensor, percentile: float = 99.0):
    """A (H, W) map scaled to [0, 1] by its ``percentile``-th percentile (gradient maps are
    spiky: a few pixels would otherwise wash out the rest), negative values set to 0."""
    heat = heat.detach().float().cpu().clamp_min(0)
    top = torch.quantile(heat.flatten(), percentile / 100).item()
    return (heat / top).clamp(0, 1).numpy() if top > 0 else heat.numpy()


def overlay(ax, image: torch.Tensor, heat: torch.Tensor | None = None,
            mask: torch.Tensor | None = None, alpha: float = 0.85, cmap: str = "inferno",
            title: str | None = None):
    """Draw ``image`` (C, H, W) on ``ax``, a (H, W) map ``heat`` over it (scaled as
    :func:`_normalised`, transparent where it is 0), and ``mask``'s outline in cyan. Under a
    map the image is shown in dimmed grey, so that the map's colours stand out."""
    img, gray = _as_image(image)
    if heat is None:
        ax.imshow(img, cmap=gray, vmin=0, vmax=1)
    else:
        grey = img.mean(-1) if img.ndim == 3 else img
        ax.imshow(grey, cmap="gray", vmin=-0.3, vmax=1.6)
        h = _normalised(heat)
        ax.imshow(h, cmap=cmap, alpha=alpha * h, vmin=0, vmax=1)
    if mask is not None:
        ax.contour(mask.detach().float().cpu().numpy(), levels=[0.5], colors="cyan",
                   linewidths=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)
    return ax


def attribution_grid(images: torch.Tensor, maps: dict, masks: torch.Tensor | None = None,
                     row_titles: Sequence[str] | None = None, size: float = 1.35,
                     title: str | None = None):
    """One row per image: the image, then each ``maps[name]`` ((B, H, W)) overlaid on it,
    with the object's outline when ``masks`` (B, H, W) is given."""
    n, names = len(images), list(maps)
    if n == 0:
        raise ValueError("no images to show")
    fig, axes = plt.subplots(n, len(names) + 1, figsize=(size * (len(names) + 1), size * n + 0.4),
                             squeeze=False)
    for i in range(n):
        m = masks[i] if masks is not None else None
        overlay(axes[i, 0], images[i], mask=m, title="input" if i == 0 else None)
        if row_titles is not None:
            axes[i, 0].set_ylabel(row_titles[i], fontsize=8)
        for j, name in enumerate(names):
            overlay(axes[i, j + 1], images[i], maps[name][i], m, title=name if i == 0 else None)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
