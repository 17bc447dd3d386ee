"""fmlab.optim against torch.optim: same trajectory, every option, groups, frozen params, state_dict.

Each run trains a small tanh network on random minibatches for STEPS steps, with two parameter
groups (the second with its own lr and weight decay), one parameter that never gets a gradient
and one that gets a gradient only on some steps. The reference is the torch.optim optimizer of
the same name on the same data and initial values.
"""
import copy
import math

import pytest
import torch

from fmlab import optim

STEPS = 120


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: extra threads only add overhead (and thrash on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
TOL = {torch.float64: 1e-10, torch.float32: 1e-6}

CONFIGS = [
    # (name, options); torch.optim.<name> and fmlab.optim.<name> take the same options.
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.05)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.02, initial_accumulator_value=0.5, eps=1e-3)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, eps=1e-3, weight_decay=0.05)),
    ("RMSprop", dict(lr=0.005, momentum=0.9, centered=True)),
    ("RMSprop", dict(lr=0.005, alpha=0.95, momentum=0.5, centered=True, weight_decay=0.01, eps=1e-4)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-3, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, betas=(0.5, 0.9), eps=1e-4, weight_decay=0.3)),
]
IDS = [f"{name}-" + "-".join(f"{k}={v}" for k, v in opts.items()) for name, opts in CONFIGS]


def make_params(seed, dtype):
    g = torch.Generator().manual_seed(seed)
    shapes = {"W1": (5, 6), "b1": (6,), "w2": (6,), "frozen": (3,)}
    return {k: torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for k, s in shapes.items()}


def train(make_opt, options, seed=0, dtype=torch.float64, steps=STEPS, reload_at=None):
    """Final parameters (and the optimizer) after ``steps`` steps; reload a fresh optimizer from
    ``state_dict()`` at step ``reload_at``."""
    ps = make_params(seed, dtype)
    data = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(256, 5, generator=data, dtype=dtype)
    y = torch.sin(x @ torch.randn(5, generator=data, dtype=dtype))

    def groups():  # second group: its own lr and weight decay; "frozen" is never in the graph
        second = {"params": [ps["w2"], ps["frozen"]], "lr": options["lr"] / 2}
        if "weight_decay" in options:
            second["weight_decay"] = options["weight_decay"] * 2
        return [{"params": [ps["W1"], ps["b1"]]}, second]

    opt = make_opt(groups(), **options)
    for t in range(steps):
        if t == reload_at:
            saved = copy.deepcopy(opt.state_dict())
            opt = make_opt(groups(), **options)
            opt.load_state_dict(saved)
        idx = torch.randint(0, 256, (32,), generator=data)
        loss = ((torch.tanh(x[idx] @ ps["W1"] + ps["b1"]) @ ps["w2"] - y[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        if t % 3 == 1:
            ps["b1"].grad = None  # a parameter that misses some steps: its step count lags
        opt.step()
    return {k: p.detach().clone() for k, p in ps.items()}, opt


def assert_same(ours, ref, tol):
    for k in ref:
        err = (ours[k] - ref[k]).abs().max().item()
        assert err <= tol, f"{k}: max abs difference {err:.3g} > {tol:g}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,options", CONFIGS, ids=IDS)
def test_matches_torch(name, options, dtype):
    ours, opt = train(getattr(optim, name), options, dtype=dtype)
    ref, _ = train(getattr(torch.optim, name), options, dtype=dtype)
    assert_same(ours, ref, TOL[dtype])
    moved = (ours["W1"] - make_params(0, dtype)["W1"]).abs().max().item()
    assert moved > 1e-2, "the parameters barely moved: the comparison would prove nothing"


@pytest.mark.parametrize("name,options", CONFIGS, ids=IDS)
def test_frozen_param_untouched(name, options):
    ours, opt = train(getattr(optim, name), options, steps=10)
    assert torch.equal(ours["frozen"], make_params(0, torch.float64)["frozen"])
    frozen = opt.param_groups[1]["params"][1]
    assert len(opt.state[frozen]) == 0, "a parameter without gradient must get no state"


@pytest.mark.parametrize("name,options", CONFIGS, ids=IDS)
def test_state_dict_round_trip(name, options):
    ours, _ = train(getattr(optim, name), options, reload_at=STEPS // 2)
    ref, _ = train(getattr(torch.optim, name), options)
    assert_same(ours, ref, TOL[torch.float64])


def test_reload_really_restores_state():
    """A fresh optimizer that does NOT load the state diverges: the round-trip test can fail."""
    def fresh_at_half(groups, **kw):
        opt = optim.Adam(groups, **kw)
        opt.load_state_dict = lambda sd: None  # drop the saved moments and step counts
        return opt
    broken, _ = train(fresh_at_half, dict(lr=0.01), reload_at=STEPS // 2)
    ref, _ = train(torch.optim.Adam, dict(lr=0.01))
    assert (broken["W1"] - ref["W1"]).abs().max() > 1e-4


@pytest.mark.parametrize("name,options", [c for c in CONFIGS if c[0] in ("Adam", "RMSprop", "SGD")][:6])
def test_torch_state_dict_loads_into_ours(name, options):
    """Same state names as torch: a torch.optim checkpoint continues in fmlab.optim."""
    def torch_then_ours(groups, **kw):
        return getattr(torch.optim, name)(groups, **kw)

    class Switch:  # torch.optim for the first half, fmlab.optim (loading torch's state) after
        calls = 0

        def __new__(cls, groups, **kw):
            cls.calls += 1
            return (getattr(torch.optim, name) if cls.calls == 1 else getattr(optim, name))(groups, **kw)

    ours, _ = train(Switch, options, reload_at=STEPS // 2)
    ref, _ = train(torch_then_ours, options)
    assert_same(ours, ref, TOL[torch.float64])


def test_closure_returns_loss():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = optim.Adam([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == pytest.approx(5.0)
    assert p.abs().max() < 2.0


def test_effective_step_size_is_the_applied_step():
    """θ_before − θ_after equals effective_step_size · numerator (g, or m for Adam)."""
    g0 = torch.Generator().manual_seed(3)
    for make in (lambda ps: optim.Adagrad(ps, lr=0.3, lr_decay=0.1),
                 lambda ps: optim.RMSprop(ps, lr=0.01), lambda ps: optim.Adam(ps, lr=0.01),
                 lambda ps: torch.optim.Adam(ps, lr=0.01)):
        p = torch.nn.Parameter(torch.randn(7, generator=g0, dtype=torch.float64))
        opt = make([p])
        for _ in range(5):
            p.grad = torch.randn(7, generator=g0, dtype=torch.float64)
            before = p.detach().clone()
            opt.step()
        numerator = opt.state[p].get("exp_avg", p.grad)
        expected = optim.effective_step_size(opt, p) * numerator
        torch.testing.assert_close(before - p.detach(), expected, atol=1e-12, rtol=1e-9)
    with pytest.raises(TypeError):
        q = torch.nn.Parameter(torch.zeros(2))
        sgd = optim.SGD([q], lr=0.1, momentum=0.9)
        q.grad = torch.ones(2)
        sgd.step()
        optim.effective_step_size(sgd, q)


@pytest.mark.parametrize("make,bad", [
    (lambda p: optim.SGD(p, lr=-1.0), "lr"),
    (lambda p: optim.SGD(p, lr=0.1, nesterov=True), "Nesterov"),
    (lambda p: optim.Adam(p, betas=(0.9, 1.0)), "betas"),
    (lambda p: optim.RMSprop(p, alpha=1.5), "alpha"),
    (lambda p: optim.Adagrad(p, eps=-1e-3), "eps"),
])
def test_bad_arguments_explain(make, bad):
    with pytest.raises(ValueError, match=bad):
        make([torch.nn.Parameter(torch.zeros(2))])


def _torch_lrs(make_scheduler, steps, base_lr=1.0):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = make_scheduler(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_step_decay_and_cosine_match_torch_schedulers():
    S = torch.optim.lr_scheduler
    ref = _torch_lrs(lambda o: S.StepLR(o, step_size=7, gamma=0.5), 40, base_lr=0.3)
    assert ref == pytest.approx([optim.step_decay(t, 0.3, 7, 0.5) for t in range(40)], rel=1e-12)
    ref = _torch_lrs(lambda o: S.CosineAnnealingLR(o, T_max=50, eta_min=0.01), 51, base_lr=0.3)
    assert ref == pytest.approx([optim.cosine(t, 50, 0.3, 0.01) for t in range(51)], rel=1e-9)


@pytest.mark.parametrize("total,warmup", [(100, 10), (60, 0), (30, 1), (25, 24)])
def test_warmup_cosine_matches_torch_sequential(total, warmup):
    S = torch.optim.lr_scheduler

    def make(o):
        cos = S.CosineAnnealingLR(o, T_max=total - warmup, eta_min=0.002)
        if warmup == 0:
            return cos
        lin = S.LinearLR(o, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1)
        return S.SequentialLR(o, [lin, cos], milestones=[warmup])

    ref = _torch_lrs(make, total + 1, base_lr=0.1)
    ours = [optim.warmup_cosine(t, total, warmup, 0.1, 0.002) for t in range(total + 1)]
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert ours[-1] == pytest.approx(0.002) and max(ours) == pytest.approx(0.1)


def test_schedule_lambda_drives_lambda_lr():
    opt = optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, optim.schedule_lambda(optim.warmup_cosine, 0.2, total_steps=20, warmup_steps=5))
    seen = []
    for _ in range(21):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([optim.warmup_cosine(t, 20, 5, 0.2) for t in range(21)])
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.warmup_cosine(0, 10, 10, 0.1)


def test_sizes_table_has_both_profiles():
    assert set(optim.SIZES) == {"quick", "full", "smoke"}
    assert set(optim.SIZES["quick"]) == set(optim.SIZES["full"])
    assert set(optim.SIZES["smoke"]) <= set(optim.SIZES["quick"])
    assert math.isfinite(optim.SIZES["quick"]["drift_steps"])


@pytest.mark.parametrize("rule", ["sgd", "adagrad", "rmsprop", "adam"])
def test_rules_have_torchs_shape(rule):
    """Each rule takes its arguments under the names, and in the order, of torch.optim's
    _single_tensor_<rule>, so a reader can diff the two."""
    import importlib
    import inspect

    ours = inspect.signature(getattr(optim, f"_single_tensor_{rule}")).parameters
    theirs = inspect.signature(getattr(importlib.import_module(f"torch.optim.{rule}"),
                                       f"_single_tensor_{rule}")).parameters
    assert set(ours) <= set(theirs), set(ours) - set(theirs)
    positional = [n for n, p in ours.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == [n for n in theirs if n in positional]
    assert all(theirs[n].kind is theirs[n].KEYWORD_ONLY
               for n, p in ours.items() if p.kind is p.KEYWORD_ONLY)


@pytest.mark.parametrize("name,options", CONFIGS, ids=IDS)
def test_state_has_torchs_names_and_types(name, options):
    _, ours = train(getattr(optim, name), options, steps=3)
    _, ref = train(getattr(torch.optim, name), options, steps=3)
    for p_ours, p_ref in zip(ours.param_groups[0]["params"], ref.param_groups[0]["params"]):
        a, b = ours.state[p_ours], ref.state[p_ref]
        assert set(a) == set(b)
        assert all(type(a[k]) is type(b[k]) and a[k].dtype == b[k].dtype for k in a)


def test_a_step_count_saved_as_a_number_still_counts():
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = optim.Adam([p], lr=0.1)
    p.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    saved = opt.state_dict()
    saved["state"][0]["step"] = 1  # an int, as an older version stored it
    opt.load_state_dict(saved)
    opt.step()
    assert int(opt.state[p]["step"]) == 2


NAMES = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW"]


@pytest.mark.parametrize("name", NAMES)
def test_defaults_are_torchs(name):
    p = [torch.nn.Parameter(torch.zeros(2))]
    ours, ref = getattr(optim, name)(p).defaults, getattr(torch.optim, name)(p).defaults
    assert {k: ref[k] for k in ours} == ours


@pytest.mark.parametrize("name,options", [
    ("SGD", dict(lr=0.1, momentum=0.9)), ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.1)), ("RMSprop", dict(lr=0.1, momentum=0.5, centered=True)),
    ("RMSprop", dict(lr=0.1)), ("Adam", dict(lr=0.1)), ("AdamW", dict(lr=0.1, weight_decay=0.0))])
def test_a_zero_gradient_without_decay_moves_nothing(name, options):
    """No gradient signal and no weight decay: every step leaves the parameters where they are
    (and finite: eps keeps 0/0 out of the adaptive denominators)."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    opt = getattr(optim, name)([p], **options)
    for _ in range(3):
        p.grad = torch.zeros_like(p)
        opt.step()
    assert torch.equal(p.detach(), torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))


@pytest.mark.parametrize("make", [
    lambda p: optim.SGD(p, lr=0.0, momentum=0.0, weight_decay=0.0),
    lambda p: optim.RMSprop(p, alpha=0.0), lambda p: optim.RMSprop(p, alpha=1.0),
    lambda p: optim.Adam(p, betas=(0.0, 0.0), eps=0.0), lambda p: optim.Adagrad(p, lr_decay=0.0)])
def test_range_ends_are_accepted(make):
    make([torch.nn.Parameter(torch.zeros(2))])


@pytest.mark.parametrize("make,message", [
    (lambda p: optim.SGD(p, lr=-1.0), r"^lr=-1.0 is out of range: it must lie in \[0.0, inf\]$"),
    (lambda p: optim.Adam(p, betas=(0.9, 1.0)),
     r"^betas\[1\]=1.0 is out of range: it must lie in \[0.0, 1.0\)$"),
    (lambda p: optim.Adam(p, betas=(1.0, 0.9)), r"^betas\[0\]=1.0 is out of range"),
    (lambda p: optim.AdamW(p, eps=-1.0), r"^eps=-1.0 is out of range"),
    (lambda p: optim.RMSprop(p, momentum=-0.1), r"^momentum=-0.1 is out of range"),
    (lambda p: optim.Adagrad(p, initial_accumulator_value=-1.0), r"^initial_accumulator_value=-1.0"),
    (lambda p: optim.SGD(p, momentum=0.9, dampening=0.1, nesterov=True),
     r"^Nesterov momentum needs momentum > 0 and dampening = 0$"),
])
def test_out_of_range_says_the_range(make, message):
    with pytest.raises(ValueError, match=message):
        make([torch.nn.Parameter(torch.zeros(2))])


def test_effective_step_size_reads_the_parameters_own_group():
    a = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    b = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = optim.Adagrad([{"params": [a]}, {"params": [b], "lr": 0.5, "lr_decay": 1.0}], lr=0.1)
    with pytest.raises(ValueError, match="^this parameter has not been updated yet: take a step first$"):
        optim.effective_step_size(opt, b)
    for _ in range(2):
        a.grad, b.grad = torch.full_like(a, 2.0), torch.full_like(b, 2.0)
        opt.step()
    s = torch.full((2,), 8.0, dtype=torch.float64).sqrt() + 1e-10  # two squared gradients of 2
    torch.testing.assert_close(optim.effective_step_size(opt, a), 0.1 / s)
    torch.testing.assert_close(optim.effective_step_size(opt, b), 0.5 / (1 + 1.0) / s)
    opt = optim.RMSprop([b], lr=0.2, alpha=0.5, eps=0.0)
    b.grad = torch.full_like(b, 2.0)
    opt.step()
    torch.testing.assert_close(optim.effective_step_size(opt, b), torch.full_like(b, 0.2 / 2.0 ** 0.5))
    with pytest.raises(TypeError, match="^SGD keeps no second-moment state$"):
        sgd = optim.SGD([b], lr=0.1, momentum=0.5)
        sgd.step()
        optim.effective_step_size(sgd, b)


def test_schedules_at_their_boundaries():
    assert [optim.linear_warmup(t, 4, 1.0) for t in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert optim.cosine(0, 10, 1.0, 0.1) == 1.0 and optim.cosine(10, 10, 1.0, 0.1) == pytest.approx(0.1)
    assert optim.cosine(25, 10, 1.0, 0.1) == pytest.approx(0.1)  # past T: stays at the minimum
    assert optim.cosine(5, 10, 1.0) == pytest.approx(0.5) and optim.cosine(1, 1, 2.0) == 0.0
    assert [optim.step_decay(t, 1.0, 2) for t in range(5)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    assert optim.step_decay(3, 1.0, 1, gamma=0.5) == 0.125
    assert optim.warmup_cosine(0, 10, 0, 1.0) == 1.0 and optim.warmup_cosine(9, 10, 9, 1.0) == 1.0
    assert optim.schedule_lambda(optim.linear_warmup, 0.2, warmup_steps=4)(1) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="^step_size must be a positive number of steps, got 0$"):
        optim.step_decay(1, 1.0, 0)
    with pytest.raises(ValueError, match="^total_steps must be at least 1, got 0$"):
        optim.cosine(0, 0, 1.0)
    with pytest.raises(ValueError, match="^need 0 <= warmup_steps < total_steps, got -1 and 10$"):
        optim.warmup_cosine(0, 10, -1, 1.0)


def test_sparse_gradients_are_refused():
    emb = torch.nn.Embedding(5, 2, sparse=True)
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="^Adam does not support sparse gradients; use torch.optim"):
        optim.Adam(emb.parameters()).step()
