"""Optimizers from their update rules: SGD (heavy-ball and Nesterov momentum), AdaGrad, RMSProp,
Adam and AdamW, plus learning-rate schedules.

Explained in book/03_optimizers.ipynb.

Each optimizer is a :class:`torch.optim.Optimizer` subclass, so parameter groups, ``zero_grad``,
``state_dict``/``load_state_dict`` and ``torch.optim.lr_scheduler`` work as usual. Each one
matches its ``torch.optim`` namesake (same arguments, same defaults, same state names) to
floating-point rounding; ``tests/test_optim.py`` checks that. A parameter whose ``.grad`` is
``None`` is skipped: neither it nor its state changes.

The code has torch.optim's shape, so the two can be read side by side: each optimizer's
``step`` gathers the state tensors (created on a parameter's first step), then calls its rule,
a function of lists of tensors named as torch names its own (``_single_tensor_adam(params,
grads, exp_avgs, exp_avg_sqs, state_steps, *, beta1, beta2, lr, weight_decay, eps, ...)`` in
torch/optim/adam.py). The chapter prints each rule next to its equation.
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
        "cnn_train": 1600,         # MNIST training images for the CNN comparison
        "cnn_test": 1000,          # MNIST test images
        "cnn_epochs": 2,
        "cnn_batch_size": 64,
        "cnn_lr_factors": [1 / 3, 1, 3, 9],  # the tuning grid, times a starting lr
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
        "tune_lrs": 13, "cnn_train": 500, "cnn_test": 500, "cnn_epochs": 1,
        "cnn_lr_factors": [1 / 3, 1], "seeds": 2,
        "schedule_steps": 60, "decay_steps": 40, "drift_lrs": 5, "drift_steps": 400,
        "drift_window": 50,
    },
}


def _check_in_range(name: str, value: float, low: float = 0.0, high: float = math.inf,
                    open_high: bool = False) -> None:
    """A hyper-parameter within [low, high] (or [low, high)); a clear error otherwise."""
    ok = low <= value < high if open_high else low <= value <= high
    if not ok:
        bound = f"[{low}, {high})" if open_high else f"[{low}, {high}]"
        raise ValueError(f"{name}={value!r} is out of range: it must lie in {bound}")


def _zero_step(p: torch.Tensor) -> torch.Tensor:
    return torch.tensor(0.0)  # a tensor, as in torch, so the rule can count in place


class _GroupOptimizer(Optimizer):
    """The shared ``step``: per parameter group, the parameters that have a gradient go to the
    subclass's ``_step_group(group, params, grads)``, which gathers their state and calls the
    update rule."""

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # frozen or unused this step: no update, no state change
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients; "
                                   "use torch.optim.SparseAdam or dense gradients")
            self._step_group(group, params, [p.grad for p in params])
        return loss

    def _step_group(self, group: dict, params: list, grads: list) -> None:  # pragma: no cover
        raise NotImplementedError

    def _state_lists(self, params: list[torch.Tensor],
                     **init: Callable | None) -> list[list[torch.Tensor]]:
        """One list per state name, in the order given: each parameter's state tensor, created
        with ``init[name](p)`` on the parameter's first step (torch's ``_init_group``). A name
        whose ``init`` is None (an option that is off) gets an empty list and no state."""
        lists: list[list[torch.Tensor]] = [[] for _ in init]
        for p in params:
            state = self.state[p]
            for values, (name, make) in zip(lists, init.items()):
                if make is None:
                    continue
                if name not in state:
                    state[name] = make(p)
                elif name == "step" and not torch.is_tensor(state[name]):
                    state[name] = torch.tensor(float(state[name]))  # a count saved as a number
                values.append(state[name])
        return lists


# ---------------------------------------------------------------------------------------------
# The update rules: pure functions of tensors, shaped like torch.optim's ``_single_tensor_*``
# (torch/optim/sgd.py, adagrad.py, rmsprop.py, adam.py) without the options this course does
# not use (maximize, amsgrad, capturable, differentiable, complex parameters, grad scaling).
# They update ``params`` and the state tensors in place.
# ---------------------------------------------------------------------------------------------

def _single_tensor_sgd(params: list[torch.Tensor], grads: list[torch.Tensor],
                       momentum_buffer_list: list[torch.Tensor | None], *, weight_decay: float,
                       momentum: float, lr: float, dampening: float, nesterov: bool) -> None:
    for i, param in enumerate(params):
        grad = grads[i]
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)  # gradient of (λ/2)‖θ‖²
        if momentum != 0:
            buf = momentum_buffer_list[i]
            if buf is None:  # torch starts the buffer at g itself, without dampening
                buf = grad.detach().clone()
                momentum_buffer_list[i] = buf
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            grad = grad.add(buf, alpha=momentum) if nesterov else buf
        param.add_(grad, alpha=-lr)


def _single_tensor_adagrad(params: list[torch.Tensor], grads: list[torch.Tensor],
                           state_sums: list[torch.Tensor], state_steps: list[torch.Tensor], *,
                           lr: float, weight_decay: float, lr_decay: float, eps: float) -> None:
    for param, grad, state_sum, step_t in zip(params, grads, state_sums, state_steps):
        step_t += 1
        step = step_t.item()
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        clr = lr / (1 + (step - 1) * lr_decay)
        state_sum.addcmul_(grad, grad, value=1)  # only grows: the steps only shrink
        std = state_sum.sqrt().add_(eps)
        param.addcdiv_(grad, std, value=-clr)


def _single_tensor_rmsprop(params: list[torch.Tensor], grads: list[torch.Tensor],
                           square_avgs: list[torch.Tensor], grad_avgs: list[torch.Tensor],
                           momentum_buffer_list: list[torch.Tensor], state_steps: list[torch.Tensor],
                           *, lr: float, alpha: float, eps: float, weight_decay: float,
                           momentum: float, centered: bool) -> None:
    for i, param in enumerate(params):
        grad, square_avg = grads[i], square_avgs[i]
        state_steps[i] += 1
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
        if centered:  # estimate of the variance of g instead of its second moment
            grad_avg = grad_avgs[i]
            grad_avg.lerp_(grad, 1 - alpha)
            avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
        else:
            avg = square_avg.sqrt()
        avg = avg.add_(eps)
        if momentum > 0:
            buf = momentum_buffer_list[i]
            buf.mul_(momentum).addcdiv_(grad, avg)
            param.add_(buf, alpha=-lr)
        else:
            param.addcdiv_(grad, avg, value=-lr)


def _single_tensor_adam(params: list[torch.Tensor], grads: list[torch.Tensor],
                        exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor],
                        state_steps: list[torch.Tensor], *, beta1: float, beta2: float, lr: float,
                        weight_decay: float, eps: float, decoupled_weight_decay: bool) -> None:
    for i, param in enumerate(params):
        grad, exp_avg, exp_avg_sq, step_t = grads[i], exp_avgs[i], exp_avg_sqs[i], state_steps[i]
        step_t += 1
        if weight_decay != 0:
            if decoupled_weight_decay:
                param.mul_(1 - lr * weight_decay)  # AdamW: shrink θ, outside the adaptive scaling
            else:
                grad = grad.add(param, alpha=weight_decay)  # Adam: L2 gradient, divided by √v later
        exp_avg.lerp_(grad, 1 - beta1)  # β₁m + (1−β₁)g
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = step_t.item()
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)  # eps after the correction
        param.addcdiv_(exp_avg, denom, value=-step_size)


# ---------------------------------------------------------------------------------------------
# The optimizers: hyper-parameters, state, and a call to their rule
# ---------------------------------------------------------------------------------------------

class SGD(_GroupOptimizer):
    r"""Stochastic gradient descent with optional heavy-ball or Nesterov momentum.

    ``b ← μ b + (1 − τ) g`` (``b = g`` on the first step), then ``θ ← θ − η b`` (heavy ball) or
    ``θ ← θ − η (g + μ b)`` (Nesterov); ``g`` includes the L2 term ``λ θ`` when weight_decay=λ.
    The rule: :func:`_single_tensor_sgd`.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        _check_in_range("lr", lr)
        _check_in_range("momentum", momentum)
        _check_in_range("weight_decay", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _step_group(self, group, params, grads):
        buffers = [self.state[p].get("momentum_buffer") for p in params]
        _single_tensor_sgd(params, grads, buffers, weight_decay=group["weight_decay"],
                           momentum=group["momentum"], lr=group["lr"],
                           dampening=group["dampening"], nesterov=group["nesterov"])
        if group["momentum"] != 0:  # the rule created the first buffers: keep them
            for p, buf in zip(params, buffers):
                self.state[p]["momentum_buffer"] = buf


class Adagrad(_GroupOptimizer):
    r"""AdaGrad (Duchi, Hazan & Singer 2011): divide by the root of the *sum* of squared gradients.

    ``s ← s + g²``, ``θ ← θ − η_t g / (√s + ε)`` with ``η_t = η / (1 + (t − 1)·lr_decay)``.
    The rule: :func:`_single_tensor_adagrad`.
    """

    def __init__(self, params: Iterable, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10):
        for name, v in [("lr", lr), ("lr_decay", lr_decay), ("weight_decay", weight_decay),
                        ("initial_accumulator_value", initial_accumulator_value), ("eps", eps)]:
            _check_in_range(name, v)
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps))

    def _step_group(self, group, params, grads):
        start = group["initial_accumulator_value"]
        sums, steps = self._state_lists(params, sum=lambda p: torch.full_like(p, start),
                                        step=_zero_step)
        _single_tensor_adagrad(params, grads, sums, steps, lr=group["lr"],
                               weight_decay=group["weight_decay"], lr_decay=group["lr_decay"],
                               eps=group["eps"])


class RMSprop(_GroupOptimizer):
    r"""RMSProp (Tieleman & Hinton 2012): divide by the root of a *moving average* of g².

    ``v ← α v + (1 − α) g²``, ``θ ← θ − η g / (√v + ε)`` (eps outside the root, as in torch).
    ``centered`` subtracts the squared moving average of g; ``momentum`` accumulates the
    normalised step: ``b ← μ b + g / (√v + ε)``, ``θ ← θ − η b``.
    The rule: :func:`_single_tensor_rmsprop`.
    """

    def __init__(self, params: Iterable, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False):
        for name, v in [("lr", lr), ("eps", eps), ("weight_decay", weight_decay), ("momentum", momentum)]:
            _check_in_range(name, v)
        _check_in_range("alpha", alpha, 0.0, 1.0)
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered))

    def _step_group(self, group, params, grads):
        steps, square_avgs, buffers, grad_avgs = self._state_lists(  # as torch: the last two
            params, step=_zero_step, square_avg=torch.zeros_like,    # only when their option is on
            momentum_buffer=torch.zeros_like if group["momentum"] > 0 else None,
            grad_avg=torch.zeros_like if group["centered"] else None)
        _single_tensor_rmsprop(params, grads, square_avgs, grad_avgs, buffers, steps,
                               lr=group["lr"], alpha=group["alpha"], eps=group["eps"],
                               weight_decay=group["weight_decay"], momentum=group["momentum"],
                               centered=group["centered"])


class Adam(_GroupOptimizer):
    r"""Adam (Kingma & Ba 2015): momentum on g, RMSProp on g², both bias-corrected.

    ``m ← β₁ m + (1 − β₁) g``, ``v ← β₂ v + (1 − β₂) g²``,
    ``θ ← θ − η/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)`` (eps added after the correction, as torch).
    ``weight_decay`` is an L2 term added to g (torch's ``Adam``); :class:`AdamW` decouples it.
    The rule: :func:`_single_tensor_adam`.
    """

    decoupled = False

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        _check_in_range("lr", lr)
        _check_in_range("eps", eps)
        _check_in_range("weight_decay", weight_decay)
        _check_in_range("betas[0]", betas[0], 0.0, 1.0, open_high=True)
        _check_in_range("betas[1]", betas[1], 0.0, 1.0, open_high=True)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _step_group(self, group, params, grads):
        steps, exp_avgs, exp_avg_sqs = self._state_lists(
            params, step=_zero_step, exp_avg=torch.zeros_like, exp_avg_sq=torch.zeros_like)
        beta1, beta2 = group["betas"]
        _single_tensor_adam(params, grads, exp_avgs, exp_avg_sqs, steps, beta1=beta1, beta2=beta2,
                            lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
                            decoupled_weight_decay=self.decoupled)


class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay ``θ ← θ(1 − ηλ)``.

    As in torch, the same rule as Adam with ``decoupled_weight_decay=True``.
    """

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
