"""``fit()`` and ``evaluate()``: the training loop of book/01_training_cnn.ipynb, packaged.

Explained in book/01_training_cnn.ipynb, where the same loop is first written out by hand.

``fit`` is built from small steps, each usable on its own:

* :func:`train_one_epoch`: one pass of gradient descent over a list of batches (the function
  the CNN lab asks students to write, with a few keyword-only extras);
* :class:`EarlyStopping`: watches a validation metric and keeps the best epoch's weights;
* :func:`save_checkpoint` / :func:`load_checkpoint`: everything a killed run needs to resume
  where it stopped and end with the same weights as an uninterrupted one (on the CPU, where
  kernels are deterministic).

``fit`` keeps the data as tensors on the device, slices them into batches, shows a progress
bar and records a :class:`~fmlab.monitor.History`.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import Dataset, batches
from .monitor import CHECK_EVERY, History, LossWindow, NonFiniteLossError  # noqa: F401
from .runtime import atomic_write, profile
from .runtime import device as default_device

# Sizes of book/01_training_cnn.ipynb, per profile (read with ``profile().pick(SIZES)``).
# ``val_fraction``: the share of the training images held out for validation (a fraction, so
# the split fits whatever data was loaded: 500 of the 4,000 embedded images, 5,000 of 60,000);
# ``seeds``: how many seeds the chapter's comparison runs; ``best_*``: the better model, from
# benchmarks/tune_ch1.py's grid on validation data: the full profile takes its best pair (3e-3,
# 15 epochs), the quick one (the book's CPU budget) the best learning rate at 5 epochs (1e-2).
SIZES = {
    "quick": {"hand_epochs": 1, "epochs": 6, "patience": 3, "val_fraction": 1 / 8, "seeds": 3,
              "best_epochs": 5, "best_batch_size": 32, "best_lr": 1e-2},
    "full": {"hand_epochs": 1, "epochs": 15, "patience": 3, "val_fraction": 1 / 12, "seeds": 3,
             "best_epochs": 15, "best_batch_size": 128, "best_lr": 3e-3},
    # FMLAB_SMOKE=1: the same code paths, a token amount of training
    "smoke": {"hand_epochs": 1, "epochs": 1, "seeds": 1, "best_epochs": 1},
}


# ---------------------------------------------------------------------------------------------
# Train and eval mode
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _modes_restored(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, was_training in modes:
            m.training = was_training


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode inside the block, then restore each submodule's own mode.

    ``model.train(was_training)`` would not do: it sets every submodule to the top module's
    mode, so a submodule deliberately kept in eval mode (a frozen batch-norm layer) would come
    back in train mode.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    >>> _ = net[1].eval()  # a frozen part inside a model in train mode
    >>> with eval_mode(net):
    ...     net.training, net[1].training
    (False, False)
    >>> net.training, net[1].training
    (True, False)
    """
    with _modes_restored(model):
        yield model.eval()


@contextlib.contextmanager
def train_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in train mode inside the block, then restore each submodule's own mode."""
    with _modes_restored(model):
        yield model.train()


# ---------------------------------------------------------------------------------------------
# One epoch
# ---------------------------------------------------------------------------------------------

def train_one_epoch(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    optimizer: torch.optim.Optimizer, loss_fn: Callable, *,
                    scheduler=None, batch_transform: Callable | None = None,
                    autocast: torch.dtype | None = None, correct: torch.Tensor | None = None,
                    on_batch: Callable[[], object] | None = None, epoch: int = 1) -> float:
    """One pass of gradient descent over ``batches``; returns the mean loss per example.

    The model is put in train mode; then for each batch ``(x, y)``: clear the gradients,
    ``loss = loss_fn(model(x), y)``, back-propagate, take an optimizer step. The result is
    ``sum_b n_b l_b / sum_b n_b`` (``l_b``: the batch's mean loss, ``n_b``: its size), as a
    float: the function labs/01_cnn.ipynb asks for. The keyword-only extras are what
    :func:`fit` needs:

    * ``scheduler``: a learning-rate scheduler, stepped after every batch;
    * ``batch_transform(model, x, y) -> x``: applied before the forward pass (adversarial
      training crafts its examples here); the model is put back in train mode afterwards;
    * ``autocast``: a dtype such as ``torch.bfloat16`` for the forward pass (mixed precision);
    * ``correct``: a 0-dim integer tensor; the number of examples whose largest output is
      their label is added to it in place (training accuracy without a sync per batch);
    * ``on_batch()``: called after each batch (a progress bar's ``update``);
    * ``epoch``: the epoch a :class:`NonFiniteLossError` names.

    Losses stay on the device, checked for nan/inf every ``CHECK_EVERY`` batches.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> model, x, y = nn.Linear(4, 3), torch.randn(10, 4), torch.randint(0, 3, (10,))
    >>> sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> epoch_batches = [(x[:6], y[:6]), (x[6:], y[6:])]  # the last batch is smaller
    >>> first = train_one_epoch(model, epoch_batches, sgd, F.cross_entropy)
    >>> second = train_one_epoch(model, epoch_batches, sgd, F.cross_entropy)
    >>> type(first), second < first
    (<class 'float'>, True)
    """
    model.train()
    window = LossWindow(epoch, correct)
    for x, y in batches:
        if batch_transform is not None:
            x = batch_transform(model, x, y)
            model.train()
        optimizer.zero_grad(set_to_none=True)
        with _autocast(autocast, x):
            out = model(x)  # (B, classes)
            loss = loss_fn(out, y)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        window.add(loss, len(y), (out.detach().argmax(1) == y).sum() if correct is not None else None)
        if on_batch is not None:
            on_batch()
    if window.count == 0:
        raise ValueError("train_one_epoch got no batches: pass a non-empty list of (x, y) pairs")
    return window.mean()


def _autocast(dtype: torch.dtype | None, x: torch.Tensor):
    return torch.autocast(x.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# Early stopping
# ---------------------------------------------------------------------------------------------

@dataclass
class EarlyStopping:
    """Stop when ``metric`` has not improved by ``min_delta`` for ``patience`` epochs, and
    (with ``restore_best``) put back the weights of the best epoch (Prechelt 1998).

    ``patience`` counts the epochs in a row without improvement: with ``patience=2``,
    :meth:`step` returns True at the second such epoch (the best epoch plus 2), not the
    third. An epoch improves when its score beats the best by *more* than ``min_delta``; an
    equal score does not improve.

    The object owns its state: the best score and epoch, a copy of the best weights, and the
    number of epochs since the last improvement. :meth:`step` records an epoch and says
    whether to stop; :meth:`state_dict` / :meth:`load_state_dict` carry the state through a
    checkpoint.

    >>> stop, net = EarlyStopping(patience=2, metric="val_loss"), nn.Linear(2, 1)
    >>> [stop.step(loss, net, epoch) for epoch, loss in enumerate([0.9, 0.7, 0.8, 0.75], 1)]
    [False, False, False, True]
    >>> stop.best_epoch, stop.best_score
    (2, 0.7)
    """

    patience: int = 3
    metric: str = "val_acc"  # or "val_loss"
    min_delta: float = 0.0
    restore_best: bool = True
    best_score: float | None = field(default=None, init=False)
    best_epoch: int | None = field(default=None, init=False)  # 1-based
    best_state: dict | None = field(default=None, init=False, repr=False)
    bad_epochs: int = field(default=0, init=False)

    def __post_init__(self):
        if self.metric not in ("val_acc", "val_loss"):
            raise ValueError(f"early stopping watches 'val_acc' or 'val_loss', not {self.metric!r}")

    def better(self, new: float, best: float | None) -> bool:
        if best is None:
            return True
        return new > best + self.min_delta if self.metric == "val_acc" else new < best - self.min_delta

    def step(self, score: float, model: nn.Module, epoch: int) -> bool:
        """Record epoch ``epoch``'s score (keeping the weights if it is the best so far);
        return True when ``patience`` epochs have passed without improvement."""
        if self.better(score, self.best_score):
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            if self.restore_best:
                self.best_state = copy.deepcopy(model.state_dict())
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def restore(self, model: nn.Module) -> None:
        """Load the best epoch's weights into ``model`` (when they were kept)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

    def state_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.init}

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def reset(self) -> None:
        """Forget every epoch seen (a new run starts)."""
        self.load_state_dict(EarlyStopping().state_dict())


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    history: History, *, scheduler=None, generator: torch.Generator | None = None,
                    early_stopping: EarlyStopping | None = None, **settings) -> None:
    """Write everything a run needs to resume to ``path``, atomically (a kill leaves the
    previous checkpoint whole): weights, optimizer and scheduler state, history, the batch
    order's generator, the global random state, early stopping's state, and ``settings``
    (e.g. batch size and seed), which :func:`load_checkpoint` checks."""
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "history": asdict(history),
        "generator": generator.get_state() if generator is not None else None,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
        "early_stopping": early_stopping.state_dict() if early_stopping is not None else None,
        "settings": settings,
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                    scheduler=None, generator: torch.Generator | None = None,
                    early_stopping: EarlyStopping | None = None,
                    device: torch.device | str | None = None, **settings) -> History:
    """Restore what :func:`save_checkpoint` wrote into the given objects; return the History.

    ``settings`` must equal the saved ones: resuming with another batch size or seed would
    silently give another run.
    """
    try:
        ck = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:
        raise RuntimeError(f"checkpoint {path} cannot be read ({err}); delete it to start over") from err
    if ck.get("settings") != settings:
        raise ValueError(f"checkpoint {path} was written with {ck.get('settings')}, not {settings}; "
                         "delete it or pass the same settings")
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    if scheduler is not None and ck["scheduler"] is not None:
        scheduler.load_state_dict(ck["scheduler"])
    if generator is not None and ck["generator"] is not None:
        generator.set_state(ck["generator"])
    torch.set_rng_state(ck["torch_rng"])
    if ck["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(ck["cuda_rng"])
    if early_stopping is not None and ck["early_stopping"] is not None:
        early_stopping.load_state_dict(ck["early_stopping"])
    return History(**ck["history"])


# ---------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------

def _make_optimizer(optimizer, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    if optimizer is None:
        return torch.optim.Adam(model.parameters(), lr=lr)
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if callable(optimizer):
        return optimizer(model.parameters())
    raise TypeError("optimizer must be None, a torch.optim.Optimizer, or a function params -> optimizer")


def _check_fit_arguments(train: Dataset, val: Dataset | None, epochs: int,
                         early_stopping: EarlyStopping | None) -> None:
    if epochs < 0:
        raise ValueError(f"epochs must be non-negative, got {epochs}")
    if len(train) == 0:
        raise ValueError("the training set is empty")
    if early_stopping is not None and val is None:
        raise ValueError("early stopping watches a validation metric: pass val=...")


def fit(model: nn.Module, train: Dataset, val: Dataset | None = None, *, epochs: int,
        optimizer=None, lr: float = 1e-3, batch_size: int = 64, loss_fn: Callable = F.cross_entropy,
        batch_transform: Callable | None = None, early_stopping: EarlyStopping | None = None,
        checkpoint: str | Path | None = None, resume: bool = True, scheduler: Callable | None = None,
        seed: int = 0, device: torch.device | str | None = None, amp: bool | None = None,
        progress: bool = True) -> History:
    """Train ``model`` on ``train`` for ``epochs`` epochs and return its :class:`History`.

    * ``optimizer``: an optimizer, a function ``params -> optimizer``, or ``None`` for Adam(lr).
    * ``scheduler``: a function ``optimizer -> LR scheduler``, stepped after every batch.
    * ``batch_transform(model, xb, yb) -> xb``: see :func:`train_one_epoch`.
    * ``early_stopping``: an :class:`EarlyStopping`, watching ``val``; the model ends with the
      best epoch's weights however training ended.
    * ``checkpoint``: a file written after every epoch; with ``resume`` an existing one is
      loaded and training continues from it (a finished run returns at once).
    * ``amp``: bfloat16 autocast; default on for CUDA in the full profile.

    Examples
    --------
    >>> import fmlab
    >>> from fmlab import data, models
    >>> digits, _ = data.load("digits", n=200), fmlab.seed_everything(0)
    >>> model = models.SeedCNN(1, 10, 8)
    >>> history = fit(model, digits, epochs=2, batch_size=50, progress=False, device="cpu")
    >>> history.epochs, history.train_loss[1] < history.train_loss[0]
    (2, True)
    """
    _check_fit_arguments(train, val, epochs, early_stopping)
    dev = torch.device(device) if device is not None else default_device()
    train, val = train.to(dev), (val.to(dev) if val is not None else None)
    opt = _make_optimizer(optimizer, model.to(dev), lr)
    run = dict(model=model, optimizer=opt, scheduler=scheduler(opt) if scheduler is not None else None,
               generator=torch.Generator().manual_seed(seed), early_stopping=early_stopping,
               batch_size=batch_size, seed=seed)
    if early_stopping is not None:
        early_stopping.reset()
    history = History()
    if checkpoint is not None and resume and Path(checkpoint).exists():
        history = load_checkpoint(checkpoint, device=dev, **run)
    autocast = torch.bfloat16 if (profile().amp if amp is None else amp) and dev.type == "cuda" else None
    steps = (epochs - history.epochs) * math.ceil(len(train) / batch_size)
    with tqdm(total=max(steps, 0), disable=not progress, desc="fit", unit="batch", leave=False) as bar:
        for epoch in range(history.epochs + 1, epochs + 1):
            if history.stopped_early:
                break
            t0, correct = time.perf_counter(), torch.zeros((), dtype=torch.long, device=dev)
            loss = train_one_epoch(
                model, batches(train.x, train.y, batch_size, generator=run["generator"]), opt, loss_fn,
                scheduler=run["scheduler"], batch_transform=batch_transform, autocast=autocast,
                correct=correct, on_batch=bar.update, epoch=epoch)
            _record_epoch(history, model, val, loss_fn, loss, correct.item() / len(train),
                          opt.param_groups[0]["lr"], t0)
            bar.set_postfix(epoch=epoch, **history.last())
            _watch(early_stopping, history, model, epoch, last_epoch=epochs)
            if checkpoint is not None:
                save_checkpoint(checkpoint, history=history, **run)
    return history


def _watch(early_stopping: EarlyStopping | None, history: History, model: nn.Module, epoch: int,
           last_epoch: int) -> None:
    """Early stopping's verdict on an epoch; the best epoch's weights come back at the end,
    whether patience ran out or not."""
    if early_stopping is None:
        return
    history.stopped_early = early_stopping.step(getattr(history, early_stopping.metric)[-1], model, epoch)
    history.best_epoch = early_stopping.best_epoch
    if history.stopped_early or epoch == last_epoch:
        early_stopping.restore(model)


def _record_epoch(history: History, model: nn.Module, val: Dataset | None, loss_fn: Callable,
                  loss: float, accuracy: float, lr: float, t0: float) -> None:
    history.train_loss.append(loss)
    history.train_acc.append(accuracy)
    history.lr.append(lr)
    if val is not None:
        ev = evaluate(model, val, loss_fn=loss_fn)
        history.val_loss.append(ev.loss)
        history.val_acc.append(ev.accuracy)
    history.epoch_time.append(time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

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
    """Evaluate ``model`` on ``data`` in eval mode (each submodule's mode is restored afterwards).

    Examples
    --------
    >>> from fmlab import data, models
    >>> test = data.load("digits", "test", n=100)
    >>> ev = evaluate(models.SeedCNN(1, 10, 8), test)
    >>> ev.confusion.shape, int(ev.confusion.sum()), 0.0 <= ev.accuracy <= 1.0
    (torch.Size([10, 10]), 100, True)
    >>> print(ev.report)  # doctest: +ELLIPSIS
                  precision    recall  f1-score   support
    ...
    """
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    dev = torch.device(device) if device is not None else next(  # no parameters: the CPU
        (p.device for p in model.parameters()), torch.device("cpu"))
    preds, loss_sum = [], torch.zeros((), device=dev)
    with eval_mode(model), torch.inference_mode():
        for xb, yb in batches(data.x.to(dev), data.y.to(dev), batch_size, shuffle=False):
            out = model(xb).float()  # (B, classes)
            loss_sum += loss_fn(out, yb, reduction="sum")
            preds.append(out.argmax(1))
    pred = torch.cat(preds).cpu()
    target = data.y.cpu()
    k = len(data.classes)
    confusion = torch.bincount(target * k + pred, minlength=k * k).reshape(k, k)
    return Evaluation((pred == target).float().mean().item(), loss_sum.item() / len(data),
                      confusion, pred, target, list(data.classes))
