"""Questions whose answer is a trained model: the child trains, the parent evaluates.

Explained for instructors in book/instructors.md. The parent chooses the training images in
``prepare``, from the dataset the checks file names, and hands them to the child; the held-out
images stay in the parent, which loads the returned weights into its own copy of the reference
architecture and evaluates them there.
"""
from __future__ import annotations

import contextlib

from torch import nn

from .spec import Result, expect_state_dict


def training_images(dataset: str, split: str = "train", **options):
    """A ``prepare`` that hands the child the first ``case["n_train"]`` images of ``dataset``
    (a name of :func:`fmlab.data.load`, called with ``split`` and ``options``), as tensors with
    their class names. The checks file declares the dataset, e.g.
    ``prepare=training_images(name, source="embedded")``."""
    def prepare(case: dict) -> dict:
        from fmlab.data import load

        train = load(dataset, split, **options).subset(case["n_train"])
        case.update(x=train.x, y=train.y, classes=list(train.classes), dataset=train.name)
        return case

    return prepare


def train_in_child(ns: dict, case: dict, function: str, guard=contextlib.nullcontext) -> dict:
    """``run``: call the student's ``function(train)`` on the images ``prepare`` chose, inside
    ``guard()``, and return the trained model's ``state_dict``."""
    from fmlab.data import Dataset

    train = Dataset(case["x"].clone(), case["y"].clone(), list(case["classes"]), case["dataset"])
    with guard():
        model = ns[function](train)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{function} should return the trained nn.Module, got {type(model).__name__}")
    return dict(model.state_dict())


def load_into_reference(got, architecture: type[nn.Module], *args) -> tuple[nn.Module | None, Result]:
    """``grade``: the reference ``architecture(*args)`` with the returned weights loaded, or
    ``None`` and the reason they do not fit."""
    model = architecture(*args)
    fits = expect_state_dict(got, model, what=f"the weights of the returned model (a "
                                              f"{architecture.__name__}{args})")
    return (model if fits.passed else None), fits


def score_between(value: float, case: dict, what: str = "") -> tuple[float, str]:
    """A trained model's score, rising linearly from 0 at ``case["zero_at"]`` to full marks at
    ``case["full_at"]``, and the verdict that says so (``"ok"`` at full marks).

    >>> score_between(0.75, {"zero_at": 0.5, "full_at": 1.0})
    (0.5, 'full marks from 100%, none below 50%')
    """
    lo, hi = case["zero_at"], case["full_at"]
    score = min(max((value - lo) / (hi - lo), 0.0), 1.0)
    what = f" {what}" if what else ""
    verdict = "ok" if score >= 1 else f"full marks from {hi:.0%}{what}, none below {lo:.0%}"
    return score, verdict
