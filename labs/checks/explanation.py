"""Public checks of the explanation lab (labs/06_explanation.ipynb).

``run`` calls the student's function in the child process; ``grade`` computes the reference in
the parent with captum (q1, q2, q4) or with :mod:`fmlab.explain_eval` (q3). While the student's
code runs, fmlab's implementation of the same method is switched off, and in q1, q2 and q4
every captum attribution class too (``forbid=``), so importing the answer does not pass.

Models are named in the cases and built the same way on both sides from a seed:

* ``"gmp"``: the chapter's ``GlobalMaxCNN`` with random weights and random batch-norm
  statistics (its maps have both signs, so a missing ReLU shows);
* ``"avg"``: a plain CNN (``conv1``-ReLU-``conv2``-ReLU-average pooling-``fc``, no batch norm);
* ``"trained"``: a ``GlobalMaxCNN`` trained briefly on shapes by ``prepare`` in the parent
  (its weights travel in the case).

Inputs are ``shapes`` test images, made in the parent by ``prepare``.
"""
from __future__ import annotations

import functools
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from fmlab.grading import Question, Result, expect_close

# The master notebooks beside this folder: out of a graded answer's reach.
PRIVATE = ("../*.ipynb",)

# captum is imported before the grading sandbox closes (the parent's references use it, and
# its classes must exist to be switched off).
MODULES = ("captum.attr",)


# ---------------------------------------------------------------------------------------------
# Models and inputs, built the same way in the child and the parent
# ---------------------------------------------------------------------------------------------

def _architecture(name: str) -> nn.Module:
    from fmlab.explain import GlobalMaxCNN

    if name in ("gmp", "trained"):
        return GlobalMaxCNN(3, 4)
    if name == "avg":
        return nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(3, 8, 3, padding=1), relu1=nn.ReLU(),
            conv2=nn.Conv2d(8, 12, 3, stride=2, padding=1), relu2=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(12, 4)))
    raise ValueError(f"unknown model {name!r}")


def _build(case: dict) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(case.get("seed", 0))
        model = _architecture(case["model"])
        for m in model.modules():  # random statistics: eval-mode batch norm is not identity
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)
    if case.get("state") is not None:
        model.load_state_dict(case["state"])
    return model.eval()


@functools.lru_cache(maxsize=1)
def _trained_state() -> dict:
    """A GlobalMaxCNN after two epochs on 1,000 shapes images (trained in the parent)."""
    from fmlab.data import batches, load

    train = load("shapes", "train", n=1000)
    model = _build({"model": "trained"}).train()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        for xb, yb in batches(train.x, train.y, 32, generator=gen):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def _prepare(case: dict) -> dict:
    """Shapes test images (and their masks), the targets, and the trained weights if named."""
    from fmlab.data import load

    d = load("shapes", "test", n=case.get("offset", 0) + case["n"], seed=case.get("data_seed", 0))
    start = case.get("offset", 0)
    case["x"], case["masks"] = d.x[start:].clone(), d.masks[start:].clone()
    case["target"] = d.y[start:].clone() if case.get("target") != "other" else (d.y[start:] + 1) % 4
    if case["model"] == "trained":
        case["state"] = _trained_state()
    base = case.get("baseline", "black")
    if base == "black":
        case["baseline_x"] = torch.zeros_like(case["x"])
    elif base == "grey":
        case["baseline_x"] = torch.full_like(case["x"], 0.5)
    elif base == "noise":
        case["baseline_x"] = torch.rand(case["x"].shape, generator=torch.Generator().manual_seed(5))
    return case


def _logits(model, x, target):
    with torch.no_grad():
        return model(x).gather(1, target[:, None]).squeeze(1)


def _untouched(model: nn.Module) -> dict:
    return {"training": model.training,
            "grads": any(p.grad is not None for p in model.parameters())}


def _model_checks(got: dict) -> Result | None:
    if got.get("training"):
        return Result.fail("the model was handed over in eval mode and came back in train mode")
    if got.get("grads"):
        return Result.fail("your code left gradients on the model's parameters: differentiate "
                           "with torch.autograd.grad(score, inputs) instead of .backward()")
    return None


# ---------------------------------------------------------------------------------------------
# q1: integrated gradients with the right Riemann sum, and the completeness gap
# ---------------------------------------------------------------------------------------------

def run_q1(ns, case):
    model = _build(case)
    out = ns["integrated_gradients"](model, case["x"].clone(), case["target"].clone(),
                                     case["baseline_x"].clone(), case["steps"])
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError("integrated_gradients should return a pair (attributions, gap)")
    return {"attributions": out[0], "gap": out[1], **_untouched(model)}


def grade_q1(case, got):
    from captum.attr import IntegratedGradients

    bad = _model_checks(got)
    if bad:
        return bad
    model, x, t, base = _build(case), case["x"], case["target"], case["baseline_x"]
    ref = IntegratedGradients(model).attribute(x, baselines=base, target=t,
                                               n_steps=case["steps"], method="riemann_right")
    result = expect_close(got["attributions"], ref.detach(), atol=1e-5, rtol=1e-4,
                          what="the attributions")
    if not result.passed:
        return result
    rise = _logits(model, x, t) - _logits(model, base, t)
    gap = (ref.flatten(1).sum(1) - rise).abs()
    return expect_close(got["gap"], gap, atol=1e-4, rtol=1e-3,
                        what="the completeness gap |sum of attributions - (f(x) - f(x'))|")


# ---------------------------------------------------------------------------------------------
# q2: Grad-CAM on a named layer, at the layer's resolution
# ---------------------------------------------------------------------------------------------

def _hooks(model: nn.Module) -> int:
    """How many forward, forward-pre and backward hooks sit on the model's modules."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


def run_q2(ns, case):
    model = _build(case)
    before = _hooks(model)
    cam = ns["grad_cam"](model, case["x"].clone(), case["target"].clone(), case["layer"])
    for _ in range(2):  # called again on the same model, as a notebook or a loop would
        ns["grad_cam"](model, case["x"][:1].clone(), case["target"][:1].clone(), case["layer"])
    return {"cam": cam, "hooks_left": _hooks(model) - before, **_untouched(model)}


def grade_q2(case, got):
    from captum.attr import LayerGradCam

    bad = _model_checks(got)
    if bad:
        return bad
    if got.get("hooks_left"):
        return Result.fail(f"after three calls {got['hooks_left']} hook(s) are still registered "
                           "on the model, each keeping its tensors alive: remove every hook "
                           "you add (handle.remove(), in a finally block)")
    model = _build(case)
    ref = LayerGradCam(model, model.get_submodule(case["layer"])).attribute(
        case["x"], target=case["target"], relu_attributions=True)[:, 0].detach()  # (B, h, w)
    cam = got["cam"]
    if isinstance(cam, torch.Tensor) and cam.dim() == 4 and cam.shape[1] == 1:
        cam = cam[:, 0]  # (B, 1, h, w) is fine too
    return expect_close(cam, ref, atol=1e-5, rtol=1e-4, what=f"Grad-CAM on {case['layer']!r}")


# ---------------------------------------------------------------------------------------------
# q3: the pointing game and the mask mass
# ---------------------------------------------------------------------------------------------

def _prepare_maps(case: dict) -> dict:
    """Signed maps whose most negative value is often larger in size than the maximum."""
    gen = torch.Generator().manual_seed(case.get("seed", 0))
    b, h, w = case["n"], *case["size"]
    if case.get("source") == "ig":  # a real signed map: IG summed over colours
        from fmlab.explain import integrated_gradients

        case["model"] = "gmp"
        case = _prepare(case)
        ig = integrated_gradients(_build(case), case["x"], case["target"], steps=8)
        case["maps"] = ig.attributions.sum(1)
        return case
    maps = torch.randn(b, h, w, generator=gen)
    maps[:, 0, :] -= 4.0 * torch.rand(b, w, generator=gen)  # strong negative evidence
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    cy = torch.randint(0, h, (b, 1, 1), generator=gen)
    cx = torch.randint(0, w, (b, 1, 1), generator=gen)
    r = torch.randint(1, max(2, min(h, w) // 3), (b, 1, 1), generator=gen)
    masks = ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r)
    maps = maps + 1.5 * masks * torch.rand(b, 1, 1, generator=gen)
    if case.get("all_negative"):
        maps[0] = -maps[0].abs() - 0.1
    case["maps"], case["masks"] = maps, masks
    return case


def run_q3(ns, case):
    hits = ns["pointing_game"](case["maps"].clone(), case["masks"].clone())
    mass = ns["mask_mass"](case["maps"].clone(), case["masks"].clone())
    return {"hits": hits, "mass": mass}


def grade_q3(case, got):
    from fmlab.explain_eval import mask_mass, pointing_game

    hits, ref_hits = got["hits"], pointing_game(case["maps"], case["masks"])
    if not isinstance(hits, torch.Tensor) or hits.shape != ref_hits.shape:
        return Result.fail(f"pointing_game should return a tensor of {len(ref_hits)} bools, "
                           f"one per map; got {type(hits).__name__} "
                           f"{tuple(getattr(hits, 'shape', ()))}")
    wrong = (hits.bool() != ref_hits).nonzero().flatten().tolist()
    if wrong:
        i = wrong[0]
        return Result.fail(f"pointing_game is wrong for {len(wrong)} of {len(ref_hits)} maps, "
                           f"e.g. map {i}: got {bool(hits[i])}, expected {bool(ref_hits[i])} "
                           "(the maximum of the signed map, row-major; is it on the mask?)")
    return expect_close(got["mass"], mask_mass(case["maps"], case["masks"]), atol=1e-5,
                        rtol=1e-4, check_dtype=False, what="mask_mass")


# ---------------------------------------------------------------------------------------------
# q4: occlusion
# ---------------------------------------------------------------------------------------------

def run_q4(ns, case):
    model = _build(case)
    attr = ns["occlusion"](model, case["x"].clone(), case["target"].clone(), case["window"],
                           case["stride"])
    return {"attributions": attr, **_untouched(model)}


def grade_q4(case, got):
    from captum.attr import Occlusion

    bad = _model_checks(got)
    if bad:
        return bad
    model, x, w, s = _build(case), case["x"], case["window"], case["stride"]
    c = x.shape[1]
    ref = Occlusion(model).attribute(x, target=case["target"], sliding_window_shapes=(c, w, w),
                                     strides=(c, s, s), baselines=0.0,
                                     perturbations_per_eval=256)
    return expect_close(got["attributions"], ref.detach(), atol=1e-5, rtol=1e-4,
                        what=f"occlusion with window {w} and stride {s}")


QUESTIONS = [
    Question(
        id="q1", points=3, title="Integrated gradients and the completeness gap",
        requires=("integrated_gradients",), run=run_q1, grade=grade_q1, prepare=_prepare,
        timeout=30,
        forbid=("fmlab.explain.integrated_gradients", "fmlab.explain.quadrature",
                "fmlab.explain.input_gradient", "fmlab.explain.saliency",
                "captum.attr.*"),
        cases=lambda: [
            {"name": "random network, black baseline, 16 steps", "model": "gmp", "n": 4,
             "steps": 16},
            {"name": "trained network, grey baseline, 8 steps", "model": "trained", "n": 6,
             "steps": 8, "baseline": "grey", "offset": 10},
        ]),
    Question(
        id="q2", points=3, title="Grad-CAM on a named layer", requires=("grad_cam",),
        run=run_q2, grade=grade_q2, prepare=_prepare, timeout=30,
        forbid=("fmlab.explain.grad_cam", "captum.attr.*"),
        cases=lambda: [
            {"name": "random GlobalMaxCNN, features.block3", "model": "gmp", "n": 4,
             "layer": "features.block3"},
            {"name": "trained GlobalMaxCNN, features.block2", "model": "trained", "n": 4,
             "layer": "features.block2", "offset": 20},
        ]),
    Question(
        id="q3", points=2, title="The pointing game and the mask mass",
        requires=("pointing_game", "mask_mass"), run=run_q3, grade=grade_q3,
        prepare=_prepare_maps, timeout=20,
        forbid=("fmlab.explain_eval.pointing_game", "fmlab.explain_eval.mask_mass"),
        cases=lambda: [
            {"name": "signed maps, 6 x 9", "n": 12, "size": (6, 9), "seed": 1},
            {"name": "integrated gradients of shapes images", "source": "ig", "n": 8,
             "size": (32, 32)},
        ]),
    Question(
        id="q4", points=2, title="Occlusion", requires=("occlusion",), run=run_q4,
        grade=grade_q4, prepare=_prepare, timeout=30,
        forbid=("fmlab.explain.occlusion", "captum.attr.*"),
        cases=lambda: [
            {"name": "window 8, stride 8", "model": "gmp", "n": 2, "window": 8, "stride": 8},
            {"name": "window 6, stride 4 (the last window is cut at the border)",
             "model": "trained", "n": 2, "window": 6, "stride": 4, "offset": 30},
        ]),
]
