"""Public checks of the lab "Pre-training and fine-tuning" (labs/07_finetuning.ipynb, lab id
``finetuning``).

Format: fmlab/grading/spec.py; explained in book/instructors.md. ``run`` calls the student's
code in the child and returns plain data; ``grade`` computes every reference in the parent:
attention with ``F.scaled_dot_product_attention`` in float64, LoRA with the formula or with
peft's LoRA layer, freezing with ``fnmatch``, and the linear probe's accuracy on held-out
images with the chapter's cached pre-trained ViT. The library versions of each exercise are
switched off while the student's code runs (``forbid=``).
"""
from __future__ import annotations

import copy
import fnmatch
import functools
import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

from fmlab.grading import Question, Result, expect_close, expect_equal, expect_state_dict
from fmlab.grading.spec import describe
from fmlab.grading.trained import score_between

# The master notebooks beside this folder: out of a graded answer's reach.
PRIVATE = ("../*.ipynb",)

HAVE_PEFT = importlib.util.find_spec("peft") is not None
# Imported by the grading child before its sandbox closes, so that switching peft's layers
# off (forbid=) does not have to import it later. Where peft is not installed (Colab's bare
# install of fmlab) the child skips the import and the forbid list skips its names.
MODULES = ("peft",)
PEFT_LAYERS = ("peft.tuners.lora.layer.Linear", "peft.tuners.lora.layer.LoraLayer")


def _randn(g, *shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


# --- q1: scaled dot-product attention with a mask ----------------------------------------------

def prepare_q1(case):
    g = torch.Generator().manual_seed(case["seed"])
    dtype = getattr(torch, case.get("dtype", "float32"))
    batch = tuple(case.get("batch", (2,)))
    t, s, d = case["T"], case.get("S", case["T"]), case["d"]
    dv = case.get("dv", d)
    case["q"] = _randn(g, *batch, t, d, dtype=dtype, scale=case.get("scale", 1.0))
    case["k"] = _randn(g, *batch, s, d, dtype=dtype, scale=case.get("scale", 1.0))
    case["v"] = _randn(g, *batch, s, dv, dtype=dtype)
    kind = case.get("mask")
    if kind == "random":
        mask = torch.rand(t, s, generator=g) > 0.5
        mask[:, 0] = True  # every query sees at least one key
    elif kind == "causal":
        mask = torch.ones(t, s, dtype=torch.bool).tril()
    elif kind == "one_key":
        mask = torch.zeros(t, s, dtype=torch.bool)
        mask[torch.arange(t), torch.randint(0, s, (t,), generator=g)] = True
    else:
        mask = None
    case["mask_tensor"] = mask
    return case


def run_q1(ns, case):
    args = (case["q"].clone(), case["k"].clone(), case["v"].clone())
    if case["mask_tensor"] is None:
        return ns["scaled_dot_product_attention"](*args)
    return ns["scaled_dot_product_attention"](*args, mask=case["mask_tensor"].clone())


def grade_q1(case, got):
    q, k, v = case["q"], case["k"], case["v"]
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                              attn_mask=case["mask_tensor"]).to(q.dtype)
    tol = dict(atol=1e-10, rtol=1e-8) if q.dtype == torch.float64 else dict(atol=1e-5, rtol=1e-4)
    return expect_close(got, expected, **tol, check_dtype=True, what="the attention output")


# --- q2: LoRALinear ------------------------------------------------------------------------------

def prepare_q2(case):
    g = torch.Generator().manual_seed(case["seed"])
    n_in, n_out, r = case["in"], case["out"], case["r"]
    case["W"] = _randn(g, n_out, n_in, scale=0.3)
    case["b"] = _randn(g, n_out, scale=0.1) if case.get("bias", True) else None
    case["A"] = _randn(g, r, n_in, scale=0.3)
    case["B"] = _randn(g, n_out, r, scale=0.3)
    case["x"] = _randn(g, *case.get("batch", (5,)), n_in)
    return case


def _base(case) -> nn.Linear:
    base = nn.Linear(case["in"], case["out"], bias=case["b"] is not None)
    with torch.no_grad():
        base.weight.copy_(case["W"])
        if case["b"] is not None:
            base.bias.copy_(case["b"])
    return base


def run_q2(ns, case):
    base = _base(case)
    lora = ns["LoRALinear"](base, r=case["r"], alpha=case["alpha"])
    x = case["x"].clone()
    out = {}
    with torch.no_grad():
        out["init_output"] = lora(x)
    out["A_all_zero"] = bool((lora.A == 0).all())
    out["B_all_zero"] = bool((lora.B == 0).all())
    out["shapes"] = [list(lora.A.shape), list(lora.B.shape)]
    out["base_trainable"] = [n for n, p in base.named_parameters() if p.requires_grad]
    out["n_trainable"] = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    out["A_B_trainable"] = bool(lora.A.requires_grad and lora.B.requires_grad)
    with torch.no_grad():
        lora.A.copy_(case["A"])
        lora.B.copy_(case["B"])
        out["output"] = lora(x)
        merged = lora.merge()
        out["merged_type"] = f"{type(merged).__module__}.{type(merged).__qualname__}"
        out["merged_weight"] = merged.weight
        out["merged_bias"] = merged.bias
        out["merged_output"] = merged(x)
    out["base_weight_after"] = base.weight
    return out


def reference_q2(case):
    """(output with the case's A and B, merged weight): peft's LoRA layer when the case asks
    for it and peft is installed, the formula otherwise."""
    scale = case["alpha"] / case["r"]
    if case.get("reference") == "peft" and HAVE_PEFT:
        import peft

        class Wrapper(nn.Module):
            def __init__(self, fc):
                super().__init__()
                self.fc = fc

            def forward(self, x):
                return self.fc(x)

        config = peft.LoraConfig(r=case["r"], lora_alpha=case["alpha"], lora_dropout=0.0,
                                 target_modules=["fc"])
        model = peft.get_peft_model(Wrapper(_base(case)), config)
        layer = model.base_model.model.fc
        with torch.no_grad():
            layer.lora_A["default"].weight.copy_(case["A"])
            layer.lora_B["default"].weight.copy_(case["B"])
            output = model(case["x"])
            merged = model.merge_and_unload().fc.weight.detach().clone()
        return output, merged
    with torch.no_grad():
        delta = scale * case["B"] @ case["A"]  # (out, in)
        output = _base(case)(case["x"]) + case["x"] @ delta.T
        return output, case["W"] + delta


def grade_q2(case, got):
    if not isinstance(got, dict) or "output" not in got:
        return Result.fail(f"unexpected result {describe(got)}")
    n_in, n_out, r = case["in"], case["out"], case["r"]
    with torch.no_grad():
        base_out = _base(case)(case["x"])
    expected_out, expected_w = reference_q2(case)
    parts = []
    # 1. initialisation: B zero, A random, so the output is the base layer's
    if got["shapes"] != [[r, n_in], [n_out, r]]:
        parts.append(Result.fail(f"A and B have shapes {got['shapes']}, expected "
                                 f"A: {[r, n_in]} and B: {[n_out, r]}"))
    elif not got["B_all_zero"] or got["A_all_zero"]:
        parts.append(Result.fail("initialise B to zeros and A randomly (so that the output is "
                                 "unchanged at the start and the gradient of B is not zero)"))
    else:
        parts.append(expect_close(got["init_output"], base_out, atol=1e-6, rtol=1e-5,
                                  what="the output at initialisation (should equal the base layer's)"))
    # 2. what trains: A and B, not the base layer
    if got["base_trainable"]:
        parts.append(Result.fail(f"the base layer's {got['base_trainable']} still require gradients: "
                                 "freeze them"))
    elif not got["A_B_trainable"] or got["n_trainable"] != r * (n_in + n_out):
        parts.append(Result.fail(f"{got['n_trainable']} trainable values; expected A and B only, "
                                 f"r * (in + out) = {r * (n_in + n_out)}"))
    else:
        parts.append(Result.ok())
    # 3. the forward pass with given A and B
    parts.append(expect_close(got["output"], expected_out, atol=1e-5, rtol=1e-4,
                              what="the output with the given A and B"))
    # 4. merge(): a new nn.Linear with W + (alpha / r) B A, the base layer untouched
    if got["merged_type"] != "torch.nn.modules.linear.Linear":
        parts.append(Result.fail(f"merge() should return an nn.Linear, got {got['merged_type']}"))
    elif not torch.equal(got["base_weight_after"], case["W"]):
        parts.append(Result.fail("merge() changed the wrapped layer's weight; return a new layer"))
    else:
        merged = expect_close(got["merged_weight"], expected_w, atol=1e-5, rtol=1e-4,
                              what="the merged weight")
        if merged.passed:
            merged = expect_close(got["merged_output"], expected_out, atol=1e-5, rtol=1e-4,
                                  what="the merged layer's output")
        if merged.passed and case["b"] is not None:
            merged = expect_close(got["merged_bias"], case["b"], what="the merged bias")
        parts.append(merged)
    # the update's forward pass and its merge are the question's heart: they weigh double
    weights = (1, 1, 2, 2)
    score = sum(w * p.score for w, p in zip(weights, parts)) / sum(weights)
    failed = [p.message for p in parts if not p.passed]
    return Result(score, "; ".join(failed) if failed else "ok")


# --- q3: freezing by name pattern -----------------------------------------------------------------

def _model_q3(case) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(case.get("seed", 0))
        if case["model"] == "vit":
            from fmlab.models import ViT
            model = ViT(1, 5, 28, dim=16, depth=3, heads=2)
        else:
            model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.LayerNorm(8),
                                  nn.Linear(8, 3))
    start = case.get("start", "trainable")
    for i, (name, p) in enumerate(model.named_parameters()):
        p.requires_grad_(start == "trainable" or (start == "mixed" and i % 2 == 0))
    return model


def run_q3(ns, case):
    model = _model_q3(case)
    count = ns["freeze"](model, list(case["patterns"]))
    return {"count": count, "trainable": [n for n, p in model.named_parameters() if p.requires_grad]}


def grade_q3(case, got):
    if not isinstance(got, dict):
        return Result.fail(f"unexpected result {describe(got)}")
    model = _model_q3(case)
    names = [n for n, _ in model.named_parameters()
             if any(fnmatch.fnmatchcase(n, pat) for pat in case["patterns"])]
    count = sum(p.numel() for n, p in model.named_parameters() if n in names)
    if got["trainable"] != names:
        extra = sorted(set(got["trainable"]) - set(names))
        missing = sorted(set(names) - set(got["trainable"]))
        return Result.fail(f"with patterns {case['patterns']}: these should be frozen: "
                           f"{extra[:4]}; these should be trainable: {missing[:4]}")
    if type(got["count"]) is not int:
        return Result.fail(f"return the number of trainable values as an int, got {describe(got['count'])}")
    return expect_equal(got["count"], count, what="the number of trainable values (elements, "
                                                  "not tensors)")


# --- q4: a linear probe, evaluated on held-out images -------------------------------------------

@functools.lru_cache(maxsize=1)
def _source():
    """The chapter's pre-trained ViT (quick-profile size, embedded MNIST), from the cache."""
    from fmlab import pretrain
    model = pretrain.pretrained("supervised", sizes=pretrain.SIZES["quick"], mnist="embedded")
    return dict(model.config), {k: v.clone() for k, v in model.state_dict().items()}


def _backbone(config, state):
    from fmlab.models import ViT
    model = ViT(**config)
    model.load_state_dict(state)
    return model.eval()


def prepare_q4(case):
    from fmlab import finetune as ft
    case["config"], case["state"] = _source()
    pool = ft.target_task("mnist-5-9", "train", mnist="embedded")
    train, _ = ft.few_shot(pool, case["k"], case["seed"], val_fraction=0)
    case["x"], case["y"] = train.x, train.y
    return case


def run_q4(ns, case):
    from fmlab.data import Dataset
    backbone = _backbone(case["config"], case["state"])
    train = Dataset(case["x"].clone(), case["y"].clone(), [str(d) for d in range(5, 10)],
                    "mnist-5-9")
    head = ns["train_probe"](backbone, train)
    if not isinstance(head, nn.Linear):
        raise TypeError(f"train_probe should return the trained nn.Linear head, got "
                        f"{type(head).__name__}")
    changed = [k for k, v in backbone.state_dict().items()  # a replaced head is allowed
               if k in case["state"] and not k.startswith("head.")
               and not torch.equal(v, case["state"][k])]
    return {"head": dict(head.state_dict()), "backbone_changed": changed}


def grade_q4(case, got):
    from fmlab import finetune as ft
    backbone = _backbone(case["config"], case["state"])
    if not isinstance(got, dict) or "head" not in got:
        return Result.fail(f"unexpected result {describe(got)}")
    if got["backbone_changed"]:
        names = got["backbone_changed"]
        return Result.fail(f"the backbone's weights changed ({len(names)} tensors, e.g. "
                           f"{names[0]!r}): a linear probe trains the head only; freeze the "
                           "backbone or train on its features")
    got = got["head"]
    head = nn.Linear(case["config"]["dim"], 5)
    fits = expect_state_dict(got, head, what=f"the returned head (an nn.Linear({case['config']['dim']}, 5))")
    if not fits.passed:
        return fits
    test = ft.target_task("mnist-5-9", "test", mnist="embedded")  # never handed to the child
    with torch.no_grad():
        acc = (head(ft.features(backbone, test.x)).argmax(1) == test.y).float().mean().item()
    score, verdict = score_between(acc, case)
    return Result(score, f"held-out accuracy {acc:.1%} on {len(test)} images ({verdict})", scale=True)


QUESTIONS = [
    Question(
        id="q1", points=3, title="Scaled dot-product attention with a mask",
        requires=("scaled_dot_product_attention",), run=run_q1, grade=grade_q1,
        prepare=prepare_q1, timeout=10,
        forbid=("torch.nn.functional.scaled_dot_product_attention", "torch.nn.MultiheadAttention",
                "torch.nn.functional.multi_head_attention_forward", "fmlab.models.attention",
                "fmlab.models.MultiHeadAttention"),
        cases=lambda: [
            # scores in the hundreds: exp() overflows unless the row's maximum is subtracted
            {"name": "no mask, large scores", "seed": 0, "batch": (2,), "T": 4, "d": 8,
             "scale": 12.0},
            {"name": "a boolean mask, large scores", "seed": 1, "batch": (2, 3), "T": 5, "d": 6,
             "mask": "random", "scale": 12.0},
            {"name": "more keys than queries", "seed": 2, "T": 3, "S": 6, "d": 4, "dv": 5,
             "mask": "random"},
        ]),
    Question(
        id="q2", points=3, title="A LoRA layer with merge()", requires=("LoRALinear",),
        run=run_q2, grade=grade_q2, prepare=prepare_q2, timeout=10,
        forbid=("fmlab.finetune.LoRALinear", "fmlab.finetune.add_lora", "fmlab.finetune.merge_lora",
                *PEFT_LAYERS),
        cases=lambda: [
            {"name": "r = 2, alpha = 4", "seed": 0, "in": 6, "out": 4, "r": 2, "alpha": 4.0},
            {"name": "r = 3, alpha = 1", "seed": 1, "in": 5, "out": 7, "r": 3, "alpha": 1.0},
        ]),
    Question(
        id="q3", points=2, title="Freezing by name pattern", requires=("freeze",),
        run=run_q3, grade=grade_q3, timeout=10,
        forbid=("fmlab.finetune.freeze", "fmlab.finetune.count_trainable"),
        cases=lambda: [
            {"name": "the head only", "model": "vit", "patterns": ["head.*"]},
            {"name": "the last block and the head", "model": "vit",
             "patterns": ["blocks.2.*", "head.*"]},
            {"name": "every bias", "model": "vit", "patterns": ["*.bias"]},
        ]),
    Question(
        id="q4", points=3, title="A linear probe with 10 labels per class",
        requires=("train_probe",), run=run_q4, grade=grade_q4, prepare=prepare_q4, timeout=60,
        forbid=("fmlab.finetune.adapt", "fmlab.finetune.features", "fmlab.finetune.build"),
        cases=lambda: [
            {"name": "10 labels per class", "k": 10, "seed": 0, "full_at": 0.60, "zero_at": 0.35},
        ]),
]
