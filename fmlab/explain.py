"""Attribution methods and feature visualisation, written out from their definitions.

Explained in book/06_explanation.ipynb; scored against ground truth in
:mod:`fmlab.explain_eval`.

Every attribution method takes a classifier ``model``, images ``x`` (B, C, H, W) and the class
``target`` to explain (an int or a (B,) tensor of ints), and explains the class's *logit*
``f_c(x)`` (not its probability, not the loss). Each returns attributions of ``x``'s shape,
except Grad-CAM, whose map has one channel: (B, 1, H, W). Gradients are taken with respect to
the input only (``torch.autograd.grad``), in eval mode, so the model's parameters, their
``.grad`` and its train/eval mode are left as they were. The tests check each method against
its captum counterpart (Kokhlikyan et al. 2020) on the chapter's model.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .adversarial import eval_mode
from .models import GlobalMaxCNN

# Sizes of book/06_explanation.ipynb. ``n_train``: shapes images per model; ``seeds``: the
# models trained (a claim that depends on training must hold for each of them); ``n_eval``:
# test images the ground-truth table scores; ``n_curve``, ``n_shortcut``, ``n_sanity``: the
# images of the deletion/insertion curves, the shortcut's maps and the randomisation tests;
# ``shuffled_*``: the models that memorise shuffled labels; ``gap_*``: the completeness-gap
# plot; ``am_steps``: activation-maximisation steps; ``shortcut_*``: the training images and
# epochs of the networks that learn the planted shortcut (an easy cue, learnt fast);
# ``baseline_n``, ``noise_draws``: the images and uniform-noise baselines of IG's baseline
# comparison; ``n_shapley``, ``shapley_perms``, ``lime_samples``: the images, random orders and
# LIME samples of the Shapley-value and LIME maps.
SIZES = {
    "quick": {"n_train": 2000, "n_test": 300, "epochs": 5, "batch_size": 32, "lr": 3e-3,
              "seeds": [0, 1, 2], "n_eval": 80, "n_curve": 20, "curve_steps": 10,
              "n_shortcut": 24, "n_sanity": 12, "ig_steps": 16, "sg_samples": 8,
              "occ_window": 4, "occ_stride": 4, "shuffled_n": 256, "shuffled_epochs": 12,
              "shortcut_n": 1000, "shortcut_epochs": 2,
              "gap_steps": [2, 4, 8, 16, 32, 64], "gap_n": 16, "am_steps": 80,
              "baseline_n": 16, "noise_draws": 4, "n_shapley": 12, "shapley_perms": 16,
              "lime_samples": 128},
    "full": {"n_train": 20000, "n_test": 5000, "epochs": 10, "batch_size": 64, "lr": 2e-3,
             "seeds": [0, 1, 2, 3, 4], "n_eval": 2000, "n_curve": 1000, "curve_steps": 64,
             "n_shortcut": 1000, "n_sanity": 200, "ig_steps": 64, "sg_samples": 50,
             "occ_window": 4, "occ_stride": 1, "shuffled_n": 2000, "shuffled_epochs": 30,
             "shortcut_n": 20000, "shortcut_epochs": 10,
             "gap_steps": [2, 4, 8, 16, 32, 64, 128, 256, 512], "gap_n": 64, "am_steps": 500,
             "baseline_n": 500, "noise_draws": 16, "n_shapley": 100, "shapley_perms": 64,
             "lime_samples": 500},
    "smoke": {"n_train": 256, "n_test": 128, "epochs": 1, "seeds": [0, 1, 2], "n_eval": 16,
              "n_curve": 8, "curve_steps": 4, "n_shortcut": 8, "n_sanity": 4, "ig_steps": 4,
              "sg_samples": 2, "occ_stride": 4, "shuffled_n": 64, "shuffled_epochs": 1,
              "shortcut_n": 256, "shortcut_epochs": 1,
              "gap_steps": [2, 4], "gap_n": 2, "am_steps": 3,
              "baseline_n": 4, "noise_draws": 2, "n_shapley": 4, "shapley_perms": 2,
              "lime_samples": 16},
}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def _targets(target, n: int, device) -> torch.Tensor:
    t = torch.as_tensor(target, device=device).long()
    if t.dim() == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"target must be an int or a tensor of {n} class indices, "
                         f"got shape {tuple(t.shape)}")
    return t


def _check(x: torch.Tensor) -> None:
    if not torch.is_tensor(x) or x.dim() != 4 or not torch.is_floating_point(x):
        raise ValueError("x must be a float tensor of images (B, C, H, W), got "
                         f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}")


def target_logit(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """``f_c(x)`` for each image: the logit of its target class, shape (B,)."""
    logits = model(x)  # (B, classes)
    return logits.gather(1, _targets(target, len(x), x.device)[:, None]).squeeze(1)


def input_gradient(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """``∂f_c/∂x`` for each image (same shape as ``x``), in eval mode, input only."""
    _check(x)
    x = x.detach().requires_grad_(True)
    with eval_mode(model), torch.enable_grad():
        (grad,) = torch.autograd.grad(target_logit(model, x, target).sum(), x)
    return grad


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur each channel of (B, C, H, W) images with a Gaussian of std ``sigma`` pixels
    (kernel radius 3σ, reflect padding)."""
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # along W
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # along H


# ---------------------------------------------------------------------------------------------
# Gradient maps
# ---------------------------------------------------------------------------------------------

def saliency(model: nn.Module, x: torch.Tensor, target, abs: bool = True) -> torch.Tensor:
    """Gradient saliency (Simonyan et al. 2014): ``|∂f_c/∂x|`` (``abs=False``: signed)."""
    grad = input_gradient(model, x, target)
    return grad.abs() if abs else grad


def input_x_gradient(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """Input × gradient: ``x ⊙ ∂f_c/∂x``, the first-order Taylor term of ``f_c`` at 0."""
    return x.detach() * input_gradient(model, x, target)


def smoothgrad(model: nn.Module, x: torch.Tensor, target, samples: int = 25,
               stdev: float = 0.15, abs: bool = True,
               generator: torch.Generator | None = None, batch_size: int = 256
               ) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): saliency averaged over ``samples`` noisy copies
    ``x + ε``, ``ε ~ N(0, stdev²)``: ``(1/n) Σ_i |∂f_c/∂x (x + ε_i)|`` (``abs=False``: the
    mean of the signed gradients).

    The noise for image b, sample i is row ``b * samples + i`` of one draw
    ``torch.normal(0, stdev)`` of shape (B·samples, C, H, W), from ``generator`` (on its
    device) or from torch's global generator: the draw captum's ``NoiseTunnel`` makes, so a
    seeded run of both gives the same noise. Gradients are taken ``batch_size`` rows at a time.
    """
    _check(x)
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    b = len(x)
    gen_device = generator.device if generator is not None else x.device
    std = torch.full((b * samples, *x.shape[1:]), float(stdev), device=gen_device)
    noise = torch.normal(0.0, std, generator=generator).to(x.device, x.dtype)
    noisy = x.detach().repeat_interleave(samples, 0) + noise  # (B*samples, C, H, W)
    t = _targets(target, b, x.device).repeat_interleave(samples)
    grads = torch.cat([saliency(model, noisy[i:i + batch_size], t[i:i + batch_size], abs=abs)
                       for i in range(0, len(noisy), batch_size)])
    return grads.view(b, samples, *x.shape[1:]).mean(1)


def guided_backprop(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """Guided backpropagation (Springenberg et al. 2015): the backward pass of ``∂f_c/∂x``,
    except that every ``nn.ReLU`` passes back only the positive part of what it receives::

        gradient:         R_in = 1[z > 0] ⊙ R_out
        guided backprop:  R_in = 1[z > 0] ⊙ max(R_out, 0)

    (``z``: the ReLU's input; the result is shaped like ``x``). A full backward hook on each
    ``nn.ReLU`` sees ``1[z > 0] ⊙ R_out`` and clips it, as captum's ``GuidedBackprop`` does.
    """
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ValueError("guided backpropagation needs the model's ReLUs as nn.ReLU modules "
                         "(a functional F.relu cannot be hooked); this model has none")
    handles = [m.register_full_backward_hook(lambda mod, g_in, g_out: (g_in[0].clamp_min(0),))
               for m in relus]
    try:
        return input_gradient(model, x, target)
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------------------------
# Integrated gradients
# ---------------------------------------------------------------------------------------------

RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
         "gausslegendre")


def quadrature(rule: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``α_k`` in [0, 1] and weights ``w_k`` with ``∫₀¹ g ≈ Σ_k w_k g(α_k)``.

    Riemann rules use ``steps`` equal intervals (left, right or middle point of each); the
    trapezoid rule uses ``steps`` points ``0, 1/(m-1), ..., 1`` with weights ``1/(m-1)``,
    halved at both ends; Gauss–Legendre uses the ``steps`` roots of the Legendre polynomial,
    exact for polynomials of degree up to ``2·steps - 1``. Every rule's weights sum to 1.
    """
    m = int(steps)
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    if m < (2 if rule == "riemann_trapezoid" else 1):
        raise ValueError(f"{rule} needs at least {2 if rule == 'riemann_trapezoid' else 1} "
                         f"steps, got {steps}")
    k = torch.arange(m, dtype=torch.float64)
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(m)
        return torch.from_numpy(0.5 * (nodes + 1)), torch.from_numpy(0.5 * weights)
    if rule == "riemann_trapezoid":
        w = torch.full((m,), 1.0 / (m - 1), dtype=torch.float64)
        w[0] = w[-1] = 0.5 / (m - 1)
        return k / (m - 1), w
    offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[rule]
    return (k + offset) / m, torch.full((m,), 1.0 / m, dtype=torch.float64)


class IGResult(NamedTuple):
    """Integrated gradients and the completeness gap ``|Σ_i IG_i − (f_c(x) − f_c(x′))|``."""
    attributions: torch.Tensor  # like x
    gap: torch.Tensor  # (B,)


def integrated_gradients(model: nn.Module, x: torch.Tensor, target,
                         baseline: torch.Tensor | float | None = None, steps: int = 50,
                         rule: str = "gausslegendre", batch_size: int = 256) -> IGResult:
    """Integrated gradients (Sundararajan et al. 2017) along the straight path from the
    baseline ``x′`` (default: black, all zeros) to ``x``::

        IG_i = (x_i − x′_i) · ∫₀¹ ∂f_c/∂x_i (x′ + α (x − x′)) dα
             ≈ (x_i − x′_i) · Σ_k w_k ∂f_c/∂x_i (x′ + α_k (x − x′))

    with the quadrature ``rule`` of :func:`quadrature`. Completeness says
    ``Σ_i IG_i = f_c(x) − f_c(x′)``; the returned ``gap`` measures how far the sum is from it.
    ``batch_size`` bounds how many images go through the model at once (small batches are
    faster on a CPU: large ones spend their time allocating memory).
    """
    _check(x)
    x = x.detach()
    base = torch.zeros_like(x) if baseline is None else torch.as_tensor(
        baseline, dtype=x.dtype, device=x.device).expand_as(x)
    alphas, weights = quadrature(rule, steps)
    t = _targets(target, len(x), x.device)
    total = torch.zeros_like(x)
    per = max(1, batch_size // len(x))  # path points per chunk
    for start in range(0, len(alphas), per):
        a = alphas[start:start + per].to(x.device, x.dtype)  # (k,)
        w = weights[start:start + per].to(x.device, x.dtype)
        path = base + a.view(-1, 1, 1, 1, 1) * (x - base)  # (k, B, C, H, W)
        grads = input_gradient(model, path.flatten(0, 1), t.repeat(len(a)))
        total += (grads.view(len(a), *x.shape) * w.view(-1, 1, 1, 1, 1)).sum(0)
    attributions = (x - base) * total
    with torch.no_grad(), eval_mode(model):
        rise = target_logit(model, x, t) - target_logit(model, base, t)
    gap = (attributions.flatten(1).sum(1) - rise).abs()
    return IGResult(attributions, gap)


# ---------------------------------------------------------------------------------------------
# Grad-CAM and occlusion
# ---------------------------------------------------------------------------------------------

def _layer(model: nn.Module, layer: str | nn.Module) -> nn.Module:
    if isinstance(layer, nn.Module):
        return layer
    try:
        return model.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise ValueError(f"the model has no layer {layer!r}; its layers are: "
                         f"{', '.join(names)}") from None


def grad_cam(model: nn.Module, x: torch.Tensor, target, layer: str | nn.Module,
             upsample: str | None = "bilinear", relu: bool = True) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) on the output ``A`` (B, K, h, w) of ``layer`` (a name
    such as ``"features.block3"``, or the module)::

        α_k = mean_{u,v} ∂f_c/∂A^k_{uv},     L = ReLU(Σ_k α_k A^k)

    returned as (B, 1, h, w), or upsampled to x's size with ``F.interpolate(mode=upsample)``
    after the ReLU (``upsample=None``: at the layer's resolution). ``relu=False`` keeps the
    negative part (captum's ``LayerGradCam`` default).
    """
    _check(x)
    module = _layer(model, layer)
    seen = {}
    handle = module.register_forward_hook(lambda m, i, out: seen.__setitem__("A", out))
    try:
        with eval_mode(model), torch.enable_grad():
            score = target_logit(model, x.detach(), target).sum()
            if "A" not in seen or not torch.is_tensor(seen["A"]) or seen["A"].dim() != 4:
                raise ValueError(f"layer {layer!r} must output a (B, K, h, w) feature map")
            (grad,) = torch.autograd.grad(score, seen["A"])
    finally:
        handle.remove()
    acts = seen["A"].detach()
    alpha = grad.mean(dim=(2, 3), keepdim=True)  # (B, K, 1, 1)
    cam = (alpha * acts).sum(1, keepdim=True)  # (B, 1, h, w)
    if relu:
        cam = F.relu(cam)
    if upsample is not None:
        cam = F.interpolate(cam, size=x.shape[-2:], mode=upsample)
    return cam


def occlusion(model: nn.Module, x: torch.Tensor, target, window: int = 4, stride: int = 2,
              baseline: float = 0.0, batch_size: int = 256) -> torch.Tensor:
    """Occlusion (Zeiler and Fergus 2014): slide a ``window``×``window`` patch of value
    ``baseline`` over all channels, with step ``stride``; each pixel's attribution is the mean
    drop ``f_c(x) − f_c(x with the patch)`` over the patches that cover it.

    Patches start at ``0, stride, 2·stride, ...`` up to ``ceil((H − window)/stride)`` steps
    (the last one cut off at the border), as in captum's ``Occlusion``.
    """
    _check(x)
    x = x.detach()
    b, c, h, w = x.shape
    if not (1 <= window <= min(h, w)) or not (1 <= stride <= window):
        raise ValueError(f"need 1 <= stride <= window <= image size, got window={window}, "
                         f"stride={stride}, image {h}×{w}")
    t = _targets(target, b, x.device)
    masks = []
    for i in range(math.ceil((h - window) / stride) + 1):
        for j in range(math.ceil((w - window) / stride) + 1):
            m = torch.zeros(h, w, dtype=x.dtype, device=x.device)
            m[i * stride:i * stride + window, j * stride:j * stride + window] = 1
            masks.append(m)
    masks = torch.stack(masks)  # (P, H, W)
    total = torch.zeros(b, h, w, dtype=x.dtype, device=x.device)
    with torch.no_grad(), eval_mode(model):
        full = target_logit(model, x, t)  # (B,)
        per = max(1, batch_size // b)
        for start in range(0, len(masks), per):
            m = masks[start:start + per, None, None]  # (k, 1, 1, H, W)
            occluded = x * (1 - m) + baseline * m  # (k, B, C, H, W)
            scores = target_logit(model, occluded.flatten(0, 1), t.repeat(len(m)))
            drop = full.repeat(len(m)) - scores
            total += (drop.view(len(m), b, 1, 1) * m[:, :, 0]).sum(0)
    counts = masks.sum(0)  # (H, W): how many patches cover each pixel
    return (total / counts).unsqueeze(1).expand(b, c, h, w).clone()


# ---------------------------------------------------------------------------------------------
# Feature visualisation
# ---------------------------------------------------------------------------------------------

def logit_objective(classes) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """Objective for :func:`activation_maximisation`: image b's logit of ``classes[b]``."""
    return lambda model, x: target_logit(model, x, torch.as_tensor(classes, device=x.device))


def channel_objective(layer: str, channels) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """Objective: image b's mean activation of channel ``channels[b]`` of ``layer``."""
    def objective(model, x):
        seen = {}
        handle = _layer(model, layer).register_forward_hook(
            lambda m, i, out: seen.__setitem__("A", out))
        try:
            model(x)
        finally:
            handle.remove()
        idx = torch.as_tensor(channels, device=x.device).long()
        return seen["A"][torch.arange(len(x), device=x.device), idx].mean((1, 2))
    return objective


def activation_maximisation(model: nn.Module, objective: Callable, n: int,
                            shape: tuple[int, int, int] = (3, 32, 32), steps: int = 200,
                            lr: float = 0.05, jitter: int = 2, blur_sigma: float = 0.5,
                            blur_every: int = 4, l2: float = 1e-3, seed: int = 0
                            ) -> torch.Tensor:
    """``n`` images that maximise ``objective(model, x)`` (B,) by gradient ascent (Adam)
    from grey plus a little noise, kept in [0, 1].

    The regularisers make the result readable rather than adversarial noise (Olah et al.
    2017): ``jitter`` (shift the image by up to that many pixels before each step, so a
    pattern must work wherever it lands), a Gaussian blur of std ``blur_sigma`` every
    ``blur_every`` steps (damps high frequencies) and an L2 penalty ``l2·||x − 0.5||²``.
    ``jitter=0, blur_sigma=0, l2=0`` switches them off.
    """
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    img = (0.5 + 0.01 * torch.randn(n, *shape, generator=gen)).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([img], lr=lr)
    with eval_mode(model), torch.enable_grad():
        for step in range(steps):
            shifted = img
            if jitter:
                dy, dx = torch.randint(-jitter, jitter + 1, (2,), generator=gen).tolist()
                shifted = torch.roll(img, (dy, dx), dims=(2, 3))
            value = objective(model, shifted).sum() - l2 * ((img - 0.5) ** 2).sum()
            opt.zero_grad()
            (-value).backward()
            opt.step()
            with torch.no_grad():
                if blur_sigma and (step + 1) % blur_every == 0:
                    img.copy_(gaussian_blur(img, blur_sigma))
                img.clamp_(0, 1)
    return img.detach()


__all__ = ["SIZES", "GlobalMaxCNN", "target_logit", "input_gradient", "gaussian_blur",
           "saliency", "input_x_gradient", "smoothgrad", "guided_backprop", "RULES", "quadrature",
           "IGResult", "integrated_gradients", "grad_cam", "occlusion", "logit_objective",
           "channel_objective", "activation_maximisation"]
