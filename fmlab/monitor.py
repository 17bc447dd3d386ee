"""What a training run records and watches: its :class:`History`, and its losses, checked for
nan and inf.

Used by :func:`fmlab.train.fit` and by the other training loops of the package (distillation,
masked-autoencoder pre-training, adversarial training), so that a loss that diverges stops every
one of them with the same :class:`NonFiniteLossError`, naming where it happened and what to try.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

# A finiteness check per step would synchronise with a GPU and costs a few percent on a CPU,
# so losses stay on the device and are checked every CHECK_EVERY steps; the check still names
# the first bad step.
CHECK_EVERY = 25

ADVICE = ("Try a smaller learning rate, check the inputs for nan/inf, or clip gradients "
          "(torch.nn.utils.clip_grad_norm_).")


class NonFiniteLossError(FloatingPointError):
    """The loss became nan or inf; the message names the epoch and step."""


def non_finite_loss(value: float, where: str) -> NonFiniteLossError:
    """The error for a loss that became ``value`` (nan or inf) ``where`` ("at epoch 2, step 7").

    >>> print(non_finite_loss(float("nan"), "at epoch 1, step 3"))  # doctest: +ELLIPSIS
    the loss became nan at epoch 1, step 3. Try a smaller learning rate, ...
    """
    return NonFiniteLossError(f"the loss became {value} {where}. {ADVICE}")


@dataclass
class History:
    """Per-epoch metrics of a :func:`fmlab.train.fit` run (validation lists stay empty without
    ``val``)."""

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    epoch_time: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    best_epoch: int | None = None  # 1-based, when early stopping watched a metric
    stopped_early: bool = False

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    def last(self) -> dict[str, str]:
        """The last epoch's loss and accuracies, formatted (for a progress bar)."""
        names = ("train_loss", "train_acc", "val_acc")
        return {n: f"{getattr(self, n)[-1]:.4f}" for n in names if getattr(self, n)}

    def __repr__(self) -> str:
        last = f"train_acc={self.train_acc[-1]:.4f}" if self.train_acc else "empty"
        if self.val_acc:
            last += f", val_acc={self.val_acc[-1]:.4f}"
        return f"History(epochs={self.epochs}, {last})"


class LossWindow:
    """One epoch's losses: kept on the device, checked for nan/inf every :data:`CHECK_EVERY`
    steps, summed as ``sum_b n_b l_b`` (``l_b``: a batch's mean loss, ``n_b``: its size).

    ``correct``, a 0-dim integer tensor, receives the hit counts given to :meth:`add`.

    >>> window = LossWindow(epoch=2)
    >>> for loss in (1.0, 3.0, float("inf")):
    ...     window.add(torch.tensor(loss), size=4)
    >>> window.mean()
    Traceback (most recent call last):
    ...
    fmlab.monitor.NonFiniteLossError: the loss became inf at epoch 2, step 3. Try a smaller ...
    """

    def __init__(self, epoch: int = 1, correct: torch.Tensor | None = None):
        self.epoch, self.correct = epoch, correct
        self.steps, self.count = 0, 0
        self.total: torch.Tensor | float = 0.0  # of the steps flushed so far
        self.losses, self.sizes, self.hits = [], [], []

    def add(self, loss: torch.Tensor, size: int, hits: torch.Tensor | None = None) -> None:
        """Record one step's mean loss over ``size`` examples (and its hit count)."""
        self.steps += 1
        self.count += size
        self.losses.append(loss.detach())
        self.sizes.append(size)
        if hits is not None:
            self.hits.append(hits)
        if len(self.losses) == CHECK_EVERY:
            self.flush()

    def flush(self) -> None:
        """Check the waiting losses, add them to :attr:`total` and their hits to ``correct``."""
        if not self.losses:
            return
        losses = _check_finite(self.losses, self.epoch, self.steps)  # (k,) float32
        self.total = self.total + (losses * torch.tensor(self.sizes, device=losses.device)).sum()
        if self.correct is not None:
            self.correct += torch.stack(self.hits).sum()
        self.losses, self.sizes, self.hits = [], [], []

    def mean(self) -> float:
        """The mean loss per example of every step so far, after the last check."""
        self.flush()
        return float(self.total) / self.count


def _check_finite(losses: list[torch.Tensor], epoch: int, last_step: int) -> torch.Tensor:
    """The window's losses as one float32 tensor, or an error naming the first bad step."""
    window = torch.stack(losses).float()
    finite = torch.isfinite(window)
    if bool(finite.all()):
        return window
    first = last_step - len(losses) + 1 + int((~finite).nonzero()[0, 0])
    raise non_finite_loss(window[~finite][0].item(), f"at epoch {epoch}, step {first}")
