"""Public checks of the compression lab (labs/05_compression.ipynb).

``run`` calls the student's function in the child process and returns plain data; ``grade``
recomputes the reference in the parent (with :mod:`fmlab.compress` or a few lines of torch).
Each question declares in ``forbid=`` the references it asks students to write themselves:
fmlab's own functions and PyTorch's functions for the same job, switched off while ``run``
executes (see fmlab/grading/forbid.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fmlab.grading import Question, Result, expect_close
from fmlab.grading.trained import (load_into_reference, score_between, train_in_child,
                                   training_images)

# The master notebooks beside this folder: out of a graded answer's reach.
PRIVATE = ("../*.ipynb",)

MODULES = ("fmlab.models", "fmlab.data", "fmlab.train")

PRUNING = ("fmlab.compress.magnitude_masks", "fmlab.compress.magnitude_prune",
           "fmlab.compress.apply_masks", "torch.nn.utils.prune.global_unstructured",
           "torch.nn.utils.prune.l1_unstructured", "torch.nn.utils.prune.L1Unstructured",
           "torch.nn.utils.prune.random_unstructured", "torch.nn.utils.prune.custom_from_mask")
QUANTIZATION = ("fmlab.quantize.quantize", "fmlab.quantize.dequantize", "fmlab.quantize.qparams",
                "fmlab.quantize.fake_quantize", "fmlab.quantize.FakeQuant",
                "fmlab.quantize.weights_quantized", "torch.quantize_per_channel",
                "torch.quantize_per_tensor", "torch.fake_quantize_per_channel_affine",
                "torch.fake_quantize_per_tensor_affine", "torch.dequantize",
                "torch.Tensor.dequantize", "torch.Tensor.int_repr",
                "torch.ao.quantization.*")
FAKE_QUANTIZATION = ("fmlab.quantize.fake_quantize", "fmlab.quantize.FakeQuant",
                     "fmlab.quantize.add_fake_quant", "fmlab.quantize.weights_quantized",
                     "torch.fake_quantize_per_channel_affine",
                     "torch.fake_quantize_per_tensor_affine",
                     "torch.ao.quantization.*")
DISTILLATION = ("fmlab.compress.distillation_loss", "fmlab.compress.distillation_grad",
                "torch.nn.functional.kl_div", "torch.kl_div", "torch.nn.KLDivLoss")


def _randn(*shape, seed=0, scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


# ---------------------------------------------------------------------------------------------
# q1: global magnitude-pruning masks
# ---------------------------------------------------------------------------------------------

def reference_masks(weights: list[torch.Tensor], amount: float) -> list[torch.Tensor]:
    """PyTorch's global L1 pruning masks for the tensors ``weights`` (one layer each)."""
    from torch.nn.utils import prune

    holders = []
    for w in weights:
        holder = torch.nn.Module()
        holder.weight = torch.nn.Parameter(w.detach().clone())
        holders.append(holder)
    prune.global_unstructured([(h, "weight") for h in holders],
                              pruning_method=prune.L1Unstructured, amount=float(amount))
    return [h.weight_mask.detach() for h in holders]


def _weights(case: dict) -> list[torch.Tensor]:
    ws = [_randn(*shape, seed=case.get("seed", 0) + i, scale=scale)
          for i, (shape, scale) in enumerate(zip(case["shapes"], case["scales"]))]
    if case.get("shift"):  # a layer of mostly negative weights: sign matters for the ranking
        ws[0] = ws[0] - case["shift"]
    if case.get("zeros"):  # weights that are already exactly zero
        ws[-1].view(-1)[: case["zeros"]] = 0.0
    return ws


def run_q1(ns, case):
    weights = _weights(case)
    masks = ns["global_magnitude_masks"]([w.clone() for w in weights], case["amount"])
    return list(masks) if isinstance(masks, (list, tuple)) else masks


def grade_q1(case, got):
    weights = _weights(case)
    expected = reference_masks(weights, case["amount"])
    if not isinstance(got, (list, tuple)) or len(got) != len(weights):
        return Result.fail(f"return a list of {len(weights)} masks, one per weight tensor")
    for i, (g, w) in enumerate(zip(got, weights)):
        if not isinstance(g, torch.Tensor) or tuple(g.shape) != tuple(w.shape):
            return Result.fail(f"mask {i} should be a tensor of shape {tuple(w.shape)}")
        if not torch.isin(g.float(), torch.tensor([0.0, 1.0])).all():
            return Result.fail(f"mask {i} holds values other than 0 and 1")
    zeros = sum(int((g == 0).sum()) for g in got)
    want = sum(int((e == 0).sum()) for e in expected)
    if zeros != want:
        return Result.fail(f"your masks prune {zeros} weights; round(amount * N) = {want} of "
                           f"the N = {sum(w.numel() for w in weights)} weights should go")
    if all(torch.equal(g.float(), e) for g, e in zip(got, expected)):
        return Result.ok()
    layerwise = [reference_masks([w], case["amount"])[0] for w in weights]
    if all(torch.equal(g.float(), e) for g, e in zip(got, layerwise)):
        return Result.fail("each tensor was pruned on its own; rank all weights together "
                           "(global pruning)")
    return Result.fail("the right number of weights is pruned, but not the smallest |w| "
                       "(rank by magnitude, across all tensors)")


CASES_Q1 = [
    {"name": "three layers of different scales, 50%", "shapes": [[30, 20], [10, 30], [4, 10]],
     "scales": [0.1, 1.0, 3.0], "amount": 0.5},
    {"name": "negative weights, 80%", "shapes": [[16, 16], [8, 16]], "scales": [1.0, 1.0],
     "amount": 0.8, "shift": 2.0, "seed": 3},
    {"name": "a conv weight and a dense weight, 30%", "shapes": [[4, 1, 3, 3], [10, 36]],
     "scales": [0.5, 0.2], "amount": 0.3, "seed": 5},
]


# ---------------------------------------------------------------------------------------------
# q2: per-channel quantize and dequantize
# ---------------------------------------------------------------------------------------------

def _channel_weights(case: dict) -> torch.Tensor:
    w = _randn(*case["shape"], seed=case.get("seed", 0))
    rows = w.shape[0]
    w = w * torch.linspace(0.1, 2.0, rows).view(-1, *[1] * (w.dim() - 1))  # per-row scales
    if case.get("positive_rows"):  # all-positive and all-negative rows
        w[0] = w[0].abs()
        w[1] = -w[1].abs() * 3
    if case.get("zero_row"):
        w[-1] = 0.0
    return w


def prepare_q2(case: dict) -> dict:
    """In the parent: codes, scales and zero points of *another* tensor, for the dequantize
    part (not the answers to the quantize part)."""
    from fmlab.compress import quantize
    other = _channel_weights({**case, "seed": case.get("seed", 0) + 100})
    case["codes"] = tuple(quantize(other, case["bits"], case["scheme"], axis=0))
    return case


def run_q2(ns, case):
    w = _channel_weights(case)
    out = ns["quantize_per_channel"](w.clone(), case["bits"], case["scheme"])
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise TypeError("quantize_per_channel should return (q, scale, zero_point)")
    q, scale, zero = case["codes"]
    x_hat = ns["dequantize_per_channel"](q.clone(), scale.clone(), zero.clone())
    return {"q": out[0], "scale": out[1], "zero_point": out[2], "x_hat": x_hat}


def grade_q2(case, got):
    from fmlab.compress import dequantize, quantize
    w = _channel_weights(case)
    ref = quantize(w, case["bits"], case["scheme"], axis=0)
    channels = w.shape[0]
    q, scale, zero = got["q"], got["scale"], got["zero_point"]
    dtype = torch.int8 if case["scheme"] == "symmetric" else torch.uint8
    if not isinstance(q, torch.Tensor) or q.dtype != dtype or tuple(q.shape) != tuple(w.shape):
        return Result.fail(f"q should be a {dtype} tensor of shape {tuple(w.shape)}, got "
                           f"{getattr(q, 'dtype', type(q).__name__)} {tuple(getattr(q, 'shape', ()))}")
    for name, value in (("scale", scale), ("zero_point", zero)):
        if not isinstance(value, torch.Tensor) or value.numel() != channels:
            return Result.fail(f"{name} should hold one value per output channel ({channels})")
    scale, zero = scale.reshape(-1), zero.reshape(-1)
    checked = expect_close(scale.double(), ref.scale.double(), atol=0, rtol=1e-6, check_dtype=False,
                           what="the scales")
    if not checked.passed:
        return checked
    if zero.dtype.is_floating_point and not torch.equal(zero, zero.round()):
        return Result.fail("the zero points are not integers: round them (and clamp them to the "
                           "code range)")
    if not torch.equal(zero.long(), ref.zero_point):
        bad = int((zero.long() != ref.zero_point).nonzero()[0, 0])
        return Result.fail(f"zero point of channel {bad} is {int(zero[bad])}, expected "
                           f"{int(ref.zero_point[bad])}")
    off = (q.long() - ref.q.long()).abs()
    # x / scale and x * (1 / scale) may round a value that sits on a half differently
    if off.max() > 1 or (off > 0).float().mean() > 0.005:
        return Result.fail(f"{int((off > 0).sum())} of {q.numel()} codes differ from the "
                           f"reference (largest difference {int(off.max())})")
    q_ref, s_ref, z_ref = case["codes"]
    return expect_close(got["x_hat"], dequantize(q_ref, s_ref, z_ref, axis=0), atol=1e-6,
                        rtol=1e-6, check_dtype=True, what="dequantize_per_channel(q, scale, zero_point)")


CASES_Q2 = [
    {"name": "symmetric int8, a (16, 50) weight", "shape": [16, 50], "bits": 8,
     "scheme": "symmetric"},
    {"name": "affine uint8, with all-positive and all-negative rows", "shape": [12, 40],
     "bits": 8, "scheme": "affine", "positive_rows": True, "seed": 1},
    {"name": "symmetric 4-bit, a conv weight (8, 3, 3, 3)", "shape": [8, 3, 3, 3], "bits": 4,
     "scheme": "symmetric", "positive_rows": True, "seed": 2},
]


# ---------------------------------------------------------------------------------------------
# q3: the distillation loss
# ---------------------------------------------------------------------------------------------

def _logits(case: dict):
    s = _randn(case["n"], case["k"], seed=case.get("seed", 0), scale=3.0, dtype=torch.float64)
    t = _randn(case["n"], case["k"], seed=case.get("seed", 0) + 1, scale=5.0, dtype=torch.float64)
    y = torch.randint(0, case["k"], (case["n"],),
                      generator=torch.Generator().manual_seed(case.get("seed", 0) + 2))
    return s, t, y


def run_q3(ns, case):
    s, t, y = _logits(case)
    s = s.clone().requires_grad_(True)
    # the teacher's logits require grad, as they do when the teacher runs beside the student
    # without torch.no_grad: none of the loss's gradient may reach them
    t = t.clone().requires_grad_(True)
    loss = ns["distillation_loss"](s, t, y.clone(), case["T"], case["alpha"])
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError("distillation_loss should return a scalar tensor")
    grad, teacher_grad = None, None
    if loss.requires_grad:
        grad, teacher_grad = torch.autograd.grad(loss.reshape(()), (s, t), allow_unused=True)
    return {"loss": loss.detach().reshape(()), "grad": grad,
            "teacher_grad": None if teacher_grad is None else teacher_grad.abs().max()}


def grade_q3(case, got):
    from fmlab.compress import distillation_grad, distillation_loss
    s, t, y = _logits(case)
    T, alpha = case["T"], case["alpha"]
    expected = distillation_loss(s, t, y, T, alpha)
    value = expect_close(got["loss"], expected, atol=1e-8, rtol=1e-6, check_dtype=False,
                         what="the loss")
    if not value.passed:
        kl = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean")
        ce = F.cross_entropy(s, y)
        hints = {
            "without the T² factor": alpha * kl + (1 - alpha) * ce,
            "with the KL divergence the wrong way round, KL(student || teacher)":
                alpha * T**2 * F.kl_div(F.log_softmax(t / T, 1), F.softmax(s / T, 1),
                                        reduction="batchmean") + (1 - alpha) * ce,
        }
        for what, wrong in hints.items():
            loss = got["loss"]
            if isinstance(loss, torch.Tensor) and torch.allclose(loss.double(), wrong, rtol=1e-6):
                return Result.fail(f"{value.message}: it equals the loss {what}")
        return value
    if got["grad"] is None:
        return Result.fail("the loss is not differentiable with respect to the student's logits "
                           "(was it detached?)")
    leak = got.get("teacher_grad")
    if leak is not None and float(leak) > 0:
        return Result.fail("gradient flows into the teacher's logits (largest entry "
                           f"{float(leak):.2g}): the teacher is fixed, so detach its logits")
    return expect_close(got["grad"], distillation_grad(s, t, y, T, alpha), atol=1e-10, rtol=1e-6,
                        check_dtype=False, what="the gradient with respect to the student's logits")


CASES_Q3 = [
    {"name": "T = 4, alpha = 0.9", "n": 8, "k": 10, "T": 4.0, "alpha": 0.9},
    {"name": "T = 1, alpha = 0.5", "n": 6, "k": 5, "T": 1.0, "alpha": 0.5, "seed": 3},
    {"name": "T = 2, soft targets only (alpha = 1)", "n": 5, "k": 4, "T": 2.0, "alpha": 1.0,
     "seed": 6},
]


# ---------------------------------------------------------------------------------------------
# q4: fake quantization with a straight-through gradient
# ---------------------------------------------------------------------------------------------

def _reference_quantize_per_channel(w, bits=8, scheme="symmetric"):
    from fmlab.compress import quantize
    return tuple(quantize(w, bits, scheme, axis=0))


def _reference_dequantize_per_channel(q, scale, zero_point):
    from fmlab.compress import dequantize
    return dequantize(q, scale, zero_point, axis=0)


def run_q4(ns, case):
    w = _channel_weights(case)
    upstream = _randn(*case["shape"], seed=case.get("seed", 0) + 50)
    x = w.clone().requires_grad_(True)
    # The student's fake_quantize runs with reference versions of q2's functions, so that a
    # mistake in q2 does not cost points twice.
    saved = {k: ns.get(k) for k in ("quantize_per_channel", "dequantize_per_channel")}
    ns["quantize_per_channel"] = _reference_quantize_per_channel
    ns["dequantize_per_channel"] = _reference_dequantize_per_channel
    try:
        out = ns["fake_quantize"](x, case["bits"])
    finally:
        for k, v in saved.items():
            if v is None:
                ns.pop(k, None)
            else:
                ns[k] = v
    if not isinstance(out, torch.Tensor):
        raise TypeError("fake_quantize should return a tensor")
    grad = torch.autograd.grad((out * upstream).sum(), x)[0] if out.requires_grad else None
    return {"out": out.detach(), "grad": grad, "input_unchanged": torch.equal(x.detach(), w)}


def _only_ties(got, expected, w, bits) -> bool:
    """True when ``got`` differs from ``expected`` only by one step at values that sit halfway
    between two codes (w / scale and w * (1 / scale) can round those differently): at most one
    per channel, typically a channel's extreme value, which lands exactly on a half."""
    from fmlab.compress import quantize
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return False
    step = quantize(w, bits, "symmetric", axis=0).scale.view(-1, *[1] * (w.dim() - 1)).expand_as(w)
    diff = (got.double() - expected.double()).abs()
    off = diff > 1e-6 + 1e-5 * expected.double().abs()
    ties = off & ((diff - step.double()).abs() <= 1e-5 * step.double())
    return bool(torch.equal(off, ties)) and int(ties.sum()) <= w.shape[0]


def grade_q4(case, got):
    from fmlab.compress import fake_quantize
    w = _channel_weights(case)
    upstream = _randn(*case["shape"], seed=case.get("seed", 0) + 50)
    if not got["input_unchanged"]:
        return Result.fail("fake_quantize changed its input in place; return a new tensor")
    expected = fake_quantize(w, case["bits"], "symmetric", axis=0)
    value = expect_close(got["out"], expected, atol=1e-6, rtol=1e-5, what="the fake-quantized values")
    if not value.passed and _only_ties(got["out"], expected, w, case["bits"]) is False:
        return value
    if got["grad"] is None or not torch.any(got["grad"] != 0):
        return Result.fail("no gradient reaches the weight: round() has a zero derivative, so pass "
                           "the gradient straight through (w + (w_hat - w).detach())")
    return expect_close(got["grad"], upstream, atol=1e-6, rtol=1e-6,
                        what="the gradient (straight through: the upstream gradient, unchanged)")


CASES_Q4 = [
    {"name": "8 bits, a (6, 20) weight", "shape": [6, 20], "bits": 8},
    {"name": "2 bits, with all-positive and all-negative rows", "shape": [5, 12], "bits": 2,
     "positive_rows": True, "seed": 4},
]


# ---------------------------------------------------------------------------------------------
# q5: a sparse LeNet-300-100, trained in the child, evaluated in the parent
# ---------------------------------------------------------------------------------------------

def run_q5(ns, case):
    return train_in_child(ns, case, "train_sparse_model")


def grade_q5(case, got):
    from fmlab.data import load
    from fmlab.models import LeNet300100
    from fmlab.train import evaluate

    model, fits = load_into_reference(got, LeNet300100)
    if model is None:
        return fits
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    if zeros < case["sparsity"]:
        return Result.fail(f"only {zeros:.1%} of the Linear weights are exactly zero; at least "
                           f"{case['sparsity']:.0%} must be (keep the masks applied while you "
                           "retrain)")
    test = load("mnist", "test", source="embedded")  # 1,000 images the child never saw
    acc = evaluate(model, test).accuracy
    score, verdict = score_between(acc, case)
    return Result(score, f"{zeros:.1%} of the weights are zero; held-out accuracy {acc:.1%} on "
                         f"{len(test):,} images ({verdict})", scale=True)


QUESTIONS = [
    Question(id="q1", points=2, title="Global magnitude-pruning masks",
             requires=("global_magnitude_masks",), run=run_q1, grade=grade_q1,
             cases=lambda: CASES_Q1, timeout=20, forbid=PRUNING),
    Question(id="q2", points=3, title="Per-channel quantize and dequantize",
             requires=("quantize_per_channel", "dequantize_per_channel"), run=run_q2,
             grade=grade_q2, prepare=prepare_q2, cases=lambda: CASES_Q2, timeout=20,
             forbid=QUANTIZATION),
    Question(id="q3", points=3, title="The distillation loss", requires=("distillation_loss",),
             run=run_q3, grade=grade_q3, cases=lambda: CASES_Q3, timeout=20, forbid=DISTILLATION),
    Question(id="q4", points=2, title="Fake quantization with a straight-through gradient",
             requires=("fake_quantize",), run=run_q4, grade=grade_q4, cases=lambda: CASES_Q4,
             timeout=20, forbid=FAKE_QUANTIZATION),
    Question(id="q5", points=4, title="Prune LeNet-300-100 to 90% and keep its accuracy",
             requires=("train_sparse_model",), run=run_q5, grade=grade_q5,
             prepare=training_images("mnist", source="embedded"), timeout=120, forbid=PRUNING,
             cases=lambda: [{"name": "4,000 training images, 90% of the weights zero",
                             "n_train": 4000, "sparsity": 0.9, "full_at": 0.91,
                             "zero_at": 0.85}]),
]
