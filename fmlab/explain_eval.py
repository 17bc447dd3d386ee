"""Is an attribution map right? Ground-truth scores, baselines, faithfulness curves, sanity
checks, and a data set with a planted shortcut.

Explained in book/06_explanation.ipynb; the methods themselves are in :mod:`fmlab.explain`.

Maps here are (B, H, W) tensors, one value per pixel, larger meaning "more important";
:func:`importance_map` turns (B, C, H, W) attributions into one. Masks are (B, H, W) bools,
true on the object (``fmlab.data.load("shapes", ...).masks``).
"""
from __future__ import annotations

import copy
from dataclasses import replace
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .adversarial import eval_mode
from .explain import gaussian_blur


def importance_map(attributions: torch.Tensor) -> torch.Tensor:
    """``Σ_c |a_c|``: (B, C, H, W) attributions to a (B, H, W) map of importance, whatever
    the sign (a pixel that lowers the score matters too)."""
    if attributions.dim() != 4:
        raise ValueError("expected (B, C, H, W) attributions, got shape "
                         f"{tuple(attributions.shape)}")
    return attributions.detach().abs().sum(1)


# ---------------------------------------------------------------------------------------------
# Baselines that need no model
# ---------------------------------------------------------------------------------------------

def random_map(n: int, size: tuple[int, int], generator: torch.Generator | None = None
               ) -> torch.Tensor:
    """Uniform noise: its expected pointing-game hit rate and mask mass are the mask's area
    fraction (every pixel is equally likely to be the maximum, and carries equal mass)."""
    return torch.rand(n, *size, generator=generator)


def centre_prior(n: int, size: tuple[int, int], sigma: float = 0.25) -> torch.Tensor:
    """A Gaussian bump at the image centre, of std ``sigma`` × the image size: "objects tend
    to be in the middle"."""
    h, w = size
    yy = (torch.arange(h, dtype=torch.float32) - (h - 1) / 2) / (sigma * h)
    xx = (torch.arange(w, dtype=torch.float32) - (w - 1) / 2) / (sigma * w)
    bump = torch.exp(-0.5 * (yy[:, None] ** 2 + xx[None, :] ** 2))
    return bump.expand(n, h, w).clone()


def sobel_map(x: torch.Tensor) -> torch.Tensor:
    """The Sobel edge magnitude ``sqrt(G_x² + G_y²)`` of each colour channel, summed over
    channels (replicate padding): (B, C, H, W) images to a (B, H, W) map. It needs no model,
    yet looks much like many saliency maps (Adebayo et al. 2018)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]],
                      dtype=x.dtype, device=x.device)
    c = x.shape[1]
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, kx.expand(c, 1, 3, 3), groups=c)
    gy = F.conv2d(padded, kx.t().expand(c, 1, 3, 3), groups=c)
    return torch.sqrt(gx ** 2 + gy ** 2).sum(1)


# ---------------------------------------------------------------------------------------------
# Scores against the object masks
# ---------------------------------------------------------------------------------------------

def _check_maps(maps: torch.Tensor, masks: torch.Tensor) -> None:
    if maps.dim() != 3 or masks.shape != maps.shape:
        raise ValueError(f"maps and masks must both be (B, H, W); got {tuple(maps.shape)} "
                         f"and {tuple(masks.shape)} (use importance_map for (B, C, H, W))")


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """Zhang et al. (2018): a hit when the map's maximum lies on the object. (B,) bools.

    The maximum of the map as given (signed: for a map of evidence for the class, the
    strongest evidence); ties go to the first pixel in row-major order. ``tolerance`` counts
    a maximum within that many pixels of the mask (Chebyshev distance) as a hit; Zhang et
    al. use 15 pixels on full-size images, this chapter uses 0.
    """
    _check_maps(maps, masks)
    masks = masks.bool()
    if tolerance > 0:
        masks = F.max_pool2d(masks[:, None].float(), 2 * tolerance + 1, 1, tolerance)[:, 0] > 0
    peak = maps.flatten(1).argmax(1)  # (B,)
    return masks.flatten(1).gather(1, peak[:, None]).squeeze(1)


def mask_mass(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The share of the map's positive mass on the object: ``Σ_mask m⁺ / Σ m⁺`` with
    ``m⁺ = max(m, 0)``; 0 for a map with no positive value. (B,) floats in [0, 1]."""
    _check_maps(maps, masks)
    pos = maps.clamp_min(0).flatten(1).double()
    inside = (pos * masks.flatten(1).double()).sum(1)
    total = pos.sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-300), torch.zeros_like(total)).float()


# ---------------------------------------------------------------------------------------------
# Faithfulness: deletion and insertion (Petsiuk et al. 2018)
# ---------------------------------------------------------------------------------------------

def perturbation_curve(model: nn.Module, x: torch.Tensor, target, maps: torch.Tensor,
                       mode: str = "deletion", steps: int = 16,
                       substrate: torch.Tensor | None = None) -> torch.Tensor:
    """The target class's probability as pixels are removed (``"deletion"``) or restored
    (``"insertion"``) in the order ``maps`` ranks them, most important first.

    Deletion starts from ``x`` and sets pixels (all channels) to the substrate (default:
    black); insertion starts from the substrate (default: ``x`` blurred with σ = 2 pixels, as
    in RISE) and puts ``x``'s pixels back. Step k changes the first ``round(k·H·W/steps)``
    pixels. Returns (B, steps + 1) probabilities; see :func:`curve_auc`.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    b, c, h, w = x.shape
    if maps.shape != (b, h, w):
        raise ValueError(f"maps must be (B, H, W) = {(b, h, w)}, got {tuple(maps.shape)}")
    x = x.detach()
    if substrate is None:
        substrate = torch.zeros_like(x) if mode == "deletion" else gaussian_blur(x, 2.0)
    order = maps.flatten(1).to(x.device).argsort(dim=1, descending=True, stable=True)  # (B, HW)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=x.device)
                                            .expand(b, -1).contiguous())
    t = torch.as_tensor(target, device=x.device).long().expand(b)
    probs = []
    with torch.no_grad(), eval_mode(model):
        for k in range(steps + 1):
            changed = (rank < round(k * h * w / steps)).view(b, 1, h, w)
            start, end = (x, substrate) if mode == "deletion" else (substrate, x)
            xk = torch.where(changed, end, start)
            probs.append(F.softmax(model(xk), 1).gather(1, t[:, None]).squeeze(1))
    return torch.stack(probs, 1)


def curve_auc(curves: torch.Tensor) -> torch.Tensor:
    """Area under (B, K+1) curves sampled at fractions 0, 1/K, ..., 1 (trapezoid rule)."""
    return ((curves[:, 1:] + curves[:, :-1]) / 2).mean(1)


# ---------------------------------------------------------------------------------------------
# Sanity checks (Adebayo et al. 2018)
# ---------------------------------------------------------------------------------------------

def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation between matching rows of ``a`` and ``b`` (flattened from
    dim 1), ties given their average rank. (B,) floats; nan where a row is constant."""
    from scipy.stats import rankdata

    ra = rankdata(a.detach().flatten(1).cpu().double().numpy(), axis=1)
    rb = rankdata(b.detach().flatten(1).cpu().double().numpy(), axis=1)
    ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (ra * rb).sum(1) / np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
    return torch.from_numpy(rho).float()


def randomise(module: nn.Module, seed: int) -> None:
    """Re-initialise every layer inside ``module`` with its own initialiser
    (``reset_parameters``: fresh random weights; batch norm back to its initial state)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
            if hasattr(m, "reset_running_stats"):
                m.reset_running_stats()


def cascading_randomisation(model: nn.Module, layers: Sequence[str], seed: int = 0
                            ) -> Iterator[tuple[str, nn.Module]]:
    """Adebayo et al.'s cascade: yield ``(name, copy)`` with the named layers re-initialised
    cumulatively, in the order given (top layer first). ``model`` itself is not changed."""
    randomised = copy.deepcopy(model)
    for i, name in enumerate(layers):
        randomise(randomised.get_submodule(name), seed + i)
        yield name, randomised


# ---------------------------------------------------------------------------------------------
# Data: shuffled labels, and a planted shortcut
# ---------------------------------------------------------------------------------------------

def shuffled_labels(data, seed: int = 0):
    """The same images with their labels permuted at random: nothing left to learn but the
    images themselves (the data randomisation test)."""
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return replace(data, y=data.y[perm.to(data.y.device)], name=f"{data.name}-shuffled")


PATCH_COLOURS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0],
                              [1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0],
                              [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.5, 0.0],
                              [0.5, 0.0, 1.0]])


def patch_region(size: tuple[int, int], patch: int = 3) -> torch.Tensor:
    """(H, W) bools: the top-left ``patch``×``patch`` corner where the shortcut sits."""
    region = torch.zeros(size, dtype=torch.bool)
    region[:patch, :patch] = True
    return region


def with_corner_patch(data, informative: bool, patch: int = 3, seed: int = 0):
    """A copy of ``data`` with a ``patch``×``patch`` square of solid colour in the top-left
    corner. ``informative=True``: the colour names the class (red for class 0, green for 1,
    ...): a shortcut that predicts the label perfectly. ``False``: the colour of a class drawn
    at random, so it carries no information. Object masks lose the patch's pixels."""
    k = len(data.classes)
    if k > len(PATCH_COLOURS):
        raise ValueError(f"at most {len(PATCH_COLOURS)} classes have a patch colour, got {k}")
    if informative:
        cls = data.y.cpu()
    else:
        cls = torch.randint(0, k, (len(data),), generator=torch.Generator().manual_seed(seed))
    x = data.x.clone()
    colours = PATCH_COLOURS[cls][:, :x.shape[1]].to(x.device, x.dtype)  # (B, C)
    x[:, :, :patch, :patch] = colours[:, :, None, None]
    masks = None
    if data.masks is not None:
        masks = data.masks & ~patch_region(tuple(x.shape[-2:]), patch).to(data.masks.device)
    tag = "shortcut" if informative else "random-patch"
    return replace(data, x=x, masks=masks, name=f"{data.name}-{tag}")


__all__ = ["importance_map", "random_map", "centre_prior", "sobel_map", "pointing_game",
           "mask_mass", "perturbation_curve", "curve_auc", "spearman", "randomise",
           "cascading_randomisation", "shuffled_labels", "PATCH_COLOURS", "patch_region",
           "with_corner_patch"]
