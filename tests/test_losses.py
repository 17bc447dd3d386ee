"""fmlab.losses against PyTorch as the oracle: values, autograd gradients, gradcheck."""
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from fmlab import losses as L

D64 = torch.float64


def rand(*shape, scale=1.0, seed=0, dtype=D64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=dtype) * scale)


def int_targets(n, c, seed=1):
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))


def soft_targets(n, c, seed=2):
    return torch.softmax(rand(n, c, seed=seed), dim=1)


# ---------------------------------------------------------------------------------------------
# gradcheck: the hand-written backward passes against finite differences (float64)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradcheck_mse(reduction):
    p, t = rand(3, 4, seed=0).requires_grad_(), rand(3, 4, seed=1).requires_grad_()
    assert gradcheck(lambda a, b: L.MSE.apply(a, b, reduction), (p, t))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradcheck_bce(reduction):
    z = rand(5, 2, scale=3.0).requires_grad_()
    y = torch.rand(5, 2, generator=torch.Generator().manual_seed(3), dtype=D64).requires_grad_()
    assert gradcheck(lambda a, b: L.BCEWithLogits.apply(a, b, reduction), (z, y))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_gradcheck_softmax_cross_entropy(reduction, smoothing):
    z = rand(4, 5, scale=2.0).requires_grad_()
    y = soft_targets(4, 5).requires_grad_()
    assert gradcheck(lambda a, b: L.SoftmaxCrossEntropy.apply(a, b, reduction, smoothing), (z, y))


def test_gradcheck_catches_a_wrong_backward():
    """gradcheck is a real test: a backward missing the / N fails it."""
    class Wrong(L.SoftmaxCrossEntropy):
        @staticmethod
        def backward(ctx, g):
            gz, gy, _, _ = L.SoftmaxCrossEntropy.backward(ctx, g)
            return gz * 4, gy, None, None  # forgot to divide by N = 4
    z = rand(4, 3).requires_grad_()
    y = soft_targets(4, 3)
    assert not gradcheck(lambda a: Wrong.apply(a, y, "mean", 0.0), (z,), raise_exception=False)


# ---------------------------------------------------------------------------------------------
# Agreement with torch.nn.functional: values and autograd gradients
# ---------------------------------------------------------------------------------------------

def assert_same_loss_and_grad(ours, theirs, *inputs, rtol=1e-7, atol=1e-10):
    a = [x.clone().requires_grad_() for x in inputs]
    b = [x.clone().requires_grad_() for x in inputs]
    la, lb = ours(*a), theirs(*b)
    torch.testing.assert_close(la, lb, rtol=rtol, atol=atol)
    la.backward()
    lb.backward()
    for xa, xb in zip(a, b):
        assert torch.isfinite(xa.grad).all()
        torch.testing.assert_close(xa.grad, xb.grad, rtol=rtol, atol=atol)


SCALES = [1.0, 100.0, 1e4]


@pytest.mark.parametrize("dtype", [torch.float32, D64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_matches_torch(dtype, reduction):
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else {}
    assert_same_loss_and_grad(lambda a, b: L.mse(a, b, reduction), lambda a, b: F.mse_loss(a, b, reduction=reduction),
                              rand(3, 7, dtype=dtype), rand(3, 7, seed=5, dtype=dtype), **tol)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("dtype", [torch.float32, D64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_bce_matches_torch(scale, dtype, reduction):
    z = rand(6, 3, scale=scale, dtype=dtype)
    y = torch.rand(6, 3, generator=torch.Generator().manual_seed(4)).to(dtype)
    y[0] = 0.0
    y[1] = 1.0
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else {}
    ours = lambda a, b: L.bce_with_logits(a, b, reduction)
    theirs = lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction=reduction)
    assert_same_loss_and_grad(ours, theirs, z, y, **tol)


@pytest.mark.parametrize("z", [100.0, -100.0, 1e4, -1e4])
def test_bce_extreme_logits_exact_values(z):
    """softplus(z) - y z at |z| = 100: the loss is |z| when wrong, ~0 when right."""
    zt = torch.tensor([z])
    wrong = torch.tensor([0.0 if z > 0 else 1.0])
    assert L.bce_with_logits(zt, wrong).item() == pytest.approx(abs(z), rel=1e-6)
    assert L.bce_with_logits(zt, 1 - wrong).item() < 1e-40
    # and the textbook probability form really breaks in float32
    assert not torch.isfinite(L.bce_probability_form(zt, wrong))


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("dtype", [torch.float32, D64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind", ["int", "onehot", "soft"])
def test_cross_entropy_matches_torch(scale, dtype, reduction, kind):
    n, c = 5, 4
    z = rand(n, c, scale=scale, dtype=dtype)
    t = int_targets(n, c)
    if kind == "onehot":
        t = F.one_hot(t, c).to(dtype)
    elif kind == "soft":
        t = soft_targets(n, c).to(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else {}
    ours = lambda a: L.cross_entropy(a, t, reduction)
    theirs = lambda a: F.cross_entropy(a, t, reduction=reduction)
    assert_same_loss_and_grad(ours, theirs, z, **tol)
    # the plain formula (no autograd) agrees with torch's autograd gradient too
    zr = z.clone().requires_grad_()
    F.cross_entropy(zr, t, reduction=reduction).backward()
    torch.testing.assert_close(L.cross_entropy_grad(z, t, reduction), zr.grad, **(tol or dict(rtol=1e-7, atol=1e-12)))


@pytest.mark.parametrize("smoothing", [0.05, 0.1, 0.3])
@pytest.mark.parametrize("kind", ["int", "soft"])
def test_label_smoothing_matches_torch(smoothing, kind):
    z = rand(6, 5, scale=3.0)
    t = int_targets(6, 5) if kind == "int" else soft_targets(6, 5)
    assert_same_loss_and_grad(lambda a: L.cross_entropy(a, t, label_smoothing=smoothing),
                              lambda a: F.cross_entropy(a, t, label_smoothing=smoothing), z)
    zr = z.clone().requires_grad_()
    F.cross_entropy(zr, t, label_smoothing=smoothing).backward()
    torch.testing.assert_close(L.cross_entropy_grad(z, t, label_smoothing=smoothing), zr.grad)


def test_extreme_logits_1e4_exact():
    z = torch.tensor([[1e4, -1e4, 0.0]])
    assert L.cross_entropy(z, torch.tensor([1])).item() == 2e4
    assert L.cross_entropy(z, torch.tensor([0])).item() == 0.0
    assert torch.isnan(L.softmax_naive(z)).any()  # the naive form overflows
    torch.testing.assert_close(L.softmax(z), torch.tensor([[1.0, 0.0, 0.0]]))


def test_batch_of_one_and_onehot_equals_int():
    z = rand(1, 6, scale=5.0)
    t = torch.tensor([4])
    one_hot = F.one_hot(t, 6).double()
    assert L.cross_entropy(z, t).item() == pytest.approx(L.cross_entropy(z, one_hot).item(), rel=1e-14)
    torch.testing.assert_close(L.cross_entropy_grad(z, t), L.cross_entropy_grad(z, one_hot))
    assert_same_loss_and_grad(lambda a: L.cross_entropy(a, t), lambda a: F.cross_entropy(a, t), z)


def test_stable_blocks_match_torch():
    z = rand(4, 7, scale=1e3)
    torch.testing.assert_close(L.logsumexp(z), torch.logsumexp(z, -1))
    torch.testing.assert_close(L.log_softmax(z), F.log_softmax(z, -1))
    torch.testing.assert_close(L.softmax(z, dim=0), F.softmax(z, dim=0))
    torch.testing.assert_close(L.softplus(z), F.softplus(z))  # torch returns z itself past z = 20
    z1 = rand(5)
    jac = torch.autograd.functional.jacobian(lambda v: torch.softmax(v, 0), z1)
    torch.testing.assert_close(L.softmax_jacobian(z1), jac)


# ---------------------------------------------------------------------------------------------
# The wrong formula, numerical gradients, relative error
# ---------------------------------------------------------------------------------------------

def test_seed_formula_fails_the_check_and_correct_one_passes():
    z = rand(6, 5, scale=2.0)
    t = int_targets(6, 5)
    num = L.numerical_gradient(lambda v: F.cross_entropy(v, t), z)
    assert L.relative_error(L.cross_entropy_grad(z, t), num) < 1e-8
    assert L.relative_error(L.seed_ce_gradient_wrong(z, t), num) > 0.05
    # what it computes instead: the right direction scaled by (1 - p_c) per example
    p_c = torch.softmax(z, 1)[torch.arange(6), t]
    torch.testing.assert_close(L.seed_ce_gradient_wrong(z, t), (1 - p_c)[:, None] * L.cross_entropy_grad(z, t))


@pytest.mark.parametrize("name,f", [
    ("cubic", lambda x: (x ** 3).sum()),
    ("logsumexp", lambda x: torch.logsumexp(x, 0).sum()),
    ("bce", lambda x: F.binary_cross_entropy_with_logits(x, torch.full_like(x, 0.3))),
])
def test_numerical_gradient_matches_autograd(name, f):
    x = rand(3, 4)
    xr = x.clone().requires_grad_()
    f(xr).backward()
    num = L.numerical_gradient(f, x)
    assert num.dtype == D64 and num.shape == x.shape
    assert L.relative_error(num, xr.grad) < 1e-8, name


def test_numerical_gradient_in_float32_is_poor():
    x = rand(3, 4)
    f = lambda v: F.cross_entropy(v, torch.tensor([0, 1, 2]))
    xr = x.clone().requires_grad_()
    f(xr).backward()
    assert L.relative_error(L.numerical_gradient(f, x.float(), dtype=None), xr.grad) > 1e-3
    assert L.numerical_gradient(f, x.float(), dtype=None).dtype == torch.float32


def test_numerical_gradient_rejects_nonscalar_f():
    with pytest.raises(ValueError, match="scalar"):
        L.numerical_gradient(lambda v: v * 2, rand(3))


def test_relative_error():
    a = torch.tensor([3.0, 4.0])
    assert L.relative_error(a, a) == 0.0
    assert L.relative_error(a, torch.zeros(2)) == 1.0
    assert L.relative_error(torch.zeros(2), torch.zeros(2)) == 0.0
    assert L.relative_error(a, a * 1.01) == pytest.approx(0.01 / 1.01)


# ---------------------------------------------------------------------------------------------
# SGD with weight decay
# ---------------------------------------------------------------------------------------------

def test_sgd_weight_decay_l2_equals_decoupled_and_torch():
    lr, wd = 0.1, 0.01
    theta0 = rand(10)
    x, y = rand(20, 10, seed=7), rand(20, seed=8)
    p = torch.nn.Parameter(theta0.clone())
    opt = torch.optim.SGD([p], lr=lr, weight_decay=wd)
    ours_l2, ours_dec = theta0.clone(), theta0.clone()
    for _ in range(5):
        opt.zero_grad()
        F.mse_loss(x @ p, y).backward()
        opt.step()
        for which in ("l2", "dec"):
            th = ours_l2 if which == "l2" else ours_dec
            thr = th.clone().requires_grad_()
            F.mse_loss(x @ thr, y).backward()
            new = L.sgd_step_weight_decay(th, thr.grad, lr, wd, decoupled=(which == "dec"))
            if which == "l2":
                ours_l2 = new
            else:
                ours_dec = new
    torch.testing.assert_close(ours_l2, p.detach())
    torch.testing.assert_close(ours_dec, p.detach())
    assert not torch.allclose(theta0, p.detach())


def test_adam_l2_differs_from_adamw():
    """The point the chapter makes: for adaptive methods L2 and decoupled decay differ."""
    theta0 = rand(10)
    x, y = rand(20, 10, seed=7), rand(20, seed=8)
    out = []
    for cls in (torch.optim.Adam, torch.optim.AdamW):
        p = torch.nn.Parameter(theta0.clone())
        opt = cls([p], lr=0.01, weight_decay=0.1)
        for _ in range(20):
            opt.zero_grad()
            F.mse_loss(x @ p, y).backward()
            opt.step()
        out.append(p.detach())
    assert L.relative_error(out[0], out[1]) > 1e-3


# ---------------------------------------------------------------------------------------------
# Bad input gets a clear error
# ---------------------------------------------------------------------------------------------

def test_errors():
    z = rand(3, 4)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        L.cross_entropy(z, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        L.cross_entropy(z, torch.tensor([0, -1, 1]))
    with pytest.raises(ValueError, match="shape"):
        L.cross_entropy(z, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shape of logits"):
        L.cross_entropy(z, rand(3, 5))
    with pytest.raises(ValueError, match="unsqueeze"):
        L.cross_entropy(rand(4), torch.tensor(1))
    with pytest.raises(ValueError, match="reduction"):
        L.cross_entropy(z, torch.tensor([0, 1, 2]), reduction="none")
    with pytest.raises(ValueError, match="label_smoothing"):
        L.cross_entropy(z, torch.tensor([0, 1, 2]), label_smoothing=1.5)
    with pytest.raises(ValueError, match="must match"):
        L.mse(rand(3, 1), rand(3))
    with pytest.raises(ValueError, match="must match"):
        L.bce_with_logits(rand(3), rand(4))
    with pytest.raises(TypeError, match="float"):
        L.bce_with_logits(rand(3), torch.tensor([0, 1, 1]))


# ---------------------------------------------------------------------------------------------
# Boundaries and the forms the chapter shows but does not train with
# ---------------------------------------------------------------------------------------------

def test_logsumexp_of_a_row_of_minus_infinity_is_minus_infinity():
    z = torch.tensor([[-float("inf"), -float("inf")], [0.0, 0.0]], dtype=D64)
    out = L.logsumexp(z)
    assert out[0] == -float("inf") and out[1].item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    torch.testing.assert_close(L.logsumexp(z[1:], dim=0), torch.logsumexp(z[1:], 0))


def test_empty_batch_and_edge_class_indices():
    assert L.class_probabilities(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)).shape == (0, 3)
    z = rand(2, 3)
    q = L.class_probabilities(z, torch.tensor([0, 2]))  # the last class, C - 1, is allowed
    assert q.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]] and q.dtype == D64
    for a in (0.0, 1.0):  # both ends of the smoothing range are allowed
        torch.testing.assert_close(L.cross_entropy(z, torch.tensor([0, 2]), label_smoothing=a),
                                   F.cross_entropy(z, torch.tensor([0, 2]), label_smoothing=a))


def test_gradients_as_formulas_match_autograd_for_both_reductions():
    z, t = rand(4, 3, scale=2.0), int_targets(4, 3)
    y = torch.rand(4, 3, generator=torch.Generator().manual_seed(3), dtype=D64)
    for reduction in ("mean", "sum"):
        zr = z.clone().requires_grad_()
        F.cross_entropy(zr, t, reduction=reduction, label_smoothing=0.2).backward()
        torch.testing.assert_close(L.cross_entropy_grad(z, t, reduction, label_smoothing=0.2), zr.grad)
        zr = z.clone().requires_grad_()
        F.binary_cross_entropy_with_logits(zr, y, reduction=reduction).backward()
        torch.testing.assert_close(L.bce_with_logits_grad(z, y, reduction), zr.grad)
    with pytest.raises(ValueError, match="^bce_with_logits_grad: prediction has shape"):
        L.bce_with_logits_grad(z, y[:2])


def test_the_unstable_forms_agree_where_they_are_stable_and_fail_where_the_chapter_says():
    z, y = rand(5, scale=2.0), torch.rand(5, generator=torch.Generator().manual_seed(4), dtype=D64)
    torch.testing.assert_close(L.bce_probability_form(z, y), F.binary_cross_entropy_with_logits(z, y))
    torch.testing.assert_close(L.softmax_naive(rand(3, 4), dim=0), torch.softmax(rand(3, 4), 0))
    big, one = torch.tensor([100.0]), torch.tensor([0.0])
    assert L.bce_probability_form(big, one) == float("inf")  # sigmoid(100) rounds to 1
    zr = big.clone().requires_grad_()
    clipped = L.bce_probability_form(zr, one, clamp=1e-7)
    clipped.backward()
    assert clipped.item() == pytest.approx(-torch.log(1 - torch.tensor(1.0 - 1e-7)).item())  # log(1 - s)
    assert zr.grad.item() == 0.0  # past the clip the gradient is exactly zero


def test_numerical_gradient_step_and_float_results():
    x = torch.tensor([1.0, 2.0], dtype=D64)
    # a quadratic: central differences are exact for any step, a float result is accepted
    g = L.numerical_gradient(lambda v: float((v ** 2).sum()), x, eps=0.5)
    torch.testing.assert_close(g, 2 * x)
    # a cubic: the error is eps^2 exactly, so the step really is eps
    g3 = L.numerical_gradient(lambda v: (v ** 3).sum(), x, eps=0.1)
    torch.testing.assert_close(g3, 3 * x ** 2 + 0.01)
    with pytest.raises(ValueError, match="^relative_error: shapes differ, \\(2,\\) vs \\(3,\\)$"):
        L.relative_error(torch.zeros(2), torch.zeros(3))


def test_sgd_step_weight_decay_values():
    theta, grad = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.5])
    want = theta - 0.1 * (grad + 0.2 * theta)  # 1 - 0.1 * 0.7, -2 - 0.1 * 0.1
    for decoupled in (False, True):
        torch.testing.assert_close(L.sgd_step_weight_decay(theta, grad, 0.1, 0.2, decoupled), want)
    torch.testing.assert_close(want, torch.tensor([0.93, -2.01]))


def test_error_messages_in_full():
    z = rand(3, 4)
    with pytest.raises(ValueError, match="^reduction must be 'mean' or 'sum', got 'none'$"):
        L.mse(z, z, reduction="none")
    with pytest.raises(ValueError, match=r"^targets must be class indices in \[0, 3\] for 4 classes, "
                                         r"got values in \[0, 4\]$"):
        L.cross_entropy(z, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match=r"^integer targets must have shape \(N,\) = \(3,\) to match "
                                         r"logits \(3, 4\), got \(2,\)$"):
        L.cross_entropy(z, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"^label_smoothing must be in \[0, 1\], got -0.1$"):
        L.cross_entropy(z, torch.tensor([0, 1, 2]), label_smoothing=-0.1)
    with pytest.raises(TypeError, match="^bce_with_logits needs float targets in \\[0, 1\\], got dtype "
                                        "torch.int64; use y.float\\(\\)$"):
        L.bce_with_logits(rand(3), torch.tensor([0, 1, 1]))


def test_other_dims_defaults_and_both_clip_ends():
    z = rand(3, 4)
    torch.testing.assert_close(L.log_softmax(z, dim=0), F.log_softmax(z, 0))
    torch.testing.assert_close(L.softmax_naive(z, dim=1), torch.softmax(z, 1))
    y = torch.rand(3, 4, generator=torch.Generator().manual_seed(5), dtype=D64)
    torch.testing.assert_close(L.bce_with_logits_grad(z, y), L.bce_with_logits_grad(z, y, "mean"))
    low = L.bce_probability_form(torch.tensor([-100.0]), torch.tensor([1.0]), clamp=1e-7)
    assert torch.isfinite(low)  # sigmoid(-100) = 0 is clipped up to 1e-7 too
