"""Optimizers from their update rules: SGD (heavy-ball and Nesterov momentum), AdaGrad, RMSProp,
Adam and AdamW, plus learning-rate schedules.

Explained in book/03_optimizers.ipynb.

Each optimizer is a :class:`torch.optim.Optimizer` subclass, so parameter groups, ``zero_grad``,
``state_dict``/``load_state_dict`` and ``torch.optim.lr_scheduler`` work as usual. Each one
matches its ``torch.optim`` namesake (same arguments, same defaults, same state names) to
floating-point rounding; ``tests/test_optim.py`` checks that. A parameter whose ``.grad`` is
``None`` is skipped: neither it nor its state changes. The rule itself lives in ``_update``, a
few lines per optimizer, which the chapter prints next to its equation.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch.optim import Optimizer

__all__ = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "effective_step_size",
           "step_decay", "cosine", "linear_warmup", "warmup_cosine", "schedule_lambda", "SIZES"]

# Sizes of the chapter's experiments (read with ``fmlab.profile().pick(SIZES)``).
SIZES = {
    "quick": {
        "tune_lrs": 51,            # learning rates in the log grid (1e-4 to 10) of the 2-D problems
        "quadratic_steps": 60,     # steps on the 2-D ill-conditioned quadratics
        "rosenbrock_steps": 300,   # steps on the Rosenbrock function
        "cnn_train": 2000,         # MNIST training images for the CNN comparison
        "cnn_test": 1000,          # MNIST test images
        "cnn_epochs": 2,
        "cnn_batch_size": 64,
        "cnn_lr_factors": [1 / 9, 1 / 3, 1, 3, 9, 27],  # the tuning grid, times a default lr
        "seeds": 3,                # seeds of every stochastic comparison
        "schedule_steps": 300,     # minibatch steps of the learning-rate-schedule runs
        "decay_steps": 400,        # minibatch steps of the weight-decay runs
        "drift_lrs": 13,           # learning rates in the log grid of the drift experiment
        "drift_steps": 3000,       # length of the data stream; it changes at 1/4, 1/2 and 3/4
        "drift_window": 250,       # steps after a change over which the loss is averaged
    },
    "full": {
        "tune_lrs": 51,
        "quadratic_steps": 60,
        "rosenbrock_steps": 300,
        "cnn_train": None,         # all of the split
        "cnn_test": None,
        "cnn_epochs": 5,
        "cnn_batch_size": 128,
        "cnn_lr_factors": [1 / 9, 1 / 3, 1, 3, 9, 27],
        "seeds": 3,
        "schedule_steps": 1000,
        "decay_steps": 2000,
        "drift_lrs": 25,
        "drift_steps": 6000,
        "drift_window": 250,
    },
    # FMLAB_SMOKE=1: the same code paths with a token amount of work
    "smoke": {
        "tune_lrs": 13, "cnn_train": 1000, "cnn_test": 500, "cnn_epochs": 1,
        "cnn_lr_factors": [1 / 3, 1], "seeds": 2,
        "schedule_steps": 60, "decay_steps": 40, "drift_lrs": 5, "drift_steps": 400,
        "drift_window": 50,
    },
}


def _check(name: str, value: float, low: float = 0.0, high: float = math.inf, open_high=False):
    ok = low <= value < high if open_high else low <= value <= high
    if not ok:
        bound = f"[{low}, {high})" if open_high else f"[{low}, {high}]"
        raise ValueError(f"{name}={value!r} is out of range: it must lie in {bound}")


class _RuleOptimizer(Optimizer):
    """Shared loop: call ``_update(p, grad, state, group)`` for every parameter that has a grad."""

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:  # frozen or unused this step: no update, no state change
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients; "
                                       "use torch.optim.SparseAdam or dense gradients")
                self._update(p, p.grad, self.state[p], group)
        return loss

    def _update(self, p, g, state, group):  # pragma: no cover - each subclass defines it
        raise NotImplementedError

    @staticmethod
    def _next_step(state: dict) -> int:
        # torch stores the step as a tensor, we as an int; accept both so that a torch.optim
        # state_dict loads into these optimizers.
        state["step"] = int(state.get("step", 0)) + 1
        return state["step"]


class SGD(_RuleOptimizer):
    r"""Stochastic gradient descent with optional heavy-ball or Nesterov momentum.

    ``b ← μ b + (1 − τ) g`` (``b = g`` on the first step), then ``θ ← θ − η b`` (heavy ball) or
    ``θ ← θ − η (g + μ b)`` (Nesterov); ``g`` includes the L2 term ``λ θ`` when weight_decay=λ.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        _check("lr", lr)
        _check("momentum", momentum)
        _check("weight_decay", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _update(self, p, g, state, group):
        lr, mu = group["lr"], group["momentum"]
        if group["weight_decay"]:
            g = g.add(p, alpha=group["weight_decay"])  # gradient of (λ/2)‖θ‖²
        if mu:
            b = state.get("momentum_buffer")
            if b is None:  # torch starts the buffer at g itself, without dampening
                b = state["momentum_buffer"] = g.clone()
            else:
                b.mul_(mu).add_(g, alpha=1 - group["dampening"])
            g = g.add(b, alpha=mu) if group["nesterov"] else b
        p.add_(g, alpha=-lr)


class Adagrad(_RuleOptimizer):
    r"""AdaGrad (Duchi, Hazan & Singer 2011): divide by the root of the *sum* of squared gradients.

    ``s ← s + g²``, ``θ ← θ − η_t g / (√s + ε)`` with ``η_t = η / (1 + (t − 1)·lr_decay)``.
    """

    def __init__(self, params: Iterable, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10):
        for name, v in [("lr", lr), ("lr_decay", lr_decay), ("weight_decay", weight_decay),
                        ("initial_accumulator_value", initial_accumulator_value), ("eps", eps)]:
            _check(name, v)
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps))

    def _update(self, p, g, state, group):
        t = self._next_step(state)
        if group["weight_decay"]:
            g = g.add(p, alpha=group["weight_decay"])
        if "sum" not in state:
            state["sum"] = torch.full_like(p, group["initial_accumulator_value"])
        s = state["sum"].addcmul_(g, g)           # only grows: the steps only shrink
        lr_t = group["lr"] / (1 + (t - 1) * group["lr_decay"])
        p.addcdiv_(g, s.sqrt().add_(group["eps"]), value=-lr_t)


class RMSprop(_RuleOptimizer):
    r"""RMSProp (Tieleman & Hinton 2012): divide by the root of a *moving average* of g².

    ``v ← α v + (1 − α) g²``, ``θ ← θ − η g / (√v + ε)`` (eps outside the root, as in torch).
    ``centered`` subtracts the squared moving average of g; ``momentum`` accumulates the
    normalised step: ``b ← μ b + g / (√v + ε)``, ``θ ← θ − η b``.
    """

    def __init__(self, params: Iterable, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False):
        for name, v in [("lr", lr), ("eps", eps), ("weight_decay", weight_decay), ("momentum", momentum)]:
            _check(name, v)
        _check("alpha", alpha, 0.0, 1.0)
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered))

    def _update(self, p, g, state, group):
        self._next_step(state)
        alpha, mu = group["alpha"], group["momentum"]
        if group["weight_decay"]:
            g = g.add(p, alpha=group["weight_decay"])
        if "square_avg" not in state:
            state["square_avg"] = torch.zeros_like(p)
            if mu:
                state["momentum_buffer"] = torch.zeros_like(p)
            if group["centered"]:
                state["grad_avg"] = torch.zeros_like(p)
        v = state["square_avg"].mul_(alpha).addcmul_(g, g, value=1 - alpha)
        if group["centered"]:  # estimate of the variance of g instead of its second moment
            m = state["grad_avg"].lerp_(g, 1 - alpha)
            denom = v.addcmul(m, m, value=-1).sqrt_().add_(group["eps"])
        else:
            denom = v.sqrt().add_(group["eps"])
        if mu:
            b = state["momentum_buffer"].mul_(mu).addcdiv_(g, denom)
            p.add_(b, alpha=-group["lr"])
        else:
            p.addcdiv_(g, denom, value=-group["lr"])


class Adam(_RuleOptimizer):
    r"""Adam (Kingma & Ba 2015): momentum on g, RMSProp on g², both bias-corrected.

    ``m ← β₁ m + (1 − β₁) g``, ``v ← β₂ v + (1 − β₂) g²``,
    ``θ ← θ − η/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)`` (eps added after the correction, as torch).
    ``weight_decay`` is an L2 term added to g (torch's ``Adam``); :class:`AdamW` decouples it.
    """

    decoupled = False

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        _check("lr", lr)
        _check("eps", eps)
        _check("weight_decay", weight_decay)
        _check("betas[0]", betas[0], 0.0, 1.0, open_high=True)
        _check("betas[1]", betas[1], 0.0, 1.0, open_high=True)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _update(self, p, g, state, group):
        t = self._next_step(state)
        lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
        if wd and self.decoupled:
            p.mul_(1 - lr * wd)              # AdamW: shrink θ directly, outside the adaptive scaling
        elif wd:
            g = g.add(p, alpha=wd)           # Adam: L2 gradient, later divided by √v like the rest
        if "exp_avg" not in state:
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        m = state["exp_avg"].lerp_(g, 1 - b1)                      # β₁m + (1−β₁)g
        v = state["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / math.sqrt(1 - b2**t)).add_(group["eps"])
        p.addcdiv_(m, denom, value=-lr / (1 - b1**t))


class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay ``θ ← θ(1 − ηλ)``."""

    decoupled = True

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def effective_step_size(optimizer: Optimizer, p: torch.Tensor) -> torch.Tensor:
    """Per-coordinate step size the adaptive optimizer applies to its numerator (g, or m for Adam).

    AdaGrad: ``η_t/(√s + ε)``; RMSProp: ``η/(√v + ε)``; Adam/AdamW: ``η/(1−β₁ᵗ)/(√v̂ + ε)``.
    Works for the torch.optim optimizers of the same names too (same state names).
    """
    state, group = optimizer.state[p], next(g for g in optimizer.param_groups
                                            if any(q is p for q in g["params"]))
    if not state:
        raise ValueError("this parameter has not been updated yet: take a step first")
    t = int(state.get("step", 0))
    if "sum" in state:
        lr_t = group["lr"] / (1 + (t - 1) * group.get("lr_decay", 0.0))
        return lr_t / (state["sum"].sqrt() + group["eps"])
    if "exp_avg_sq" in state:
        b1, b2 = group["betas"]
        return group["lr"] / (1 - b1**t) / (state["exp_avg_sq"].sqrt() / math.sqrt(1 - b2**t) + group["eps"])
    if "square_avg" in state:
        return group["lr"] / (state["square_avg"].sqrt() + group["eps"])
    raise TypeError(f"{type(optimizer).__name__} keeps no second-moment state")


# ---------------------------------------------------------------------------------------------
# Learning-rate schedules: plain functions of the step number t = 0, 1, 2, ...
# ---------------------------------------------------------------------------------------------

def step_decay(step: int, base_lr: float, step_size: int, gamma: float = 0.1) -> float:
    """``η_t = η₀ · γ^⌊t / step_size⌋`` (torch's ``StepLR``)."""
    if step_size < 1:
        raise ValueError(f"step_size must be a positive number of steps, got {step_size}")
    return base_lr * gamma ** (step // step_size)


def cosine(step: int, total_steps: int, base_lr: float, min_lr: float = 0.0) -> float:
    """``η_t = η_min + (η₀ − η_min)(1 + cos(π t/T))/2`` for t ≤ T, then η_min (SGDR without restarts)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    progress = min(step, total_steps) / total_steps
    return min_lr + (base_lr - min_lr) * (1 + math.cos(math.pi * progress)) / 2


def linear_warmup(step: int, warmup_steps: int, base_lr: float) -> float:
    """``η_t = η₀ (t + 1)/W`` for t < W, then η₀: the first step already moves, the W-th is full."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    return base_lr


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, base_lr: float,
                  min_lr: float = 0.0) -> float:
    """Linear warm-up for ``warmup_steps`` steps, then cosine decay to ``min_lr`` at ``total_steps``.

    Equal to torch's ``SequentialLR([LinearLR(start_factor=1/W, total_iters=W-1),
    CosineAnnealingLR(T_max=total_steps-W, eta_min=min_lr)], milestones=[W])``.
    """
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"need 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}")
    if step < warmup_steps:
        return linear_warmup(step, warmup_steps, base_lr)
    return cosine(step - warmup_steps, total_steps - warmup_steps, base_lr, min_lr)


def schedule_lambda(schedule: Callable[..., float], base_lr: float, **kwargs: Any) -> Callable[[int], float]:
    """The factor ``t ↦ schedule(t, base_lr=base_lr, **kwargs)/base_lr`` that ``LambdaLR`` expects."""
    return lambda t: schedule(t, base_lr=base_lr, **kwargs) / base_lr
