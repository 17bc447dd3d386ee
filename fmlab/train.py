"""``fit()`` and ``evaluate()``: the training loop of book/01_training_cnn.ipynb, packaged.

Explained in book/01_training_cnn.ipynb, where the same loop is first written out by hand.

``fit`` keeps the data as tensors on the device and slices them into batches, shows a
``tqdm.auto`` progress bar, records a :class:`History`, stops early on a validation metric,
and checkpoints every epoch so that a killed run resumes where it stopped and ends with the
same weights as an uninterrupted one (on the CPU, where kernels are deterministic).
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import Dataset, batches
from .runtime import device as default_device
from .runtime import atomic_write, profile


# Sizes of book/01_training_cnn.ipynb, per profile (read with ``profile().pick(SIZES)``).
# ``val_fraction``: the share of the training images held out for validation (a fraction, so
# the split fits whatever data was loaded: 500 of the 4,000 embedded images, 5,000 of 60,000);
# ``seeds``: how many seeds the chapter's comparison runs; ``best_*``: the better model, whose
# learning rate and epochs benchmarks/tune_ch1.py chose on validation data (quick profile).
SIZES = {
    "quick": {"hand_epochs": 2, "epochs": 10, "patience": 3, "val_fraction": 1 / 8, "seeds": 3,
              "best_epochs": 15, "best_batch_size": 32, "best_lr": 3e-3},
    "full": {"hand_epochs": 1, "epochs": 15, "patience": 3, "val_fraction": 1 / 12, "seeds": 3,
             "best_epochs": 15, "best_batch_size": 128, "best_lr": 3e-3},
    # FMLAB_SMOKE=1: the same code paths, a token amount of training
    "smoke": {"hand_epochs": 1, "epochs": 1, "seeds": 1, "best_epochs": 1},
}


class NonFiniteLossError(FloatingPointError):
    """The loss became nan or inf; the message names the epoch and step."""


@dataclass
class History:
    """Per-epoch metrics of a :func:`fit` run (validation lists stay empty without ``val``)."""

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

    def __repr__(self) -> str:
        last = f"train_acc={self.train_acc[-1]:.4f}" if self.train_acc else "empty"
        if self.val_acc:
            last += f", val_acc={self.val_acc[-1]:.4f}"
        return f"History(epochs={self.epochs}, {last})"


@dataclass
class EarlyStopping:
    """Stop when ``metric`` has not improved by ``min_delta`` for ``patience`` epochs, and
    (with ``restore_best``) put back the weights of the best epoch (Prechelt 1998)."""

    patience: int = 3
    metric: str = "val_acc"  # or "val_loss"
    min_delta: float = 0.0
    restore_best: bool = True

    def __post_init__(self):
        if self.metric not in ("val_acc", "val_loss"):
            raise ValueError(f"early stopping watches 'val_acc' or 'val_loss', not {self.metric!r}")

    def better(self, new: float, best: float | None) -> bool:
        if best is None:
            return True
        return new > best + self.min_delta if self.metric == "val_acc" else new < best - self.min_delta


def _make_optimizer(optimizer, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    if optimizer is None:
        return torch.optim.Adam(model.parameters(), lr=lr)
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if callable(optimizer):
        return optimizer(model.parameters())
    raise TypeError("optimizer must be None, a torch.optim.Optimizer, or a function params -> optimizer")


def fit(model: nn.Module, train: Dataset, val: Dataset | None = None, *, epochs: int,
        optimizer=None, lr: float = 1e-3, batch_size: int = 64,
        loss_fn: Callable = F.cross_entropy,
        batch_transform: Callable | None = None,
        early_stopping: EarlyStopping | None = None,
        checkpoint: str | Path | None = None, resume: bool = True,
        scheduler: Callable | None = None, seed: int = 0,
        device: torch.device | str | None = None, amp: bool | None = None,
        progress: bool = True) -> History:
    """Train ``model`` on ``train`` for ``epochs`` epochs and return its :class:`History`.

    * ``optimizer``: an optimizer, a function ``params -> optimizer``, or ``None`` for Adam(lr).
    * ``scheduler``: a function ``optimizer -> LR scheduler``, stepped after every batch.
    * ``batch_transform(model, xb, yb) -> xb``: applied to each batch before the forward
      pass (adversarial training crafts its examples here); the model is put back in train
      mode afterwards.
    * ``checkpoint``: a file written after every epoch; with ``resume`` an existing one is
      loaded and training continues from it (a finished run returns at once).
    * ``amp``: bfloat16 autocast; default on for CUDA in the full profile.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be non-negative, got {epochs}")
    if len(train) == 0:
        raise ValueError("the training set is empty")
    if early_stopping is not None and val is None:
        raise ValueError("early stopping watches a validation metric: pass val=...")
    dev = torch.device(device) if device is not None else default_device()
    model.to(dev)
    train = train.to(dev)
    val = val.to(dev) if val is not None else None
    opt = _make_optimizer(optimizer, model, lr)
    sched = scheduler(opt) if scheduler is not None else None
    use_amp = (profile().amp if amp is None else amp) and dev.type == "cuda"
    gen = torch.Generator().manual_seed(seed)
    history, start_epoch = History(), 0
    best_score, best_state, bad_epochs = None, None, 0

    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and resume and path.exists():
        try:
            ck = torch.load(path, map_location=dev, weights_only=False)
        except Exception as err:
            raise RuntimeError(f"checkpoint {path} cannot be read ({err}); delete it to start over") from err
        if ck["batch_size"] != batch_size or ck["seed"] != seed:
            raise ValueError(f"checkpoint {path} was written with batch_size={ck['batch_size']}, "
                             f"seed={ck['seed']}; delete it or pass the same settings")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if sched is not None and ck["scheduler"] is not None:
            sched.load_state_dict(ck["scheduler"])
        history = History(**ck["history"])
        gen.set_state(ck["generator"])
        torch.set_rng_state(ck["torch_rng"])
        if dev.type == "cuda" and ck.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ck["cuda_rng"])
        best_score, best_state, bad_epochs = ck["early_stopping"]
        start_epoch = history.epochs
        if history.stopped_early:
            return history

    steps_per_epoch = math.ceil(len(train) / batch_size)
    # A finiteness check per step would synchronise with a GPU and costs a few percent on a
    # CPU, so losses are kept on the device and checked every few steps; the check still
    # names the first bad step.
    check_every = 25
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext
    bar = tqdm(total=(epochs - start_epoch) * steps_per_epoch, disable=not progress,
               desc="fit", unit="batch", leave=False)
    try:
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            model.train()
            loss_sum = torch.zeros((), device=dev)
            correct = torch.zeros((), device=dev, dtype=torch.long)
            # Per-batch losses and hit counts stay on the device, summed every check_every steps:
            # a reduction per step would cost more than the bookkeeping is worth.
            recent: list[torch.Tensor] = []
            hits: list[torch.Tensor] = []
            sizes: list[int] = []
            for step, (xb, yb) in enumerate(batches(train.x, train.y, batch_size, generator=gen)):
                if batch_transform is not None:
                    xb = batch_transform(model, xb, yb)
                    model.train()
                with autocast():
                    out = model(xb)  # (B, classes)
                    loss = loss_fn(out, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                recent.append(loss.detach())
                hits.append((out.detach().argmax(1) == yb).sum())
                sizes.append(len(yb))
                if len(recent) == check_every or step == steps_per_epoch - 1:
                    losses = _check_finite(recent, epoch, step)  # (k,) float32
                    loss_sum += (losses * torch.tensor(sizes, device=dev)).sum()
                    correct += torch.stack(hits).sum()
                    recent, hits, sizes = [], [], []
                bar.update(1)
            history.train_loss.append(loss_sum.item() / len(train))
            history.train_acc.append(correct.item() / len(train))
            history.lr.append(opt.param_groups[0]["lr"])
            if val is not None:
                ev = evaluate(model, val, loss_fn=loss_fn)
                history.val_loss.append(ev.loss)
                history.val_acc.append(ev.accuracy)
            history.epoch_time.append(time.perf_counter() - t0)
            bar.set_postfix(epoch=epoch + 1, loss=f"{history.train_loss[-1]:.4f}",
                            **({"val_acc": f"{history.val_acc[-1]:.4f}"} if val is not None else {}))
            if early_stopping is not None:
                score = getattr(history, early_stopping.metric)[-1]
                if early_stopping.better(score, best_score):
                    best_score, bad_epochs, history.best_epoch = score, 0, epoch + 1
                    best_state = copy.deepcopy(model.state_dict()) if early_stopping.restore_best else None
                else:
                    bad_epochs += 1
                    history.stopped_early = bad_epochs >= early_stopping.patience
            if (history.stopped_early or epoch == epochs - 1) and best_state is not None:
                model.load_state_dict(best_state)  # the best epoch's weights, however training ended
            if path is not None:
                _save_checkpoint({
                    "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "history": asdict(history), "generator": gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state() if dev.type == "cuda" else None,
                    "early_stopping": (best_score, best_state, bad_epochs),
                    "batch_size": batch_size, "seed": seed}, path)
            if history.stopped_early:
                break
    finally:
        bar.close()
    return history


def _save_checkpoint(state: dict, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))  # a kill keeps the last checkpoint


def _check_finite(losses: list[torch.Tensor], epoch: int, last_step: int) -> torch.Tensor:
    """The window's losses as one float32 tensor, or an error naming the first bad step."""
    window = torch.stack(losses).float()
    finite = torch.isfinite(window)
    if bool(finite.all()):
        return window
    first = last_step - len(losses) + 1 + int((~finite).nonzero()[0, 0])
    raise NonFiniteLossError(
        f"the loss became {window[~finite][0].item()} at epoch {epoch + 1}, step {first + 1}. "
        "Try a smaller learning rate, check the inputs for nan/inf, or clip gradients "
        "(torch.nn.utils.clip_grad_norm_).")


@dataclass
class Evaluation:
    """Accuracy, mean loss, confusion matrix (rows: true class) and predictions on a dataset."""

    accuracy: float
    loss: float
    confusion: torch.Tensor
    predictions: torch.Tensor
    targets: torch.Tensor
    classes: list[str]

    @property
    def report(self) -> str:
        """scikit-learn's classification report: precision, recall and F1 per class."""
        from sklearn.metrics import classification_report

        return classification_report(self.targets.numpy(), self.predictions.numpy(),
                                     labels=list(range(len(self.classes))),
                                     target_names=self.classes, digits=3, zero_division=0)

    def __repr__(self) -> str:
        return f"Evaluation(accuracy={self.accuracy:.4f}, loss={self.loss:.4f}, n={len(self.targets)})"


def evaluate(model: nn.Module, data: Dataset, batch_size: int = 512,
             loss_fn: Callable = F.cross_entropy, device: torch.device | str | None = None) -> Evaluation:
    """Evaluate ``model`` on ``data`` in eval mode (its mode is restored afterwards)."""
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    preds, loss_sum = [], torch.zeros((), device=dev)
    try:
        with torch.inference_mode():
            for xb, yb in batches(data.x.to(dev), data.y.to(dev), batch_size, shuffle=False):
                out = model(xb).float()  # (B, classes)
                loss_sum += loss_fn(out, yb, reduction="sum")
                preds.append(out.argmax(1))
    finally:
        model.train(was_training)
    pred = torch.cat(preds).cpu()
    target = data.y.cpu()
    k = len(data.classes)
    confusion = torch.bincount(target * k + pred, minlength=k * k).reshape(k, k)
    return Evaluation((pred == target).float().mean().item(), loss_sum.item() / len(data),
                      confusion, pred, target, list(data.classes))
