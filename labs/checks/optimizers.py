"""Public tests of the optimizers lab (labs/03_optimizers.ipynb).

q1-q3: the student's optimizer class trains a small tanh network described by the case (seed,
steps, options, parameter groups, frozen parameters, a state_dict reload); the parent replays
the same training with the torch.optim optimizer of the same name and compares the final
parameters. q4: the student's warm-up + cosine schedule against torch.optim.lr_scheduler.
While the student's code runs, torch's and fmlab's optimizers of the same job (their classes and
functional forms) and schedules are switched off (``forbid``, fmlab/grading/forbid.py).
"""
from __future__ import annotations

import copy

import torch

from fmlab.grading import Question, Result, expect_close

# The master notebooks beside this folder: out of a graded answer's reach.
PRIVATE = ("../*.ipynb",)

ATOL = 1e-6


# ---------------------------------------------------------------------------------------------
# q1-q3: a training run that both sides can replay from the case alone
# ---------------------------------------------------------------------------------------------

def _train(make_opt, case: dict) -> list[torch.Tensor]:
    """Train the case's network with ``make_opt(params_or_groups, **options)``; final parameters.

    Case keys: seed, steps, options (the optimizer's keyword arguments); optional: dtype,
    grad_scale (multiplies the loss, so small values make eps matter), groups (overrides for
    the second of two parameter groups, or None for a single list), frozen (the last
    parameter never gets a gradient), skip_every (parameter ``b`` gets no gradient every k-th
    step), reload_at (continue from ``state_dict()`` in a fresh optimizer at that step).
    """
    dtype = getattr(torch, case.get("dtype", "float64"))
    gen = torch.Generator().manual_seed(case["seed"])
    W = torch.nn.Parameter(torch.randn(4, 3, generator=gen, dtype=dtype))
    b = torch.nn.Parameter(torch.randn(3, generator=gen, dtype=dtype))
    c = torch.nn.Parameter(torch.randn(2, generator=gen, dtype=dtype))
    x = torch.randn(128, 4, generator=gen, dtype=dtype)
    y = torch.randn(128, 3, generator=gen, dtype=dtype)
    scale, frozen, skip = case.get("grad_scale", 1.0), case.get("frozen", False), case.get("skip_every")

    def params():
        if case.get("groups") is None:
            return [W, b, c]
        return [{"params": [W]}, {"params": [b, c], **case["groups"]}]

    opt = make_opt(params(), **case["options"])
    for t in range(case["steps"]):
        if t == case.get("reload_at"):
            saved = copy.deepcopy(opt.state_dict())
            opt = make_opt(params(), **case["options"])
            opt.load_state_dict(saved)
        idx = torch.randint(0, 128, (32,), generator=gen)
        loss = ((torch.tanh(x[idx] @ W + b) - y[idx]) ** 2).mean()
        if not frozen:
            loss = loss + 0.5 * (c**2).sum() + (c[0] * b[0]) ** 2
        opt.zero_grad()
        (scale * loss).backward()
        if skip and t % skip == 1:
            b.grad = None
        opt.step()
    return [p.detach().clone() for p in (W, b, c)]


ADAM = ("torch.optim.Adam", "torch.optim.AdamW", "torch.optim.adam.adam",
        "torch.optim.adam._single_tensor_adam", "torch.optim.adam._multi_tensor_adam",
        "torch.optim.adam._fused_adam", "torch.optim.adamw.adamw", "torch._fused_adam_",
        "torch._fused_adamw_", "fmlab.optim.Adam", "fmlab.optim.AdamW",
        "fmlab.optim._single_tensor_adam")
RMSPROP = ("torch.optim.RMSprop", "torch.optim.rmsprop.rmsprop",
           "torch.optim.rmsprop._single_tensor_rmsprop", "torch.optim.rmsprop._multi_tensor_rmsprop",
           "fmlab.optim.RMSprop", "fmlab.optim._single_tensor_rmsprop")
SCHEDULES = ("torch.optim.lr_scheduler.CosineAnnealingLR", "torch.optim.lr_scheduler.LinearLR",
             "torch.optim.lr_scheduler.SequentialLR", "torch.optim.lr_scheduler.OneCycleLR",
             "torch.optim.lr_scheduler.CosineAnnealingWarmRestarts", "fmlab.optim.warmup_cosine",
             "fmlab.optim.cosine", "fmlab.optim.linear_warmup", "fmlab.optim.schedule_lambda")


def _optimizer_question(qid: str, name: str, title: str, cases: list[dict],
                        forbid: tuple[str, ...]) -> Question:
    def run(ns, case):
        return _train(ns[name], case)

    def grade(case, got):
        expected = _train(getattr(torch.optim, name), case)  # the reference: torch.optim itself
        if not isinstance(got, (list, tuple)) or len(got) != 3:
            return Result.fail(f"expected the three trained parameters, got {type(got).__name__}")
        for label, g, e in zip(("W", "b", "c"), got, expected):
            r = expect_close(g, e, atol=ATOL, rtol=1e-6,
                             what=f"parameter {label} after {case['steps']} steps")
            if not r.passed:
                return r
        return Result.ok()

    return Question(id=qid, points=1, title=title, requires=(name,), run=run, grade=grade,
                    cases=lambda: copy.deepcopy(cases), forbid=forbid)


ADAM_CASES = [
    {"name": "one step", "seed": 0, "steps": 1, "options": {"lr": 0.01}},
    {"name": "100 steps, default options", "seed": 1, "steps": 100, "options": {"lr": 0.01}},
    {"name": "small gradients, eps=1e-3, betas=(0.8, 0.99)", "seed": 2, "steps": 100,
     "grad_scale": 1e-3, "options": {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-3}},
    {"name": "weight_decay=0.1 (L2 added to the gradient)", "seed": 3, "steps": 100,
     "options": {"lr": 0.01, "weight_decay": 0.1}},
]

ADAMW_CASES = [
    {"name": "100 steps, weight_decay=0.1", "seed": 4, "steps": 100,
     "options": {"lr": 0.01, "weight_decay": 0.1}},
    {"name": "default weight_decay (1e-2), large lr", "seed": 5, "steps": 60, "options": {"lr": 0.1}},
    {"name": "small gradients, eps=1e-3, weight_decay=0.5", "seed": 6, "steps": 100, "grad_scale": 1e-3,
     "options": {"lr": 0.01, "betas": (0.5, 0.9), "eps": 1e-3, "weight_decay": 0.5}},
]

RMSPROP_CASES = [
    {"name": "one step", "seed": 7, "steps": 1, "options": {"lr": 0.01}},
    {"name": "100 steps, alpha=0.9", "seed": 8, "steps": 100, "options": {"lr": 0.01, "alpha": 0.9}},
    {"name": "small gradients, eps=1e-3", "seed": 9, "steps": 100, "grad_scale": 1e-3,
     "options": {"lr": 0.001, "eps": 1e-3}},
    {"name": "weight_decay=0.05", "seed": 10, "steps": 100, "options": {"lr": 0.01, "weight_decay": 0.05}},
]


# ---------------------------------------------------------------------------------------------
# q4: warm-up + cosine schedule
# ---------------------------------------------------------------------------------------------

def _torch_schedule(total: int, warmup: int, base_lr: float, min_lr: float) -> torch.Tensor:
    """Learning rates for t = 0..total from torch.optim.lr_scheduler (the reference)."""
    S = torch.optim.lr_scheduler
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    cos = S.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=min_lr)
    sched = cos if warmup == 0 else S.SequentialLR(
        opt, [S.LinearLR(opt, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1), cos],
        milestones=[warmup])
    lrs = []
    for _ in range(total + 1):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return torch.tensor(lrs, dtype=torch.float64)


def _run_schedule(ns, case):
    f = ns["warmup_cosine"]
    args = (case["total_steps"], case["warmup_steps"], case["base_lr"], case["min_lr"])
    return torch.tensor([float(f(t, *args)) for t in range(case["total_steps"] + 1)], dtype=torch.float64)


def _grade_schedule(case, got):
    expected = _torch_schedule(case["total_steps"], case["warmup_steps"], case["base_lr"], case["min_lr"])
    return expect_close(got, expected, atol=1e-9, rtol=1e-7,
                        what="the learning rates for steps 0..total_steps")


SCHEDULE_CASES = [
    {"name": "100 steps, 10 of warm-up", "total_steps": 100, "warmup_steps": 10, "base_lr": 0.1, "min_lr": 0.0},
    {"name": "min_lr=1e-3", "total_steps": 50, "warmup_steps": 5, "base_lr": 0.01, "min_lr": 1e-3},
]


QUESTIONS = [
    _optimizer_question("q1", "Adam", "Adam with bias correction", ADAM_CASES, ADAM),
    _optimizer_question("q2", "AdamW", "AdamW: decoupled weight decay", ADAMW_CASES, ADAM),
    _optimizer_question("q3", "RMSprop", "RMSProp", RMSPROP_CASES, RMSPROP),
    Question(id="q4", points=1, title="Warm-up + cosine learning-rate schedule",
             requires=("warmup_cosine",), run=_run_schedule, grade=_grade_schedule,
             cases=lambda: copy.deepcopy(SCHEDULE_CASES), forbid=SCHEDULES),
]
