"""Adversarial examples and adversarial training: FGSM, PGD, PGD-AT, FGSM-RS, robust accuracy.

Explained in book/04_adversarial.ipynb.

All attacks here work in the L-infinity threat model on images with values in [0, 1]: an
adversarial input ``x'`` satisfies ``||x' - x||_inf <= eps`` and ``0 <= x' <= 1``.

Attacks leave the model as they found it: they take gradients with respect to the *input*
only (``torch.autograd.grad``), so the parameters and their ``.grad`` are untouched, and they
run the model in evaluation mode (dropout off, batch-norm on running statistics), restoring
its train/eval mode afterwards. They also switch autocast off, so an attack computes its
gradient in float32 even inside a mixed-precision training loop.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .monitor import non_finite_loss
from .train import eval_mode, train_mode

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]

# Chapter sizes (book/04_adversarial.ipynb). ``at_*``: PGD adversarial training (alpha_ratio:
# step = ratio * eps; None = pgd_step_size's default); ``width``: TwoConvNet's first-layer
# channels; ``fgsm_*``: the FGSM-RS section (``fgsm_n`` training images, None = all);
# ``sweep_n``: the test images the ε sweeps and diagnostics use; ``eval_*``: the attack behind
# the headline number, on the first ``eval_n`` test images (None = the whole test split);
# ``strong_*``: the stronger attack of the honest-evaluation checks, on the first ``strong_n``
# sweep images.
SIZES = {
    "quick": {
        "eps": 0.3, "batch_size": 50, "std_epochs": 4, "width": 16,
        "at_epochs": 3, "at_ramp_epochs": 1, "at_steps": 3, "at_alpha_ratio": None,
        "at_lr": 1e-3,
        "fgsm_n": 2000, "fgsm_epochs": 4, "fgsm_ramp_epochs": 1, "fgsm_alpha_ratio": 1.25,
        "watch_n": 100,
        "eval_n": 300, "eval_steps": 40, "eval_restarts": 1,
        "sweep_n": 150, "sweep_steps": 10, "sweep_eps": [0.0, 0.1, 0.2, 0.25, 0.3],
        "strong_n": 100, "strong_steps": 40, "strong_restarts": 2,
    },
    # Full MNIST on a GPU. The training attack (PGD-40, step 0.01, random start) and the
    # evaluation attack (PGD-100, 50 restarts) are those of Madry et al. (2018); the schedule
    # is not (they train 100,000 steps of batch 50 with Adam at 1e-4 and no ramp), see the
    # chapter's last section. On the embedded 5,000 images (no network) the same sizes fit:
    # the sweeps then use the whole 1,000-image test split.
    "full": {
        "eps": 0.3, "batch_size": 100, "std_epochs": 5, "width": 32,
        "at_epochs": 30, "at_ramp_epochs": 3, "at_steps": 40, "at_alpha_ratio": 0.01 / 0.3,
        "at_lr": 1e-3,
        "fgsm_n": None, "fgsm_epochs": 10, "fgsm_ramp_epochs": 3, "fgsm_alpha_ratio": 1.25,
        "watch_n": 500,
        "eval_n": None, "eval_steps": 100, "eval_restarts": 50,
        "sweep_n": 1000, "sweep_steps": 40, "sweep_eps": [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3],
        "strong_n": 500, "strong_steps": 100, "strong_restarts": 10,
    },
    # FMLAB_SMOKE=1: the profile's code paths with token epochs, attack steps, widths and
    # subsets
    "smoke": {
        "width": 8, "fgsm_n": 1000, "std_epochs": 1, "at_epochs": 1, "at_ramp_epochs": 1, "at_steps": 2,
        "fgsm_epochs": 1, "fgsm_ramp_epochs": 1, "watch_n": 20,
        "eval_steps": 2, "eval_restarts": 2, "sweep_n": 40, "sweep_steps": 2,
        "sweep_eps": [0.0, 0.1, 0.3], "strong_n": 20, "strong_steps": 3, "strong_restarts": 2,
    },
}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

# Wong, Rice & Kolter (2020): FGSM with a random start trains well with a step of 1.25 eps.
FGSM_RS_ALPHA_RATIO = 1.25


def pgd_step_size(eps: float, steps: int) -> float:
    """The step size :func:`pgd` takes when none is given: ``alpha = 2.5 * eps / steps``.

    A common heuristic, not a derived optimum: ``steps`` steps of this size travel 2.5 eps,
    more than the ball's diameter 2 eps, so the iterate can cross the ball from any random
    start and still move along its boundary. Madry et al. (2018) chose their steps by hand;
    their MNIST setting, 40 steps of 0.01 at eps = 0.3, is ``alpha = 1.33 * eps / steps``.

    >>> round(pgd_step_size(0.3, 10), 6)
    0.075
    """
    return 2.5 * eps / max(steps, 1)


def _check_attack_inputs(x: torch.Tensor, y: torch.Tensor, eps: float) -> None:
    """Images as floats in [0, 1], one label per image, eps >= 0; a clear error otherwise."""
    if not torch.is_floating_point(x):
        raise TypeError(f"x must be a float tensor of images in [0, 1], got dtype {x.dtype}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} images but y has {y.shape[0]} labels")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(
            f"x has values in [{x.min().item():.3g}, {x.max().item():.3g}]; attacks expect images "
            "in [0, 1]. Undo any normalisation and put it inside the model instead."
        )


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example margin ``max_{j != y} z_j - z_y`` (Carlini & Wagner 2017): positive means fooled.

    Unlike the cross-entropy it does not saturate, so its gradient survives very confident
    (or deliberately rescaled) logits: a second opinion when evaluating a defence.
    """
    true = logits.gather(1, y[:, None]).squeeze(1)  # (B,)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return others.max(1).values - true


def _objective(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-example objective the untargeted attack raises: ``"ce"`` or ``"margin"``."""
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if loss == "margin":
        return margin_loss(logits, y)
    raise ValueError(f"loss must be 'ce' or 'margin', got {loss!r}")


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, targeted: bool,
                loss: str = "ce") -> torch.Tensor:
    """Gradient of the attack's objective w.r.t. ``x`` only (parameters' .grad untouched).

    Untargeted: the loss of the true label ``y`` (to be raised). Targeted: minus the loss of
    the target ``y`` (raising it raises the target's probability). The loss is summed, not
    averaged, so no example's gradient shrinks with the batch size.
    """
    x = x.detach().requires_grad_(True)
    # enable_grad: attacks also work when called inside torch.no_grad()
    with torch.enable_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        obj = _objective(model(x.float()), y, loss).sum()
        if targeted:
            obj = -obj
        (grad,) = torch.autograd.grad(obj, x)
    return grad


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Nearest point to ``x_adv`` in the ε-ball around ``x`` intersected with the [0, 1] box.

    For L-infinity both sets are boxes, so the projection is two coordinate-wise clamps.
    """
    return torch.clamp(torch.min(torch.max(x_adv, x - eps), x + eps), 0.0, 1.0)


def _uniform_like(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform noise in [-eps, eps] of x's shape, drawn on the CPU when a generator is given."""
    if generator is None:
        return torch.empty_like(x).uniform_(-eps, eps)
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype)
    return ((2 * u - 1) * eps).to(x.device)


# ---------------------------------------------------------------------------------------------
# Attacks
# ---------------------------------------------------------------------------------------------

def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
         targeted: bool = False) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): one signed gradient step.

    ``x' = clip_[0,1](x + eps * sign(grad_x L(f(x), y)))``; targeted: ``x - eps * sign(...)`` of
    the target's loss. This maximises the *linearised* loss over the ε-ball. Returns a detached
    tensor of the same shape as ``x``.

    Examples
    --------
    A linear model whose input gradient is easy to work out: for class 0 at ``x``, the
    gradient of the loss is ``W^T (softmax - onehot) = [-1, 1, 0]``, so FGSM moves the first
    pixel down, the second up, and leaves the third alone (sign 0).

    >>> from torch import nn
    >>> model = nn.Linear(3, 2, bias=False)
    >>> _ = model.weight.data.copy_(torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]]))
    >>> fgsm(model, torch.tensor([[0.5, 0.5, 0.5]]), torch.tensor([0]), eps=0.1)
    tensor([[0.4000, 0.6000, 0.5000]])
    """
    _check_attack_inputs(x, y, eps)
    with eval_mode(model):
        grad = _input_grad(model, x, y, targeted)
    return torch.clamp(x.detach() + eps * grad.sign(), 0.0, 1.0)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float | None = None,
        steps: int = 10, *, random_start: bool = True, targeted: bool = False, restarts: int = 1,
        loss: str = "ce", generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018), L-infinity, within the [0, 1] box.

    Each step ``x <- Proj(x + alpha * sign(grad_x L))``, with ``Proj`` = :func:`project`. With
    ``random_start`` the first point is ``x`` plus uniform noise in [-eps, eps] (projected to
    the box). ``alpha`` defaults to :func:`pgd_step_size`. ``targeted=True`` treats ``y`` as the target labels and descends their
    loss. With ``restarts > 1`` each example keeps the first restart that fools the model (for
    targeted attacks: that hits the target), otherwise the one with the highest objective.
    ``loss="margin"`` ascends :func:`margin_loss` instead of the cross-entropy.

    Examples
    --------
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    >>> x, y = torch.rand(5, 1, 8, 8), torch.randint(0, 10, (5,))
    >>> x_adv = pgd(model, x, y, eps=0.1, steps=10, generator=torch.Generator().manual_seed(0))
    >>> bool((x_adv - x).abs().max() <= 0.1 + 1e-6), bool(x_adv.min() >= 0 and x_adv.max() <= 1)
    (True, True)
    >>> loss = nn.functional.cross_entropy
    >>> bool(loss(model(x_adv), y) > loss(model(fgsm(model, x, y, 0.1)), y))  # beats one step
    True
    """
    _check_attack_inputs(x, y, eps)
    if steps < 0 or restarts < 1:
        raise ValueError(f"need steps >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}")
    alpha = pgd_step_size(eps, steps) if alpha is None else alpha
    x = x.detach()
    best, best_success, best_obj = x.clone(), None, None
    with eval_mode(model):
        for _ in range(restarts):
            x_adv = project(x + _uniform_like(x, eps, generator), x, eps) if random_start else x.clone()
            for _ in range(steps):
                grad = _input_grad(model, x_adv, y, targeted, loss)
                x_adv = project(x_adv + alpha * grad.sign(), x, eps)
            if restarts == 1:
                return x_adv
            with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
                logits = model(x_adv)
                obj = _objective(logits, y, loss)  # (B,)
                obj = -obj if targeted else obj
                success = (logits.argmax(1) == y) if targeted else (logits.argmax(1) != y)
            if best_obj is None:
                best, best_success, best_obj = x_adv, success, obj
                continue
            # lexicographic: a success beats a failure; among equals, the higher objective wins
            better = (success & ~best_success) | ((success == best_success) & (obj > best_obj))
            mask = better.view(-1, *([1] * (x.dim() - 1)))
            best = torch.where(mask, x_adv, best)
            best_success, best_obj = best_success | success, torch.where(better, obj, best_obj)
    return best


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

def _tensors(data) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1]
    if hasattr(data, "x") and hasattr(data, "y"):
        return data.x, data.y
    raise TypeError("data must be an fmlab Dataset (with .x and .y) or a pair (x, y) of tensors")


def robust_accuracy(model: nn.Module, data, attack: Attack | None = None, *, batch_size: int = 500,
                    device: torch.device | str | None = None) -> float:
    """Fraction of examples still classified correctly after ``attack(model, x, y)``.

    ``data`` is an fmlab Dataset or a pair ``(x, y)``; ``attack=None`` gives clean accuracy.
    Build attacks with :func:`functools.partial`, e.g. ``partial(pgd, eps=0.3, steps=40)``.
    Predictions are made in eval mode; each submodule's mode is restored afterwards.

    Examples
    --------
    >>> from functools import partial
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    >>> x = torch.rand(20, 1, 8, 8)
    >>> y = model(x).argmax(1)  # labels the model gets right: clean accuracy 1
    >>> robust_accuracy(model, (x, y))
    1.0
    >>> robust_accuracy(model, (x, y), partial(pgd, eps=0.5, steps=10)) < 1.0
    True
    """
    x, y = _tensors(data)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    correct = 0
    with eval_mode(model):
        for i in range(0, len(y), batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            if attack is not None:
                xb = attack(model, xb, yb)
            with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
                correct += (model(xb).argmax(1) == yb).sum().item()
    return correct / max(len(y), 1)


# ---------------------------------------------------------------------------------------------
# Adversarial training
# ---------------------------------------------------------------------------------------------

def linear_ramp(eps: float, ramp_batches: int) -> Callable[[int], float]:
    """ε schedule for training: rises linearly from ``eps/ramp_batches`` to ``eps`` over
    ``ramp_batches`` batches, then stays at ``eps``. Starting small lets the network first learn
    the task at all; at full ε from step one, PGD-AT on small data often stalls near chance.
    """
    if ramp_batches <= 0:
        return lambda batch: eps
    return lambda batch: eps * min(1.0, (batch + 1) / ramp_batches)


def fgsm_rs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float | None = None,
            *, random_start: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """FGSM with random init, the training attack of Wong, Rice & Kolter (2020).

    ``delta ~ U[-eps, eps]``, then one step ``delta <- clip_eps(delta + alpha * sign(grad))``;
    ``alpha`` defaults to ``FGSM_RS_ALPHA_RATIO * eps`` = ``1.25 * eps``. With
    ``random_start=False`` and ``alpha = eps`` this is plain FGSM.
    """
    alpha = FGSM_RS_ALPHA_RATIO * eps if alpha is None else alpha
    return pgd(model, x, y, eps, alpha, steps=1, random_start=random_start, generator=generator)


class AdversarialTransform:
    """A ``batch_transform(model, xb, yb) -> x_adv`` for :func:`fmlab.train.fit`.

    ``method="pgd"``: PGD-AT (Madry et al. 2018) with ``steps`` steps of size
    ``alpha_ratio * eps`` from a random start (default: :func:`pgd_step_size`).
    ``method="fgsm_rs"``: one step of size ``alpha_ratio * eps`` from a random start (default:
    ``FGSM_RS_ALPHA_RATIO``, Wong et al. 2020).
    ``eps`` is a number or a schedule ``batch_index -> eps`` such as :func:`linear_ramp`; the
    transform counts the batches it has seen in ``self.batches``.
    """

    def __init__(self, eps: float | Callable[[int], float], *, method: str = "pgd", steps: int = 7,
                 alpha_ratio: float | None = None, random_start: bool = True,
                 generator: torch.Generator | None = None):
        if method not in ("pgd", "fgsm_rs"):
            raise ValueError(f"method must be 'pgd' or 'fgsm_rs', got {method!r}")
        self.eps = eps if callable(eps) else (lambda batch, e=float(eps): e)
        self.method, self.steps, self.random_start, self.generator = method, steps, random_start, generator
        default = pgd_step_size(1.0, steps) if method == "pgd" else FGSM_RS_ALPHA_RATIO
        self.alpha_ratio = default if alpha_ratio is None else alpha_ratio
        self.batches = 0

    def current_eps(self) -> float:
        return float(self.eps(self.batches))

    def __call__(self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        eps = self.current_eps()
        self.batches += 1
        alpha = self.alpha_ratio * eps
        steps = self.steps if self.method == "pgd" else 1
        return pgd(model, xb, yb, eps, alpha, steps, random_start=self.random_start,
                   generator=self.generator)


def adversarial_training_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                              y: torch.Tensor, eps: float, alpha: float, steps: int, *,
                              random_start: bool = True,
                              generator: torch.Generator | None = None) -> float:
    """One step of PGD adversarial training; ``steps=1`` with ``alpha=1.25*eps`` is FGSM-RS.

    Minimises ``E max_{||d|| <= eps} L(f(x + d), y)`` (Madry et al. 2018): find the inner
    maximiser with :func:`pgd` (model in eval mode), then take an optimizer step on the loss
    at it with the model in train mode. Gradients are zeroed first, so calls never
    accumulate. Returns the batch's adversarial loss; each submodule's mode is restored. A nan
    or inf loss raises :class:`~fmlab.monitor.NonFiniteLossError` (the error
    :func:`fmlab.train.fit` raises) before the optimizer step, so the weights are left as they
    were.
    """
    x_adv = pgd(model, x, y, eps, alpha, steps, random_start=random_start, generator=generator)
    with train_mode(model):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x_adv), y)
        value = loss.item()
        if not math.isfinite(value):  # before the step: the weights stay as they were
            raise non_finite_loss(value, "in this adversarial-training step")
        loss.backward()
        optimizer.step()
    return value


__all__ = ["SIZES", "fgsm", "pgd", "pgd_step_size", "margin_loss", "fgsm_rs", "project", "eval_mode",
           "robust_accuracy", "linear_ramp", "AdversarialTransform", "adversarial_training_step",
           "FGSM_RS_ALPHA_RATIO"]
