"""Public checks of the losses lab (labs/02_losses.ipynb).

``run`` calls the student's function in the child process; ``grade`` computes the reference
with PyTorch (``F.softmax``, ``F.cross_entropy``, autograd) in the parent. Each question's
``forbid`` lists what the exercise asks students to write themselves (torch's functions of the
same job, their module and functional forms, autograd where the gradient is the exercise, and
all of ``fmlab.losses``): switched off while the student's function runs (fmlab/grading/forbid.py),
so that ``return torch.softmax(z, dim)`` does not pass as an answer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fmlab.grading import Question, expect_close

# The master notebooks beside this folder: out of a graded answer's reach.
PRIVATE = ("../*.ipynb",)

# ---------------------------------------------------------------------------------------------
# Helpers shared by run (child) and grade (parent)
# ---------------------------------------------------------------------------------------------

FMLAB = ("fmlab.losses.*",)
SOFTMAX = ("torch.softmax", "torch.nn.functional.softmax", "torch.Tensor.softmax",
           "torch.special.softmax", "torch.nn.Softmax", "torch._softmax",
           "torch.ops.aten.softmax", "torch.ops.aten._softmax")
LOG_SOFTMAX = ("torch.log_softmax", "torch.nn.functional.log_softmax", "torch.Tensor.log_softmax",
               "torch.special.log_softmax", "torch.nn.LogSoftmax", "torch._log_softmax",
               "torch.ops.aten.log_softmax", "torch.ops.aten._log_softmax")
CROSS_ENTROPY = ("torch.nn.functional.cross_entropy", "torch.nn.functional.nll_loss",
                 "torch.nn.CrossEntropyLoss", "torch.nn.NLLLoss", "torch._C._nn.cross_entropy_loss",
                 "torch._C._nn.nll_loss", "torch._C._nn.nll_loss_nd",
                 "torch.ops.aten.cross_entropy_loss", "torch.ops.aten.nll_loss",
                 "torch.ops.aten.nll_loss_nd", "torch.ops.aten.nll_loss_forward")
AUTOGRAD = ("torch.autograd.grad", "torch.autograd.backward", "torch.Tensor.backward",
            "torch.autograd.functional.jacobian", "torch.autograd.functional.vjp",
            "torch.func.grad", "torch.func.vjp", "torch.func.jacrev", "torch.func.jacfwd")
BCE = ("torch.nn.functional.binary_cross_entropy_with_logits", "torch.binary_cross_entropy_with_logits",
       "torch.nn.functional.binary_cross_entropy", "torch._C._nn.binary_cross_entropy",
       "torch.nn.BCEWithLogitsLoss", "torch.nn.BCELoss", "torch.nn.functional.softplus",
       "torch.nn.Softplus", "torch.nn.functional.logsigmoid", "torch.nn.LogSigmoid",
       "torch.ops.aten.binary_cross_entropy_with_logits", "torch.ops.aten.binary_cross_entropy",
       "torch.ops.aten.softplus", "torch.ops.aten.log_sigmoid_forward")


def _tol(dtype: torch.dtype) -> dict:
    """Tolerances for a result in ``dtype``, which the lab states (the input's dtype kept)."""
    tol = dict(atol=1e-12, rtol=1e-9) if dtype == torch.float64 else dict(atol=1e-6, rtol=1e-5)
    return dict(tol, check_dtype=True)


def _randn(*shape, scale=1.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _labels(n, c, seed=1):
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# q1: a numerically stable softmax
# ---------------------------------------------------------------------------------------------

def run_q1(ns, case):
    return ns["softmax"](case["z"].clone(), dim=case["dim"])


def grade_q1(case, got):
    return expect_close(got, F.softmax(case["z"], dim=case["dim"]), **_tol(case["z"].dtype),
                        what=f"softmax(z, dim={case['dim']})")


def cases_q1():
    return [
        {"name": "a (2, 5) batch, dim=-1", "z": _randn(2, 5), "dim": -1},
        {"name": "a (4, 3) batch, dim=0", "z": _randn(4, 3, seed=2), "dim": 0},
        {"name": "large logits (|z| ~ 300)", "z": _randn(3, 4, scale=300.0, seed=3), "dim": -1},
    ]


# ---------------------------------------------------------------------------------------------
# q2: cross-entropy from logits (mean over the batch), integer or probability targets
# ---------------------------------------------------------------------------------------------

def run_q2(ns, case):
    return ns["cross_entropy"](case["logits"].clone(), case["targets"].clone())


def grade_q2(case, got):
    expected = F.cross_entropy(case["logits"], case["targets"])
    return expect_close(got, expected, **_tol(case["logits"].dtype), what="cross_entropy(logits, targets)")


def _one_hot(t, c, dtype=torch.float32):
    return F.one_hot(t, c).to(dtype)


def cases_q2():
    soft = torch.softmax(_randn(4, 3, seed=5), 1)
    return [
        {"name": "integer targets", "logits": _randn(5, 4), "targets": _labels(5, 4)},
        {"name": "one-hot targets", "logits": _randn(5, 4, seed=2), "targets": _one_hot(_labels(5, 4, 3), 4)},
        {"name": "probability targets", "logits": _randn(4, 3, seed=4), "targets": soft},
        {"name": "large logits (|z| ~ 100)", "logits": _randn(6, 5, scale=100.0, seed=6),
         "targets": _labels(6, 5, 7)},
    ]


# ---------------------------------------------------------------------------------------------
# q3: the gradient of the mean cross-entropy with respect to the logits, without autograd
# ---------------------------------------------------------------------------------------------

def run_q3(ns, case):
    # Inputs do not require grad and autograd records nothing: the formula must do the work.
    with torch.no_grad():
        return ns["cross_entropy_grad"](case["logits"].clone(), case["targets"].clone())


def grade_q3(case, got):
    z = case["logits"].clone().requires_grad_()
    F.cross_entropy(z, case["targets"]).backward()
    return expect_close(got, z.grad, **_tol(z.dtype), what="the gradient with respect to the logits")


def cases_q3():
    return [
        {"name": "integer targets", "logits": _randn(5, 4, seed=8), "targets": _labels(5, 4, 9)},
        {"name": "one-hot targets", "logits": _randn(3, 6, seed=10), "targets": _one_hot(_labels(3, 6, 11), 6)},
        {"name": "probability targets", "logits": _randn(4, 3, seed=12),
         "targets": torch.softmax(_randn(4, 3, seed=13), 1)},
    ]


# ---------------------------------------------------------------------------------------------
# q4: a stable binary cross-entropy on logits (mean)
# ---------------------------------------------------------------------------------------------

def run_q4(ns, case):
    return ns["binary_cross_entropy_with_logits"](case["z"].clone(), case["y"].clone())


def grade_q4(case, got):
    expected = F.binary_cross_entropy_with_logits(case["z"], case["y"])
    return expect_close(got, expected, **_tol(case["z"].dtype), what="binary_cross_entropy_with_logits(z, y)")


def _bits(n, seed):
    return torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(seed)).float()


def cases_q4():
    return [
        {"name": "8 logits, 0/1 targets", "z": _randn(8, seed=14), "y": _bits(8, 15)},
        {"name": "soft targets, shape (3, 2)", "z": _randn(3, 2, seed=16),
         "y": torch.rand(3, 2, generator=torch.Generator().manual_seed(17))},
        {"name": "logits of +-100", "z": torch.tensor([100.0, -100.0, 100.0, -100.0]),
         "y": torch.tensor([0.0, 1.0, 1.0, 0.0])},
    ]


# ---------------------------------------------------------------------------------------------
# q5: central-difference numerical gradient
# ---------------------------------------------------------------------------------------------

def make_function(case):
    """The scalar function a q5 case names (built on both sides, never sent as code)."""
    name = case["f"]
    if name == "cubic":
        return lambda x: (x ** 3).sum()
    if name == "softplus":
        return lambda x: torch.log1p(torch.exp(x)).sum()
    if name == "x_sin_x":
        return lambda x: (x * torch.sin(3 * x)).sum()
    if name == "logsumexp":
        return lambda x: torch.logsumexp(x.reshape(-1), 0)
    if name == "cross_entropy":
        targets = case["targets"]
        return lambda x: F.cross_entropy(x, targets)
    raise KeyError(f"unknown function {name!r}")


def run_q5(ns, case):
    kwargs = {"eps": case["eps"]} if "eps" in case else {}
    return ns["numerical_gradient"](make_function(case), case["x"].clone(), **kwargs)


def grade_q5(case, got):
    x = case["x"].detach().double().requires_grad_()
    make_function(case)(x).backward()
    # Between the error of central differences (~eps^2, plus rounding) and that of forward
    # differences (~eps), so a forward-difference answer fails.
    return expect_close(got, x.grad, atol=case["tol"], rtol=case["tol"], check_dtype=True,
                        what=f"the numerical gradient of {case['f']}")


def cases_q5():
    x64 = torch.float64
    return [
        {"name": "cubic, default eps", "f": "cubic", "x": _randn(2, 3, seed=18, dtype=x64), "tol": 1e-7},
        {"name": "softplus, eps=1e-3", "f": "softplus", "x": _randn(5, seed=19, dtype=x64), "eps": 1e-3,
         "tol": 1e-6},
        {"name": "cross-entropy of (3, 4) logits", "f": "cross_entropy", "x": _randn(3, 4, seed=20, dtype=x64),
         "targets": _labels(3, 4, 21), "tol": 1e-7},
    ]


QUESTIONS = [
    Question("q1", 2, "a numerically stable softmax", ("softmax",), run_q1, grade_q1, cases_q1,
             forbid=SOFTMAX + LOG_SOFTMAX + FMLAB),
    Question("q2", 2, "cross-entropy from logits", ("cross_entropy",), run_q2, grade_q2, cases_q2,
             forbid=CROSS_ENTROPY + LOG_SOFTMAX + FMLAB),
    Question("q3", 2, "the cross-entropy gradient without autograd", ("cross_entropy_grad",),
             run_q3, grade_q3, cases_q3, forbid=CROSS_ENTROPY + AUTOGRAD + FMLAB),
    Question("q4", 2, "a stable binary cross-entropy on logits", ("binary_cross_entropy_with_logits",),
             run_q4, grade_q4, cases_q4, forbid=BCE + FMLAB),
    Question("q5", 2, "a central-difference numerical gradient", ("numerical_gradient",),
             run_q5, grade_q5, cases_q5, forbid=AUTOGRAD + FMLAB),
]
