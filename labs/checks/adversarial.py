"""Public checks of the adversarial lab (labs/04_adversarial.ipynb).

``run`` calls the student's function in the child process; ``grade`` recomputes the reference
with :mod:`fmlab.adversarial` in the parent. While the student's code runs, fmlab's own attacks
and torchattacks are switched off (``forbid``, fmlab/grading/forbid.py), so that importing the
answer does not pass.

Models are named in the cases and built the same way on both sides from a seed: ``"mlp"``
(no mode-dependent layers), ``"bn"`` (batch norm + dropout: its output depends on train/eval
mode, so an attack run in train mode gives different images) and ``"bn_nodrop"``
(batch norm only, deterministic in both modes). ``"trained"`` is a SeedCNN trained briefly on
MNIST by ``prepare`` in the parent; its weights travel in the case.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from fmlab.grading import Question, Result, expect_state_dict
from fmlab.grading.trained import (load_into_reference, score_between, train_in_child,
                                   training_images)

# The master notebooks beside this folder: out of a graded answer's reach.
PRIVATE = ("../*.ipynb",)

# Imported in the grading child before the student's code runs; where torchattacks is not
# installed (Colab's bare install of fmlab) the child skips it and forbid skips its names.
MODULES = ("torchattacks",)

# q4: the threat model and the grader's attack.
Q4_EPS = 0.1

# What the exercises ask students to write themselves. q3 hands the student's step the
# reference pgd, so it may call that one.
ATTACKS = ("fmlab.adversarial.fgsm", "fmlab.adversarial.fgsm_rs",
           "fmlab.adversarial.adversarial_training_step", "fmlab.adversarial.AdversarialTransform",
           "torchattacks.*")
PGD = ("fmlab.adversarial.pgd",)


# ---------------------------------------------------------------------------------------------
# Helpers shared by run (child) and grade (parent)
# ---------------------------------------------------------------------------------------------

def _build(name: str, seed: int = 0, state: dict | None = None) -> nn.Module:
    with torch.random.fork_rng():  # seeded weights, without resetting the caller's random stream
        torch.manual_seed(seed)
        model = _architecture(name)
    if state is not None:
        model.load_state_dict(state)
    return model


def _architecture(name: str) -> nn.Module:
    if name == "mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    elif name in ("bn", "bn_nodrop"):
        drop = nn.Dropout(0.3) if name == "bn" else nn.Identity()
        model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Flatten(), drop, nn.Linear(8 * 13 * 13, 10))
    elif name == "trained":
        from fmlab.models import SeedCNN
        model = SeedCNN(1, 10, 28)
    else:
        raise ValueError(f"unknown model {name!r}")
    return model


@functools.lru_cache(maxsize=1)
def _trained_state() -> dict:
    """A SeedCNN after one epoch on 2,000 MNIST images (about 90% accurate): a model on which
    attack strength is measurable. Trained in the parent, deterministically."""
    from fmlab.data import batches, load
    train = load("mnist", "train", source="embedded").subset(2000)
    model = _build("trained", seed=0)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    for xb, yb in batches(train.x, train.y, 50, generator=torch.Generator().manual_seed(0)):
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def _prepare_inputs(case: dict) -> dict:
    """Real MNIST test images (many pixels exactly 0 or 1, so the [0, 1] box binds)."""
    from fmlab.data import load
    test = load("mnist", "test", source="embedded")
    start = case.get("offset", 0)
    case["x"] = test.x[start:start + case["n"]].clone()
    case["y"] = test.y[start:start + case["n"]].clone()
    if case["model"] == "trained":
        case["state"] = _trained_state()
    return case


def _model_of(case: dict) -> nn.Module:
    return _build(case["model"], case.get("seed", 0), case.get("state"))


def _in_threat_model(x_adv, x, eps: float, what: str) -> Result | None:
    """None when ``x_adv`` is a tensor of x's shape inside the ε-ball and [0, 1]; else why not."""
    if not isinstance(x_adv, torch.Tensor) or tuple(x_adv.shape) != tuple(x.shape):
        shape = tuple(x_adv.shape) if isinstance(x_adv, torch.Tensor) else type(x_adv).__name__
        return Result.fail(f"{what} should be a tensor of shape {tuple(x.shape)}, got {shape}")
    if not x_adv.dtype.is_floating_point or not torch.isfinite(x_adv).all():
        return Result.fail(f"{what} should be finite floats")
    dist = (x_adv.double() - x.double()).abs().max().item()
    if dist > eps + 1e-5:
        return Result.fail(f"{what} is {dist:.4g} away from x in the L-infinity norm, more than "
                           f"eps = {eps:g}: project back onto the ε-ball")
    if x_adv.min() < -1e-6 or x_adv.max() > 1 + 1e-6:
        return Result.fail(f"{what} has values in [{x_adv.min().item():.3g}, {x_adv.max().item():.3g}]: "
                           "clamp to the image box [0, 1]")
    return None


def _same_images(got: torch.Tensor, expected: torch.Tensor, what: str) -> Result:
    """Equal up to rounding; a handful of pixels whose gradient is ~0 may flip sign."""
    differ = ((got.double() - expected.double()).abs() > 1e-4).float().mean().item()
    if differ <= 1e-3:
        return Result.ok()
    return Result.fail(f"{what} differs from the reference in {differ:.1%} of the pixels")


def _unchanged(got: dict, case: dict) -> Result | None:
    """None when the attack left the model's weights, buffers, .grad and mode as they were."""
    if got.get("training") is not True:
        return Result.fail("the model was handed over in train mode and came back in eval mode: "
                           "restore the mode you found it in")
    ref = _model_of(case).state_dict()
    for k, v in got["state"].items():
        if not torch.equal(v, ref[k]):
            return Result.fail(f"the attack changed the model's {k!r} (run it in eval mode so that "
                               "batch norm does not update its running statistics)")
    if got.get("grads_touched"):
        return Result.fail("the attack left gradients on the model's parameters: differentiate "
                           "with respect to the input only (torch.autograd.grad(loss, x_adv))")
    return None


def _attack_run(fn_name: str, ns: dict, case: dict, **kwargs) -> dict:
    model = _model_of(case).train()
    x_adv = ns[fn_name](model, case["x"].clone(), case["y"].clone(), **kwargs)
    return {"x_adv": x_adv, "training": model.training,
            "state": {k: v.clone() for k, v in model.state_dict().items()},
            "grads_touched": any(p.grad is not None for p in model.parameters())}


# ---------------------------------------------------------------------------------------------
# q1: FGSM
# ---------------------------------------------------------------------------------------------

def run_q1(ns, case):
    return _attack_run("fgsm", ns, case, eps=case["eps"])


def grade_q1(case, got):
    from fmlab.adversarial import fgsm
    bad = _in_threat_model(got["x_adv"], case["x"], case["eps"], "fgsm's output") or _unchanged(got, case)
    if bad:
        return bad
    expected = fgsm(_model_of(case).train(), case["x"], case["y"], case["eps"])
    return _same_images(got["x_adv"], expected, "fgsm's output")


# ---------------------------------------------------------------------------------------------
# q2: PGD with random start. Without a random start the output is deterministic and compared
# exactly; with one, the grader checks the threat model, the spread of the start and the
# strength of the attack (loss and accuracy of its outputs) against its own PGD.
# ---------------------------------------------------------------------------------------------

def run_q2(ns, case):
    torch.manual_seed(case.get("torch_seed", 0))
    kw = dict(eps=case["eps"], alpha=case["alpha"], steps=case["steps"], random_start=case["random_start"])
    out = _attack_run("pgd", ns, case, **kw)
    if case["random_start"]:  # a second call must start elsewhere
        out["again"] = _attack_run("pgd", ns, case, **kw)["x_adv"]
    return out


def _strength(model, x_adv, y) -> tuple[float, float]:
    with torch.no_grad():
        logits = model.eval()(x_adv)
        return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def grade_q2(case, got):
    from fmlab.adversarial import pgd
    eps, x, y = case["eps"], case["x"], case["y"]
    bad = _in_threat_model(got["x_adv"], x, eps, "pgd's output") or _unchanged(got, case)
    if bad:
        return bad
    model = _model_of(case).train()
    if not case["random_start"]:
        expected = pgd(model, x, y, eps, case["alpha"], case["steps"], random_start=False)
        return _same_images(got["x_adv"], expected, "pgd's output (random_start=False)")
    again = got.get("again")
    bad = _in_threat_model(again, x, eps, "pgd's output of a second call")
    if bad:
        return bad
    if torch.equal(again, got["x_adv"]):
        return Result.fail("two calls with random_start=True gave identical images: start from "
                           "x plus uniform noise in [-eps, eps]")
    if case["steps"] == 0:  # the start itself: uniform noise, so mean |delta| ~ eps/2 inside
        inside = (x > eps) & (x < 1 - eps)
        mean_abs = (got["x_adv"] - x)[inside].abs().mean().item()
        if not 0.4 * eps <= mean_abs <= 0.6 * eps:
            return Result.fail(f"with steps=0 the output is the random start; its mean |delta| is "
                               f"{mean_abs:.3g}, expected about eps/2 = {eps / 2:.3g} (uniform in [-eps, eps])")
        return Result.ok()
    # strength: at least as strong as the grader's PGD with half the steps, and close to its own
    loss, acc = _strength(model, got["x_adv"], y)
    weak = pgd(model, x, y, eps, case["alpha"], max(case["steps"] // 2, 1),
               generator=torch.Generator().manual_seed(1))
    ref = pgd(model, x, y, eps, case["alpha"], case["steps"], generator=torch.Generator().manual_seed(2))
    (weak_loss, _), (_, ref_acc) = _strength(model, weak, y), _strength(model, ref, y)
    if loss < weak_loss - 0.02 * abs(weak_loss):
        return Result.fail(f"the attack is too weak: mean loss {loss:.3g} at its outputs, but the "
                           f"grader's PGD with half the steps reaches {weak_loss:.3g} (is the "
                           "gradient's sign right? do you step up the loss?)")
    if acc > ref_acc + 0.05:
        return Result.fail(f"accuracy under your attack is {acc:.1%}, under the grader's PGD "
                           f"{ref_acc:.1%}: your attack is weaker than it should be")
    return Result.ok(f"accuracy under attack {acc:.1%} (grader's PGD: {ref_acc:.1%})")


# ---------------------------------------------------------------------------------------------
# q3: one adversarial-training step. The student's step runs with the reference pgd in its
# namespace, so a mistake in q2 does not count twice; random_start=False makes it deterministic.
# ---------------------------------------------------------------------------------------------

def _optimizer(model: nn.Module, spec: dict) -> torch.optim.Optimizer:
    spec = dict(spec)
    name = spec.pop("name")
    return {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[name](model.parameters(), **spec)


def run_q3(ns, case):
    from fmlab.adversarial import pgd as reference_pgd
    model = _model_of(case).train(case.get("mode", "train") == "train")
    opt = _optimizer(model, case["optimizer"])
    saved = ns.get("pgd")
    ns["pgd"] = reference_pgd
    states, losses = [], []
    try:
        for i in range(case["calls"]):
            xb, yb = case["x"][i::case["calls"]].clone(), case["y"][i::case["calls"]].clone()
            losses.append(float(ns["adversarial_training_step"](
                model, opt, xb, yb, case["eps"], case["alpha"], case["steps"], random_start=False)))
            states.append({k: v.clone() for k, v in model.state_dict().items()})  # a snapshot
    finally:
        if saved is None:
            ns.pop("pgd", None)
        else:
            ns["pgd"] = saved
    return {"losses": losses, "states": states}


def grade_q3(case, got):
    from fmlab.adversarial import adversarial_training_step
    model = _model_of(case).train(case.get("mode", "train") == "train")
    opt = _optimizer(model, case["optimizer"])
    ref = _build(case["model"], case.get("seed", 0), case.get("state"))
    if not isinstance(got.get("states"), list) or len(got["states"]) != case["calls"]:
        return Result.fail("the step did not run the expected number of times")
    for i in range(case["calls"]):
        xb, yb = case["x"][i::case["calls"]], case["y"][i::case["calls"]]
        loss = adversarial_training_step(model, opt, xb, yb, case["eps"], case["alpha"], case["steps"],
                                         random_start=False)
        fits = expect_state_dict(got["states"][i], ref, what=f"the weights after call {i + 1}")
        if not fits.passed:
            return fits
        for k, v in model.state_dict().items():
            if not torch.allclose(ref.state_dict()[k].double(), v.double(), atol=1e-5, rtol=1e-4):
                hint = (" (gradients from the previous call were not zeroed?)" if i > 0 else
                        " (loss at the adversarial inputs, model in train mode for the update?)")
                return Result.fail(f"after call {i + 1}, {k!r} differs from the reference step{hint}")
        if abs(got["losses"][i] - loss) > 1e-4 * max(1.0, abs(loss)):
            return Result.fail(f"call {i + 1} returned loss {got['losses'][i]:.6g}; the adversarial "
                               f"loss of the batch before the update is {loss:.6g}")
    return Result.ok()


# ---------------------------------------------------------------------------------------------
# q4: a robust SeedCNN, trained by the student, attacked by the grader on held-out images
# ---------------------------------------------------------------------------------------------

def run_q4(ns, case):
    return train_in_child(ns, case, "train_robust_model")


def grade_q4(case, got):
    from fmlab.adversarial import pgd, robust_accuracy
    from fmlab.data import load
    from fmlab.models import SeedCNN

    model, fits = load_into_reference(got, SeedCNN, 1, 10, 28)
    if model is None:
        return fits
    test = load("mnist", "test", source="embedded")  # 1,000 images the child never saw
    eps, steps = case.get("eps", Q4_EPS), case.get("steps", 10)
    clean = robust_accuracy(model, test)

    def worst(m, x, y):  # per example, the worse of a cross-entropy and a margin attack
        torch.manual_seed(0)
        a = pgd(m, x, y, eps, steps=steps, restarts=case.get("restarts", 1))
        b = pgd(m, x, y, eps, steps=steps, loss="margin")
        with torch.no_grad():
            keep_a = (m(a).argmax(1) != y).view(-1, 1, 1, 1)
        return torch.where(keep_a, a, b)

    robust = robust_accuracy(model, test, worst)
    score, verdict = score_between(robust, case, "robust")
    if clean < case["min_clean"]:
        score, verdict = min(score, 0.5), "at most half marks while clean accuracy is too low"
    return Result(score, f"held-out clean accuracy {clean:.1%}, under PGD-{steps} at eps = {eps:g} "
                         f"{robust:.1%} on {len(test):,} images ({verdict}; clean must be at least "
                         f"{case['min_clean']:.0%})", scale=True)


QUESTIONS = [
    Question(
        id="q1", points=2, title="FGSM", requires=("fgsm",),
        run=run_q1, grade=grade_q1, prepare=_prepare_inputs, timeout=20, forbid=ATTACKS + PGD,
        cases=lambda: [
            {"name": "an MLP, eps = 0.1", "model": "mlp", "n": 16, "eps": 0.1},
            {"name": "batch norm + dropout, eps = 0.2 (handed over in train mode)", "model": "bn",
             "n": 16, "eps": 0.2, "seed": 1},
        ]),
    Question(
        id="q2", points=3, title="PGD with random start", requires=("pgd",),
        run=run_q2, grade=grade_q2, prepare=_prepare_inputs, timeout=30, forbid=ATTACKS + PGD,
        cases=lambda: [
            {"name": "no random start (exact)", "model": "bn", "n": 16, "eps": 0.15, "alpha": 0.05,
             "steps": 5, "random_start": False},
            {"name": "the random start itself (steps=0)", "model": "mlp", "n": 32, "eps": 0.3,
             "alpha": 0.1, "steps": 0, "random_start": True},
            {"name": "a trained CNN, 10 steps from a random start", "model": "trained", "n": 200,
             "eps": 0.1, "alpha": 0.025, "steps": 10, "random_start": True},
        ]),
    Question(
        id="q3", points=3, title="An adversarial-training step", requires=("adversarial_training_step",),
        run=run_q3, grade=grade_q3, prepare=_prepare_inputs, timeout=30, forbid=ATTACKS,
        cases=lambda: [
            {"name": "SGD, two calls", "model": "mlp", "n": 32, "calls": 2, "eps": 0.2, "alpha": 0.05,
             "steps": 3, "optimizer": {"name": "sgd", "lr": 0.1}},
            {"name": "batch norm, model handed over in eval mode", "model": "bn_nodrop", "n": 32,
             "calls": 2, "eps": 0.1, "alpha": 0.04, "steps": 3, "mode": "eval",
             "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
        ]),
    Question(
        id="q4", points=4, title="Train a robust CNN", requires=("train_robust_model",),
        run=run_q4, grade=grade_q4, prepare=training_images("mnist", source="embedded"), timeout=150,
        forbid=ATTACKS + PGD,
        cases=lambda: [
            {"name": "4,000 training images, eps = 0.1", "n_train": 4000, "full_at": 0.75,
             "zero_at": 0.55, "min_clean": 0.90},
        ]),
]
