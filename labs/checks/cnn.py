"""Public checks of the lab "Training a CNN" (labs/01_cnn.ipynb, lab id ``cnn``).

Format: fmlab/grading/spec.py; explained in book/instructors.md. ``run`` runs beside the
student's code and returns plain data; ``grade`` runs in the grader's own process and computes
every reference itself, with real torch layers, a reference training loop, and held-out images.
``forbid`` switches off what an exercise asks students to do themselves (fmlab/grading/forbid.py):
building layers to read a shape off, and fmlab's own training loop.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fmlab.grading import Question, Result, expect_close, expect_equal, expect_state_dict
from fmlab.grading.spec import describe
import fmlab.train
from fmlab.grading.trained import (load_into_reference, score_between, train_in_child,
                                   training_images)

# The master notebooks beside this folder: out of a graded answer's reach.
PRIVATE = ("../*.ipynb",)

LAYERS = ("torch.nn.Conv2d", "torch.nn.MaxPool2d", "torch.nn.functional.conv2d",
          "torch.nn.functional.max_pool2d", "torch.max_pool2d")
# fmlab's versions of what q2-q4 ask for, where fmlab has them
FMLAB_TRAIN = tuple(f"fmlab.train.{name}" for name in ("accuracy", "train_one_epoch", "fit")
                    if hasattr(fmlab.train, name))

# --- q1: the output shape of a conv/pool stack -------------------------------------------------


def reference_shape(input_shape, layers) -> tuple[int, int, int]:
    """Run a zero image through real torch layers and read the shape off."""
    c, h, w = input_shape
    stack = []
    for layer in layers:
        if layer[0] == "conv":
            _, out, k, s, p = layer
            stack.append(nn.Conv2d(c, out, k, stride=s, padding=p))
            c = out
        else:
            _, k, s = layer
            stack.append(nn.MaxPool2d(k, stride=s))
    with torch.no_grad():
        y = nn.Sequential(*stack)(torch.zeros(1, *input_shape))  # (1, C', H', W')
    return tuple(y.shape[1:])


def run_q1(ns, case):
    got = ns["conv_output_shape"](tuple(case["input_shape"]), [tuple(l) for l in case["layers"]])
    return tuple(got) if isinstance(got, torch.Size) else got


def grade_q1(case, got):
    expected = reference_shape(case["input_shape"], case["layers"])
    if not isinstance(got, (tuple, list)) or len(got) != 3 or not all(type(v) is int for v in got):
        return Result.fail(f"return a tuple of three ints (C, H, W), got {describe(got)}")
    return expect_equal(tuple(got), expected, what=f"the shape after {len(case['layers'])} layer(s)")


# --- q2: accuracy ------------------------------------------------------------------------------

def prepare_q2(case):
    g = torch.Generator().manual_seed(case.get("seed", 0))
    n, c = case["n"], case.get("classes", 10)
    logits = torch.randn(n, c, generator=g) * case.get("scale", 1.0)
    if case.get("ties"):  # every row's top two logits are equal: the first index must win
        logits = logits.round()
        top = logits.max(1).values
        logits[:, 1] = top
        logits[:, 4] = top
    targets = torch.randint(0, c, (n,), generator=g)
    if case.get("ties"):
        targets[::2] = 1
        targets[1::2] = 4
    hits = case.get("right")
    if hits is not None:  # make the first `hits` rows right
        targets[:hits] = logits[:hits].argmax(1)
    case["logits"] = logits.to(getattr(torch, case.get("dtype", "float32")))
    case["targets"] = targets.to(getattr(torch, case.get("target_dtype", "int64")))
    return case


def run_q2(ns, case):
    try:
        value = ns["accuracy"](case["logits"].clone(), case["targets"].clone())
    except ValueError:
        if case["n"] == 0:
            return {"raised": "ValueError"}
        raise
    return {"value": value}


def grade_q2(case, got):
    if case["n"] == 0:
        if got == {"raised": "ValueError"}:
            return Result.ok()
        return Result.fail("an empty batch has no accuracy: raise ValueError, "
                           f"got {describe(got.get('value') if isinstance(got, dict) else got)}")
    value = got.get("value") if isinstance(got, dict) else None
    if type(value) is not float:
        hint = " (call .item() on a tensor)" if isinstance(value, torch.Tensor) else ""
        return Result.fail(f"accuracy should return a Python float{hint}, got {describe(value)}")
    expected = (case["logits"].argmax(1) == case["targets"].long()).double().mean()
    return expect_close(torch.tensor(value, dtype=torch.float64), expected, atol=1e-6, rtol=0,
                        what="the accuracy")


# --- q3: one training epoch --------------------------------------------------------------------

class TinyNet(nn.Module):
    """A small CNN for 1×8×8 inputs, with batch norm, so that train and eval mode differ."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            # no conv bias: batch norm cancels it, its gradient is rounding noise, and Adam
            # would turn that noise into full-size steps that no two machines agree on
            nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(4 * 4 * 4, 3))

    def forward(self, x):
        return self.net(x)  # (B, 3)


def make_optimizer(model: nn.Module, spec: dict) -> torch.optim.Optimizer:
    if spec["name"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=spec["lr"], momentum=spec.get("momentum", 0.0))
    return torch.optim.Adam(model.parameters(), lr=spec["lr"])


def prepare_q3(case):
    g = torch.Generator().manual_seed(case["seed"])
    torch.manual_seed(case["seed"])
    case["init"] = TinyNet().state_dict()
    n = sum(case["batch_sizes"])
    case["x"] = torch.randn(n, 1, 8, 8, generator=g)
    case["y"] = torch.randint(0, 3, (n,), generator=g)
    return case


def _model_and_batches(case):
    model = TinyNet()
    model.load_state_dict(case["init"])
    if case.get("start_in_eval"):
        model.eval()
    bounds = torch.tensor([0] + list(case["batch_sizes"])).cumsum(0).tolist()
    batches = [(case["x"][a:b], case["y"][a:b]) for a, b in zip(bounds, bounds[1:])]
    return model, batches


def run_q3(ns, case):
    model, batches = _model_and_batches(case)
    optimizer = make_optimizer(model, case["optimizer"])
    loss = ns["train_one_epoch"](model, batches, optimizer, F.cross_entropy)
    return {"loss": loss, "state": model.state_dict()}


def reference_epoch(model, batches, optimizer, loss_fn) -> float:
    """What train_one_epoch must do: the mean loss over all examples, weighted by batch size."""
    model.train()
    total, count = 0.0, 0
    for xb, yb in batches:
        optimizer.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(xb)
        count += len(xb)
    return total / count


def grade_q3(case, got):
    model, batches = _model_and_batches(case)
    expected_loss = reference_epoch(model, batches, make_optimizer(model, case["optimizer"]), F.cross_entropy)
    if not isinstance(got, dict) or set(got) != {"loss", "state"}:
        return Result.fail(f"unexpected result {describe(got)}")
    loss = got["loss"]
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        loss = loss.double().item()
    if type(loss) not in (float, int):
        loss_r = Result.fail(f"train_one_epoch should return the mean loss as a float, got {describe(loss)}")
    else:
        loss_r = expect_close(torch.tensor(float(loss), dtype=torch.float64),
                              torch.tensor(expected_loss, dtype=torch.float64), atol=1e-5, rtol=1e-4,
                              what="the returned mean loss (over all examples, weighted by batch size)")
    reference = TinyNet()
    weights_r = expect_state_dict(got["state"], reference, what="the model after the epoch")
    if weights_r.passed:
        for name, value in model.state_dict().items():
            weights_r = expect_close(got["state"][name], value, atol=1e-5, rtol=1e-4,
                                     what=f"after the epoch, {name}")
            if not weights_r.passed:
                break
    score = 0.5 * loss_r.score + 0.5 * weights_r.score
    msgs = [m for r, m in ((weights_r, "weights"), (loss_r, "loss")) if not r.passed for m in [r.message]]
    return Result(score, "; ".join(msgs) if msgs else "ok")


# --- q4: a trained model, evaluated on held-out images -----------------------------------------

def run_q4(ns, case):
    return train_in_child(ns, case, "train_model")


def grade_q4(case, got):
    from fmlab.data import load
    from fmlab.models import SeedCNN
    from fmlab.train import evaluate

    model, fits = load_into_reference(got, SeedCNN, 1, 10, 28)
    if model is None:
        return fits
    test = load("mnist", "test", source="embedded")  # 1,000 images the child was never handed
    acc = evaluate(model, test).accuracy
    score, verdict = score_between(acc, case)
    return Result(score, f"held-out accuracy {acc:.1%} on {len(test):,} images ({verdict})", scale=True)


QUESTIONS = [
    Question(
        id="q1", points=2, title="Output shape of a conv/pool stack", requires=("conv_output_shape",),
        run=run_q1, grade=grade_q1, timeout=10, forbid=LAYERS,
        cases=lambda: [
            {"name": "one 3x3 conv", "input_shape": (1, 28, 28), "layers": [("conv", 32, 3, 1, 0)]},
            {"name": "SeedCNN's features", "input_shape": (1, 28, 28),
             "layers": [("conv", 32, 3, 1, 0), ("pool", 2, 2)]},
            {"name": "padding and stride", "input_shape": (3, 32, 32),
             "layers": [("conv", 16, 5, 2, 2), ("pool", 2, 2), ("conv", 8, 3, 1, 1)]},
        ]),
    Question(
        id="q2", points=2, title="Accuracy", requires=("accuracy",),
        run=run_q2, grade=grade_q2, prepare=prepare_q2, timeout=10, forbid=FMLAB_TRAIN,
        cases=lambda: [
            {"name": "a batch of 8, 5 right", "n": 8, "right": 5, "seed": 1},
            {"name": "a batch of 100", "n": 100, "seed": 2},
        ]),
    Question(
        id="q3", points=3, title="One training epoch", requires=("train_one_epoch",),
        run=run_q3, grade=grade_q3, prepare=prepare_q3, timeout=10, forbid=FMLAB_TRAIN,
        cases=lambda: [
            {"name": "SGD, batches of 8", "seed": 0, "batch_sizes": [8, 8, 8],
             "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}},
            {"name": "SGD, a last batch of 5", "seed": 1, "batch_sizes": [8, 8, 5],
             "optimizer": {"name": "sgd", "lr": 0.05}},
        ]),
    Question(
        id="q4", points=3, title="Train a CNN to 90% held-out accuracy", requires=("train_model",),
        run=run_q4, grade=grade_q4, prepare=training_images("mnist", source="embedded"), timeout=60,
        forbid=FMLAB_TRAIN,
        cases=lambda: [
            {"name": "4,000 training images", "n_train": 4000, "full_at": 0.90, "zero_at": 0.70},
        ]),
]
