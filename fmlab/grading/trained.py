"""Questions whose answer is a trained model: the child trains, the parent evaluates.

Explained for instructors in book/instructors.md. The parent chooses the training images in
``prepare`` and hands them to the child; the held-out images stay in the parent, which loads
the returned weights into its own copy of the reference architecture and evaluates them there.
"""
from __future__ import annotations

import contextlib

from torch import nn

from .spec import Result, expect_state_dict


def with_training_images(case: dict) -> dict:
    """``prepare``: the first ``case["n_train"]`` embedded MNIST training images, as tensors."""
    from fmlab.data import load

    train = load("mnist", "train", source="embedded").subset(case["n_train"])
    case["x"], case["y"] = train.x, train.y
    return case


def train_in_child(ns: dict, case: dict, function: str, guard=contextlib.nullcontext) -> dict:
    """``run``: call the student's ``function(train)`` on the images ``prepare`` chose, inside
    ``guard()``, and return the trained model's ``state_dict``."""
    from fmlab.data import Dataset

    train = Dataset(case["x"].clone(), case["y"].clone(), [str(d) for d in range(10)], "mnist-5k")
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
