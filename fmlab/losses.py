"""Loss functions derived by hand, with their backward passes, and gradient checks.

Explained in book/02_losses.ipynb.

Each loss is a :class:`torch.autograd.Function` whose ``backward`` is the formula derived in
the chapter (not autograd), so ``torch.autograd.gradcheck`` tests the derivation itself:

* :class:`MSE`: ``mean((p - t)^2)``, gradient ``2 (p - t) / n``.
* :class:`BCEWithLogits`: ``softplus(z) - y z``, gradient ``sigmoid(z) - y``.
* :class:`SoftmaxCrossEntropy`: ``-sum_c q_c log softmax(z)_c``, gradient ``softmax(z) - q``,
  with ``q = (1 - a) y + a / C`` under label smoothing ``a``.

Under ``reduction="mean"`` the gradients are divided by the number of terms averaged.
"""
from __future__ import annotations

from typing import Callable

import torch

REDUCTIONS = ("mean", "sum")

# Sizes for the chapter's checks (it trains nothing, so both profiles are the same, and a
# smoke run, FMLAB_SMOKE=1, only thins out the plotted curves).
SIZES = {
    "quick": {"batch": 6, "classes": 5, "sweep_points": 401},
    "full": {"batch": 6, "classes": 5, "sweep_points": 401},
    "smoke": {"sweep_points": 101},
}


# ---------------------------------------------------------------------------------------------
# Stable building blocks
# ---------------------------------------------------------------------------------------------

def logsumexp(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``log sum_c exp(z_c)`` computed as ``m + log sum_c exp(z_c - m)`` with ``m = max_c z_c``.

    Every ``exp`` then has an argument <= 0, so nothing overflows, and the largest term is 1,
    so the sum is >= 1 and its log never sees 0.
    """
    m = z.amax(dim=dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # a row of -inf stays -inf
    return (m + (z - m).exp().sum(dim=dim, keepdim=True).log()).squeeze(dim)


def log_softmax(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``z - logsumexp(z)``: the log-probabilities, finite even for logits of 1e4."""
    return z - logsumexp(z, dim).unsqueeze(dim)


def softmax(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``exp(z - max z) / sum exp(z - max z)``: equal to ``exp(z) / sum exp(z)`` but never overflows."""
    e = (z - z.amax(dim=dim, keepdim=True)).exp()
    return e / e.sum(dim=dim, keepdim=True)


def softplus(z: torch.Tensor) -> torch.Tensor:
    """``log(1 + exp(z))`` as ``max(z, 0) + log1p(exp(-|z|))``: no overflow, no lost digits."""
    return z.clamp(min=0) + torch.log1p((-z.abs()).exp())


def softmax_jacobian(z: torch.Tensor) -> torch.Tensor:
    """``d softmax(z)_i / d z_j = s_i (delta_ij - s_j)``, i.e. ``diag(s) - s s^T``.

    ``z`` of shape (C,) gives (C, C); (N, C) gives (N, C, C).
    """
    s = softmax(z)
    return torch.diag_embed(s) - s.unsqueeze(-1) * s.unsqueeze(-2)


# ---------------------------------------------------------------------------------------------
# Input checks: clear errors instead of silent broadcasting
# ---------------------------------------------------------------------------------------------

def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def class_probabilities(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targets as a (N, C) tensor of class probabilities in the dtype of ``logits``.

    ``targets`` is either integer class indices of shape (N,) with values in [0, C), or
    probabilities (one-hot or soft) of the same shape as ``logits``.
    """
    if logits.dim() != 2:
        raise ValueError(
            f"logits must have shape (N, C), got {tuple(logits.shape)}; "
            "for a single example use logits.unsqueeze(0)"
        )
    n, c = logits.shape
    if not targets.is_floating_point():
        if targets.shape != (n,):
            raise ValueError(
                f"integer targets must have shape (N,) = ({n},) to match logits {tuple(logits.shape)}, "
                f"got {tuple(targets.shape)}"
            )
        if n and (targets.min() < 0 or targets.max() >= c):
            raise ValueError(
                f"targets must be class indices in [0, {c - 1}] for {c} classes, "
                f"got values in [{int(targets.min())}, {int(targets.max())}]"
            )
        return torch.zeros_like(logits).scatter_(1, targets.long().unsqueeze(1), 1.0)
    if targets.shape != logits.shape:
        raise ValueError(
            f"probability targets must have the shape of logits {tuple(logits.shape)}, "
            f"got {tuple(targets.shape)}; pass class indices as an integer tensor of shape (N,)"
        )
    return targets.to(logits.dtype)


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{what}: prediction has shape {tuple(a.shape)} but target has shape {tuple(b.shape)}; "
            "they must match (no broadcasting, which silently gives a wrong loss)"
        )


# ---------------------------------------------------------------------------------------------
# The losses as autograd Functions with hand-written backward passes
# ---------------------------------------------------------------------------------------------

class MSE(torch.autograd.Function):
    """``L = mean_i (p_i - t_i)^2``; ``dL/dp = 2 (p - t) / n`` (``n`` = number of elements)."""

    @staticmethod
    def forward(ctx, pred, target, reduction="mean"):
        diff = pred - target
        ctx.save_for_backward(diff)
        ctx.scale = 1.0 / diff.numel() if reduction == "mean" else 1.0
        loss = diff.square().sum()
        return loss * ctx.scale

    @staticmethod
    def backward(ctx, grad_out):
        (diff,) = ctx.saved_tensors
        g = grad_out * 2.0 * ctx.scale * diff
        return g, -g, None


class BCEWithLogits(torch.autograd.Function):
    """``l = -[y log s + (1 - y) log(1 - s)]`` with ``s = sigmoid(z)``, i.e. ``softplus(z) - y z``.

    ``dl/dz = sigmoid(z) - y`` and ``dl/dy = -z`` (divided by ``n`` under mean).
    """

    @staticmethod
    def forward(ctx, z, y, reduction="mean"):
        ctx.save_for_backward(z, y)
        ctx.scale = 1.0 / z.numel() if reduction == "mean" else 1.0
        # softplus(z) - y z, grouped so that a confident correct prediction (z = 100, y = 1)
        # keeps its tiny loss log1p(e^-100) instead of rounding 100 + 4e-44 - 100 to 0.
        loss = (z.clamp(min=0) - y * z) + torch.log1p((-z.abs()).exp())
        return loss.sum() * ctx.scale

    @staticmethod
    def backward(ctx, grad_out):
        z, y = ctx.saved_tensors
        k = grad_out * ctx.scale
        return k * (torch.sigmoid(z) - y), -k * z, None


class SoftmaxCrossEntropy(torch.autograd.Function):
    """``l_i = -sum_c q_ic log softmax(z_i)_c`` with ``q = (1 - a) y + a / C``.

    ``dl_i/dz_i = softmax(z_i) - q_i`` and ``dl_i/dy_i = -(1 - a) log softmax(z_i)``;
    under mean reduction both are divided by the batch size N. ``y``: (N, C) probabilities.
    """

    @staticmethod
    def forward(ctx, z, y, reduction="mean", label_smoothing=0.0):
        n, c = z.shape
        logp = log_softmax(z)  # (N, C)
        q = (1.0 - label_smoothing) * y + label_smoothing / c
        ctx.save_for_backward(logp, q)
        ctx.scale = 1.0 / n if reduction == "mean" else 1.0
        ctx.keep = 1.0 - label_smoothing
        return -(q * logp).sum() * ctx.scale

    @staticmethod
    def backward(ctx, grad_out):
        logp, q = ctx.saved_tensors
        k = grad_out * ctx.scale
        return k * (logp.exp() - q), -k * ctx.keep * logp, None, None


def mse(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean squared error through :class:`MSE` (matches ``F.mse_loss``).

    >>> p = torch.tensor([0.5, 2.0, -1.0], requires_grad=True)
    >>> t = torch.tensor([0.0, 2.0, 1.0])
    >>> loss = mse(p, t)  # (0.25 + 0 + 4) / 3
    >>> round(loss.item(), 4)
    1.4167
    >>> loss.backward()  # the hand-derived gradient 2 (p - t) / n
    >>> p.grad
    tensor([ 0.3333,  0.0000, -1.3333])
    >>> mse(p, t.view(3, 1))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: mse: prediction has shape (3,) but target has shape (3, 1); they must match ...
    """
    _check_reduction(reduction)
    _check_same_shape(pred, target, "mse")
    return MSE.apply(pred, target, reduction)


def bce_with_logits(z: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy on logits through :class:`BCEWithLogits`
    (matches ``F.binary_cross_entropy_with_logits``). ``y`` holds probabilities in [0, 1].

    >>> z = torch.tensor([100.0, -100.0, 0.0], requires_grad=True)
    >>> y = torch.tensor([1.0, 1.0, 0.5])
    >>> loss = bce_with_logits(z, y, reduction="sum")  # finite even at |z| = 100
    >>> round(loss.item(), 4)  # 0 + 100 + log 2
    100.6931
    >>> loss.backward()  # sigmoid(z) - y
    >>> z.grad
    tensor([ 0., -1.,  0.])
    """
    _check_reduction(reduction)
    _check_same_shape(z, y, "bce_with_logits")
    if not y.is_floating_point():
        raise TypeError(f"bce_with_logits needs float targets in [0, 1], got dtype {y.dtype}; use y.float()")
    return BCEWithLogits.apply(z, y.to(z.dtype), reduction)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Softmax cross-entropy through :class:`SoftmaxCrossEntropy` (matches ``F.cross_entropy``).

    ``logits``: (N, C). ``targets``: class indices (N,) or probabilities (N, C).

    >>> import torch.nn.functional as F
    >>> z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], requires_grad=True)
    >>> y = torch.tensor([0, 1])
    >>> loss = cross_entropy(z, y, label_smoothing=0.1)
    >>> torch.allclose(loss, F.cross_entropy(z, y, label_smoothing=0.1))
    True
    >>> loss.backward()  # (softmax(z) - q) / N, the gradient the chapter derives
    >>> torch.allclose(z.grad, cross_entropy_grad(z.detach(), y, label_smoothing=0.1))
    True
    >>> round(cross_entropy(torch.tensor([[1e4, 0.0]]), torch.tensor([1])).item())  # no overflow
    10000
    """
    _check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    return SoftmaxCrossEntropy.apply(logits, class_probabilities(logits, targets), reduction,
                                     float(label_smoothing))


# ---------------------------------------------------------------------------------------------
# The same gradients as plain formulas (no autograd), and the unstable forms to compare with
# ---------------------------------------------------------------------------------------------

def cross_entropy_grad(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean",
                       label_smoothing: float = 0.0) -> torch.Tensor:
    """``d cross_entropy / d logits = (softmax(z) - q) / N`` (no ``/ N`` for ``sum``). Shape (N, C).

    >>> cross_entropy_grad(torch.zeros(1, 4), torch.tensor([2]))  # softmax is uniform: 1/4
    tensor([[ 0.2500,  0.2500, -0.7500,  0.2500]])
    """
    _check_reduction(reduction)
    y = class_probabilities(logits, targets)
    q = (1.0 - label_smoothing) * y + label_smoothing / logits.shape[1]
    g = softmax(logits) - q
    return g / logits.shape[0] if reduction == "mean" else g


def bce_with_logits_grad(z: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``d bce / d z = (sigmoid(z) - y) / n``."""
    _check_same_shape(z, y, "bce_with_logits_grad")
    g = torch.sigmoid(z) - y
    return g / z.numel() if reduction == "mean" else g


def bce_probability_form(z: torch.Tensor, y: torch.Tensor, clamp: float | None = None) -> torch.Tensor:
    """The UNSTABLE textbook form ``-mean[y log s + (1 - y) log(1 - s)]`` with ``s = sigmoid(z)``.

    In float32 ``sigmoid(100)`` rounds to exactly 1, so ``log(1 - s)`` is ``-inf``. With
    ``clamp=eps`` the probabilities are clipped to [eps, 1 - eps] (as some libraries do): the loss
    stays finite but its gradient is exactly 0 beyond the clip, so a confidently wrong model
    stops learning. Shown in the chapter; do not train with it.
    """
    s = torch.sigmoid(z)
    if clamp is not None:
        s = s.clamp(clamp, 1.0 - clamp)
    return -(y * s.log() + (1.0 - y) * (1.0 - s).log()).mean()


def softmax_naive(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The UNSTABLE ``exp(z) / sum exp(z)``: ``exp(1e4)`` is inf, and inf / inf is nan."""
    e = z.exp()
    return e / e.sum(dim=dim, keepdim=True)


def seed_ce_gradient_wrong(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A WRONG gradient, kept to show a gradient check catching it. Do not use it.

    A transcription of the formula in the survey notes the course's syllabus comes from,
    ``dL/dθ_k = -1/N sum_i sum_j (y_ij / ŷ_ij - δ_ij) dŷ_ij/dθ_k`` with ``δ_ij = 1`` when
    example i has class j, taking θ = the logits and ŷ = softmax(logits). The ``- δ_ij`` term
    should not be there; the correct gradient is ``(ŷ - y) / N``.
    """
    y = class_probabilities(logits, targets)  # (N, C)
    delta = torch.zeros_like(y).scatter_(1, y.argmax(1, keepdim=True), 1.0)  # δ_ij: (N, C)
    p = softmax(logits)  # ŷ: (N, C)
    jac = softmax_jacobian(logits)  # dŷ_ij/dz_ik: (N, C, C)
    return -torch.einsum("ij,ijk->ik", y / p - delta, jac) / logits.shape[0]  # (N, C)


# ---------------------------------------------------------------------------------------------
# Gradient checking
# ---------------------------------------------------------------------------------------------

def numerical_gradient(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float = 1e-6,
                       dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """Central differences ``(f(x + eps e_i) - f(x - eps e_i)) / (2 eps)`` for every element i.

    The error is O(eps^2) from truncation plus O(u |f| / eps) from rounding (u = the unit
    roundoff: 1.1e-16 in float64, 6e-8 in float32), hence float64 by default; ``dtype=None``
    keeps ``x``'s dtype, to show why float32 is not enough. ``f`` maps a tensor shaped like
    ``x`` to a scalar. Returns a tensor shaped like ``x`` in that dtype.

    >>> x = torch.tensor([[1.0, -2.0, 0.5]])
    >>> numeric = numerical_gradient(lambda v: cross_entropy(v, torch.tensor([0])), x)
    >>> relative_error(numeric, cross_entropy_grad(x.double(), torch.tensor([0]))) < 1e-8
    True
    """
    x = x.detach().to(dtype or x.dtype).clone()
    grad = torch.zeros_like(x)
    flat, gflat = x.view(-1), grad.view(-1)
    with torch.no_grad():
        for i in range(flat.numel()):
            old = flat[i].item()
            flat[i] = old + eps
            f_plus = f(x)
            flat[i] = old - eps
            f_minus = f(x)
            flat[i] = old
            if not (torch.is_tensor(f_plus) and f_plus.numel() == 1) and not isinstance(f_plus, float):
                raise ValueError(f"f must return a scalar (a one-element tensor or a float), got {f_plus!r:.80}")
            gflat[i] = (float(f_plus) - float(f_minus)) / (2.0 * eps)
    return grad


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / max(||a||, ||b||)`` in float64 (0 when both are 0)."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.shape != b.shape:
        raise ValueError(f"relative_error: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    scale = max(a.norm().item(), b.norm().item())
    return 0.0 if scale == 0.0 else (a - b).norm().item() / scale


# ---------------------------------------------------------------------------------------------
# SGD with weight decay
# ---------------------------------------------------------------------------------------------

def sgd_step_weight_decay(theta: torch.Tensor, grad: torch.Tensor, lr: float, weight_decay: float,
                          decoupled: bool = False) -> torch.Tensor:
    """One SGD step with weight decay; returns the new parameters.

    * ``decoupled=False`` (L2 regularisation, what ``torch.optim.SGD(weight_decay=λ)`` does):
      add ``λ θ`` to the gradient of the loss, ``θ - η (∇L + λ θ)``.
    * ``decoupled=True`` (weight decay as its own step): ``θ - η ∇L - η λ θ``.

    For plain SGD the two are the same update; for adaptive methods they differ
    (book/03_optimizers.ipynb).
    """
    if decoupled:
        return theta - lr * grad - lr * weight_decay * theta
    return theta - lr * (grad + weight_decay * theta)
