"""fmlab.adversarial: attacks stay in the threat model, get stronger with budget, match
torchattacks, and leave the model as they found it."""
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fmlab import seed_everything
from fmlab.adversarial import (SIZES, AdversarialTransform, adversarial_training_step, eval_mode,
                               fgsm, fgsm_rs, linear_ramp, pgd, pgd_step_size, project,
                               robust_accuracy)
from fmlab.data import batches, load


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(16 * 13 * 13, 64), nn.ReLU(), nn.Linear(64, 10))


def bn_dropout_cnn() -> nn.Module:
    """Batch-norm and dropout: a model whose output depends on train/eval mode."""
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Dropout(0.5), nn.Linear(8 * 13 * 13, 10))


@pytest.fixture(scope="module")
def mnist():
    return load("mnist", "train", n=4000, source="embedded"), load("mnist", "test", source="embedded")


@pytest.fixture(scope="module")
def trained(mnist):
    """A small standard (non-robust) CNN, 2 epochs on 4,000 MNIST images: about 94% clean."""
    train, _ = mnist
    g = seed_everything(0)
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    for _ in range(2):
        for xb, yb in batches(train.x, train.y, 64, generator=g):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def sample(mnist):
    _, test = mnist
    return test.x[:200], test.y[:200]


def per_example_loss(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


ATTACKS = {
    "fgsm": partial(fgsm, eps=0.1),
    "fgsm_targeted": partial(fgsm, eps=0.1, targeted=True),
    "pgd": partial(pgd, eps=0.1, alpha=0.03, steps=10),
    "pgd_no_start": partial(pgd, eps=0.2, steps=5, random_start=False),
    "pgd_targeted": partial(pgd, eps=0.1, steps=10, targeted=True),
    "pgd_restarts": partial(pgd, eps=0.1, steps=5, restarts=3),
    "fgsm_rs": partial(fgsm_rs, eps=0.3),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_perturbation_in_ball_and_box(trained, sample, name):
    x, y = sample
    attack = ATTACKS[name]
    eps = attack.keywords["eps"]
    x_adv = attack(trained, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv != x).any(), "the attack did not change the input at all"
    # MNIST is mostly 0 and 1: the box must bind (the ball alone would leave [0, 1])
    assert ((x == 0) & (x_adv == 0)).any() and ((x == 0) & (x_adv > 0)).any()


def test_project_is_the_nearest_point_of_ball_and_box():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(500, generator=g)
    z = x + 0.6 * torch.randn(500, generator=g)
    p = project(z, x, 0.2)
    assert ((p - x).abs() <= 0.2 + 1e-7).all() and (p >= 0).all() and (p <= 1).all()
    # for a box the nearest point is coordinate-wise: compare with a brute-force search per
    # coordinate over a fine grid of the feasible interval
    lo, hi = torch.clamp(x - 0.2, min=0), torch.clamp(x + 0.2, max=1)
    grid = lo[:, None] + (hi - lo)[:, None] * torch.linspace(0, 1, 2001)[None]
    brute = grid.gather(1, (grid - z[:, None]).abs().argmin(1, keepdim=True)).squeeze(1)
    torch.testing.assert_close(p, brute, atol=2e-4, rtol=0)
    torch.testing.assert_close(project(p, x, 0.2), p)


def test_fgsm_maximises_the_linearised_loss(trained, sample):
    """eps*sign(g) maximises g.delta over the ε-ball (the FGSM equation), beats random deltas."""
    x, y = sample
    x = x[:20].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(trained(x), y[:20], reduction="sum"), x)
    eps = 0.1
    best = (g * eps * g.sign()).sum()
    torch.testing.assert_close(best, eps * g.abs().sum())
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        delta = (2 * torch.rand(x.shape, generator=gen) - 1) * eps
        assert (g * delta).sum() <= best
    # and fgsm uses exactly that direction where the box does not bind
    x_adv = fgsm(trained, x.detach(), y[:20], eps)
    inside = (x.detach() + eps * g.sign() >= 0) & (x.detach() + eps * g.sign() <= 1)
    torch.testing.assert_close((x_adv - x.detach())[inside], (eps * g.sign())[inside])


@pytest.mark.parametrize("name", ["fgsm", "pgd", "pgd_no_start", "pgd_restarts"])
def test_untargeted_attacks_raise_the_loss(trained, sample, name):
    x, y = sample
    clean = per_example_loss(trained, x, y)
    adv = per_example_loss(trained, ATTACKS[name](trained, x, y), y)
    assert adv.mean() > clean.mean() + 0.5
    assert (adv >= clean - 1e-4).float().mean() > 0.95


def test_pgd_is_stronger_than_fgsm(trained, sample):
    x, y = sample
    loss_fgsm = per_example_loss(trained, fgsm(trained, x, y, 0.1), y).mean()
    loss_pgd = per_example_loss(trained, pgd(trained, x, y, 0.1, steps=20), y).mean()
    assert loss_pgd > loss_fgsm


@pytest.mark.parametrize("attack", [partial(fgsm, eps=0.1), partial(pgd, eps=0.1, steps=10)])
def test_targeted_attacks_raise_the_target_probability(trained, sample, attack):
    x, y = sample
    target = (y + 3) % 10
    with torch.no_grad():
        before = trained(x).softmax(1).gather(1, target[:, None])
        after = trained(attack(trained, x, target, targeted=True)).softmax(1).gather(1, target[:, None])
    assert after.mean() > 2 * before.mean()
    assert (after >= before - 1e-6).float().mean() > 0.95


def test_robust_accuracy_does_not_increase_with_eps(trained, sample):
    # deterministic PGD (no random start) so that the comparison is not a matter of luck
    accs = [robust_accuracy(trained, sample, partial(pgd, eps=e, steps=10, random_start=False) if e else None)
            for e in (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)]
    assert all(a >= b for a, b in zip(accs, accs[1:])), accs
    assert accs[0] > 0.85 and accs[-1] < 0.05, accs


def test_robust_accuracy_does_not_increase_with_steps(trained, sample):
    # fixed step size, no random start: each run extends the previous one's path
    accs = [robust_accuracy(trained, sample, partial(pgd, eps=0.1, alpha=0.01, steps=s, random_start=False))
            for s in (0, 1, 2, 5, 10, 20)]
    assert all(a >= b for a, b in zip(accs, accs[1:])), accs
    assert accs[0] - accs[-1] > 0.3, accs


def test_restarts_keep_the_worst_case(trained, sample):
    """With restarts, every example that any single run fools stays fooled."""
    x, y = sample
    runs = [pgd(trained, x, y, 0.06, steps=5, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    with torch.no_grad():
        fooled_any = torch.stack([trained(r).argmax(1) != y for r in runs]).any(0)
        best = pgd(trained, x, y, 0.06, steps=5, restarts=3, generator=torch.Generator().manual_seed(0))
        fooled_best = trained(best).argmax(1) != y
    assert (fooled_best >= fooled_any).all()


def test_seeded_random_start_repeats(trained, sample):
    x, y = sample
    a = pgd(trained, x, y, 0.1, steps=3, generator=torch.Generator().manual_seed(5))
    b = pgd(trained, x, y, 0.1, steps=3, generator=torch.Generator().manual_seed(5))
    c = pgd(trained, x, y, 0.1, steps=3, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pgd_matches_torchattacks(trained, mnist):
    torchattacks = pytest.importorskip("torchattacks")
    _, test = mnist
    x, y = test.x[:500], test.y[:500]
    eps, alpha, steps = 0.1, 0.01, 20
    # without a random start both are deterministic and should agree image for image
    ours = pgd(trained, x, y, eps, alpha, steps, random_start=False)
    theirs = torchattacks.PGD(trained, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    assert (ours - theirs).abs().max() < 1e-5
    # with random starts (different noise) robust accuracy agrees within 1 point
    torch.manual_seed(0)
    acc_ours = robust_accuracy(trained, (x, y), partial(pgd, eps=eps, alpha=alpha, steps=steps))
    acc_theirs = robust_accuracy(trained, (x, y), lambda m, xb, yb: torchattacks.PGD(
        m, eps=eps, alpha=alpha, steps=steps, random_start=True)(xb, yb))
    assert 0.05 < acc_ours < 0.95, "pick eps so that robust accuracy is informative"
    assert abs(acc_ours - acc_theirs) <= 0.01, (acc_ours, acc_theirs)


@pytest.mark.parametrize("attack", [partial(fgsm, eps=0.1), partial(pgd, eps=0.1, steps=3),
                                    partial(pgd, eps=0.1, steps=2, restarts=2), partial(fgsm_rs, eps=0.1)])
def test_attacks_leave_the_model_unchanged(sample, attack):
    x, y = sample
    torch.manual_seed(0)
    model = bn_dropout_cnn().train()
    model[-1].eval()  # a submodule in a different mode from its parent must keep it
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}  # includes batch-norm buffers
    attack(model, x[:32], y[:32])
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed"
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
    assert model.training and model[1].training and not model[-1].training


def test_attacks_are_deterministic_on_a_dropout_model(sample):
    """Eval mode during the attack: dropout is off, so two calls give the same image."""
    x, y = sample
    model = bn_dropout_cnn().train()
    assert torch.equal(fgsm(model, x[:16], y[:16], 0.1), fgsm(model, x[:16], y[:16], 0.1))


def test_attack_inside_autocast_uses_float32(trained, sample):
    x, y = sample
    ref = pgd(trained, x[:50], y[:50], 0.1, steps=3, random_start=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = pgd(trained, x[:50], y[:50], 0.1, steps=3, random_start=False)
    assert got.dtype == torch.float32 and torch.equal(got, ref)


def test_robust_accuracy_inputs(trained, mnist, sample):
    _, test = mnist
    x, y = sample
    with torch.no_grad():
        clean = (trained(x).argmax(1) == y).float().mean().item()
    assert robust_accuracy(trained, (x, y)) == pytest.approx(clean)
    assert robust_accuracy(trained, (x, y), batch_size=7) == pytest.approx(clean)
    assert robust_accuracy(trained, test.subset(200)) == pytest.approx(clean)
    with pytest.raises(TypeError, match="Dataset"):
        robust_accuracy(trained, x)


def test_bad_inputs_give_clear_errors(trained, sample):
    x, y = sample
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pgd(trained, (x - 0.1307) / 0.3081, y, 0.1)
    with pytest.raises(ValueError, match="eps"):
        fgsm(trained, x, y, -0.1)
    with pytest.raises(ValueError, match="labels"):
        fgsm(trained, x, y[:3], 0.1)


def test_adversarial_training_step_stops_at_a_non_finite_loss(sample):
    from fmlab.monitor import NonFiniteLossError
    x, y = sample[0][:16], sample[1][:16]
    torch.manual_seed(0)
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=float("inf"))
    # the first loss is finite; its step (lr = inf) makes the weights inf
    adversarial_training_step(model, opt, x, y, 0.1, 0.05, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="adversarial-training step\\. Try a smaller"):
        adversarial_training_step(model, opt, x, y, 0.1, 0.05, 1)
    for k, v in model.state_dict().items():  # no step was taken on the bad loss
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, equal_nan=True, msg=k)


def test_adversarial_training_step_matches_a_manual_step(sample):
    x, y = sample
    x, y = x[:32], y[:32]
    torch.manual_seed(0)
    model = bn_dropout_cnn()
    model[5] = nn.Identity()  # no dropout, so both runs are deterministic; batch-norm stays
    ref = bn_dropout_cnn()
    ref[5] = nn.Identity()
    ref.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    model.eval()
    for _ in range(2):  # twice: gradients must not accumulate across calls
        loss = adversarial_training_step(model, opt, x, y, 0.2, 0.05, 5, random_start=False)
        x_adv = pgd(ref, x, y, 0.2, 0.05, 5, random_start=False)
        ref.train()
        ref_opt.zero_grad()
        ref_loss = F.cross_entropy(ref(x_adv), y)
        ref_loss.backward()
        ref_opt.step()
        ref.eval()
        assert loss == pytest.approx(ref_loss.item(), rel=1e-5)
    assert not model.training, "the step must restore the model's mode"
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_adversarial_transform_ramps_eps(trained, sample):
    x, y = sample
    ramp = linear_ramp(0.3, 4)
    assert [ramp(i) for i in range(6)] == pytest.approx([0.075, 0.15, 0.225, 0.3, 0.3, 0.3])
    assert linear_ramp(0.3, 0)(0) == 0.3
    t = AdversarialTransform(ramp, steps=3)
    for expected in (0.075, 0.15, 0.225, 0.3, 0.3):
        assert t.current_eps() == pytest.approx(expected)
        x_adv = t(trained, x[:20], y[:20])
        assert (x_adv - x[:20]).abs().max() <= expected + 1e-6
    assert t.batches == 5
    f = AdversarialTransform(0.3, method="fgsm_rs")
    assert f.alpha_ratio == 1.25 and f.current_eps() == 0.3
    with pytest.raises(ValueError, match="method"):
        AdversarialTransform(0.3, method="cw")


def test_sizes_have_both_profiles_with_the_same_keys():
    assert set(SIZES) == {"quick", "full", "smoke"}
    assert SIZES["quick"].keys() == SIZES["full"].keys()
    assert SIZES["smoke"].keys() <= SIZES["quick"].keys()


def test_eval_mode_restores_on_error():
    model = bn_dropout_cnn().train()
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            assert not model.training
            raise RuntimeError("boom")
    assert model.training and all(m.training for m in model.modules())


def test_every_entry_point_restores_each_submodules_own_mode(sample):
    """A model in train mode with a frozen batch-norm layer (eval mode): attacks, robust
    accuracy and an adversarial-training step leave each submodule's mode as it was.
    ``model.train(was_training)`` would have put the frozen layer back in train mode."""
    x, y = sample
    x, y = x[:16], y[:16]
    model = bn_dropout_cnn().train()
    model[1].eval()
    modes = [m.training for m in model.modules()]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for run in (lambda: fgsm(model, x, y, 0.1), lambda: pgd(model, x, y, 0.1, steps=2),
                lambda: robust_accuracy(model, (x, y), partial(pgd, eps=0.1, steps=2)),
                lambda: adversarial_training_step(model, opt, x, y, 0.1, 0.05, 2),
                lambda: AdversarialTransform(0.1, steps=2)(model, x, y)):
        run()
        assert [m.training for m in model.modules()] == modes


def test_the_default_step_size_is_written_once():
    """pgd, AdversarialTransform and fgsm_rs take their defaults from one place."""
    assert pgd_step_size(0.3, 10) == pytest.approx(0.075) and pgd_step_size(0.3, 0) == 0.75
    assert AdversarialTransform(0.3, steps=7).alpha_ratio == pytest.approx(pgd_step_size(1.0, 7))
    model, x = bn_dropout_cnn().eval(), torch.rand(4, 1, 28, 28)
    y = torch.zeros(4, dtype=torch.long)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert torch.equal(pgd(model, x, y, 0.2, steps=3, generator=g()),
                       pgd(model, x, y, 0.2, pgd_step_size(0.2, 3), 3, generator=g()))
    assert torch.equal(fgsm_rs(model, x, y, 0.2, generator=g()),
                       pgd(model, x, y, 0.2, 1.25 * 0.2, 1, generator=g()))


def _linear(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


def test_projection_is_idempotent_inside_ball_and_box_and_eps_zero_is_identity():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(300, generator=g)
    x[:10], x[10:20] = 0.0, 1.0  # the box edges
    for eps in (0.0, 0.05, 0.5):
        p = project(x + torch.randn(300, generator=g), x, eps)
        assert torch.equal(project(p, x, eps), p)  # a point in the set stays put
        assert ((p - x).abs() <= eps + 1e-7).all() and p.min() >= 0 and p.max() <= 1
    assert torch.equal(project(x + 0.3, x, 0.0), x)


def test_eps_zero_attacks_change_nothing():
    model, x = _linear(), torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(fgsm(model, x, y, 0.0), x)
    assert torch.equal(pgd(model, x, y, 0.0, steps=3, generator=torch.Generator().manual_seed(0)), x)
    assert torch.equal(pgd(model, x, y, 0.1, steps=0, random_start=False), x)
    start = pgd(model, x, y, 0.1, steps=0, generator=torch.Generator().manual_seed(0))
    assert 0 < (start - x).abs().max() <= 0.1 + 1e-7  # steps=0: the random start alone


def test_random_start_is_uniform_over_the_ball():
    from fmlab.adversarial import _uniform_like

    x = torch.full((20000,), 0.5)
    for gen in (torch.Generator().manual_seed(0), None):
        u = _uniform_like(x, 0.2, gen)
        assert u.shape == x.shape and u.min() >= -0.2 and u.max() <= 0.2
        assert u.min() < -0.19 and u.max() > 0.19 and abs(u.mean().item()) < 0.01
        assert abs(u.std().item() - 0.4 / 12 ** 0.5) < 0.005  # the std of U[-eps, eps]


def test_margin_loss_and_objective_values():
    from fmlab.adversarial import _objective, margin_loss

    logits = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 5.0]])
    assert margin_loss(logits, torch.tensor([0, 2])).tolist() == [2.0, -5.0]
    torch.testing.assert_close(_objective(logits, torch.tensor([0, 2]), "ce"),
                               F.cross_entropy(logits, torch.tensor([0, 2]), reduction="none"))
    with pytest.raises(ValueError, match="^loss must be 'ce' or 'margin', got 'l2'$"):
        _objective(logits, torch.tensor([0, 2]), "l2")


def test_margin_pgd_and_step_size_defaults():
    model, x = _linear(), torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    adv = pgd(model, x, y, 0.3, steps=5, loss="margin", random_start=False)
    from fmlab.adversarial import margin_loss
    with torch.no_grad():
        assert (margin_loss(model(adv), y) > margin_loss(model(x), y)).all()  # the margin rose
    assert pgd_step_size(0.3, 0) == pytest.approx(0.75)  # no steps: as if one
    assert torch.equal(fgsm_rs(model, x, y, 0.2, random_start=False),
                       pgd(model, x, y, 0.2, 0.25, steps=1, random_start=False))  # alpha 1.25 eps
    assert torch.equal(fgsm_rs(model, x, y, 0.2, alpha=0.2, random_start=False), fgsm(model, x, y, 0.2))
    t = AdversarialTransform(0.2, steps=4, random_start=False)
    assert t.alpha_ratio == pytest.approx(2.5 / 4)
    assert torch.equal(t(model, x, y), pgd(model, x, y, 0.2, 0.2 * 2.5 / 4, 4, random_start=False))
    f = AdversarialTransform(0.2, method="fgsm_rs", steps=9, alpha_ratio=1.0, random_start=False)
    assert torch.equal(f(model, x, y), fgsm(model, x, y, 0.2))  # one step whatever steps says


def test_attack_input_checks_in_full():
    model = _linear()
    x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
    with pytest.raises(TypeError, match="^x must be a float tensor of images in \\[0, 1\\], got dtype torch.uint8$"):
        fgsm(model, (x * 255).to(torch.uint8), y, 0.1)
    with pytest.raises(ValueError, match="^x has 2 images but y has 1 labels$"):
        fgsm(model, x, y[:1], 0.1)
    with pytest.raises(ValueError, match="^eps must be >= 0, got -0.1$"):
        fgsm(model, x, y, -0.1)
    with pytest.raises(ValueError, match="^x has values in \\[0, 2\\]; attacks expect images in \\[0, 1\\]"):
        fgsm(model, torch.cat([x[:1] * 0, x[1:] * 0 + 2]), y, 0.1)
    edges = torch.cat([torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)])
    assert fgsm(model, edges, y, 0.1).shape == edges.shape  # exactly 0 and 1 are images
    assert fgsm(model, x[:0], y[:0], 0.1).shape == (0, 1, 4, 4)  # an empty batch
    for steps, restarts in ((-1, 1), (1, 0)):
        with pytest.raises(ValueError, match=f"^need steps >= 0 and restarts >= 1, got steps={steps}, "
                                             f"restarts={restarts}$"):
            pgd(model, x, y, 0.1, steps=steps, restarts=restarts)
    assert robust_accuracy(model, (x[:0], y[:0])) == 0.0
    with pytest.raises(TypeError, match="^data must be an fmlab Dataset \\(with .x and .y\\) or a pair"):
        robust_accuracy(model, [x, y, y])
