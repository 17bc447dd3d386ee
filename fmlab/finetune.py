"""Adapting a pre-trained model with few labels: freezing, a linear probe, LoRA, prompt tuning,
adapters, BitFit.

Explained in book/07_finetuning.ipynb. The source model comes from :mod:`fmlab.pretrain`.
:func:`adapt` trains one of :data:`METHODS` on a target task with :func:`fmlab.train.fit`,
stopping early on a validation split that :func:`few_shot` carves from the training labels:

* ``scratch``: a freshly initialised ViT of the same shape, all weights trained;
* ``probe``: the pre-trained model frozen, a new linear head trained on its features;
* ``full``: every weight trained, starting from the pre-trained ones;
* ``last``: all frozen but the last block(s), the final norm and the new head;
* ``lora``: frozen weights, low-rank adapters on the attention projections (Hu et al. 2022);
* ``prompt``: frozen weights, learned prompt tokens (Lester et al. 2021; Jia et al. 2022);
* ``adapter``: frozen weights, a bottleneck adapter after each block's attention and MLP
  (Houlsby et al. 2019);
* ``bitfit``: frozen weights but the bias terms, which are trained (Ben Zaken et al. 2022).

``probe``, ``lora``, ``prompt`` and ``adapter`` never write to the source weights, so removing
the adaptation gives back the source model exactly; ``full``, ``last`` and ``bitfit`` overwrite
some or all of them.
"""
from __future__ import annotations

import copy
import fnmatch
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import data as fdata
from .models import ViT
from .pretrain import split_classes
from .runtime import device, seed_everything
from .train import EarlyStopping, History, evaluate, fit

# Sizes of book/07_finetuning.ipynb (read with ``profile().pick(SIZES)``); the ViT's own
# shape and pre-training schedule are pretrain.SIZES.
SIZES = {
    "quick": {"shots": [1, 10, None], "seeds": [0, 1],
              # (optimizer steps, batch size) for each number of labels per class
              "budget": {1: (20, 32), 10: (20, 32), None: (30, 64)},
              "patience_steps": 15, "ranks": [1, 4, 16], "rank_shots": 10,
              "timing_n": 128, "timing_repeats": 2},
    "full": {"shots": [1, 5, 10, 50, None], "seeds": [0, 1, 2, 3, 4],
             "budget": {1: (50, 32), 5: (100, 32), 10: (150, 64), 50: (400, 128),
                        None: (1500, 256)},
             "patience_steps": 100, "ranks": [1, 2, 4, 8, 16, 32], "rank_shots": 50,
             "timing_n": 2048, "timing_repeats": 3},
    "smoke": {"shots": [1, 10, None], "seeds": [0], "ranks": [1, 4], "rank_shots": 10,
              "budget": {1: (2, 32), 10: (2, 32), None: (2, 64)}, "timing_n": 128,
              "timing_repeats": 1},
}

METHODS = ("scratch", "probe", "full", "last", "lora", "prompt", "adapter", "bitfit")

# Settings fixed in advance, one per method, and never tuned on test data (the learning rate
# of training from scratch was chosen among 3e-3, 1e-3 and 5e-4 on validation accuracy; those
# of adapters and BitFit among 1e-3, 2e-3, 5e-3, 1e-2, 2e-2 and 5e-2, on the mean validation
# accuracy of both targets, 10 and all labels per class, two seeds).
# Adapters and prompts start near zero and get a larger step; so does a lone linear head.
HYPER = {
    "scratch": {"lr": 1e-3}, "probe": {"lr": 1e-2, "step_factor": 5}, "full": {"lr": 1e-3},
    "last": {"lr": 2e-3}, "lora": {"lr": 5e-3, "r": 4, "alpha": 8.0},
    "prompt": {"lr": 1e-2, "prompts": 4}, "adapter": {"lr": 2e-2, "bottleneck": 4},
    "bitfit": {"lr": 2e-2},
}
LORA_TARGETS = ("blocks.*.attn.qkv", "blocks.*.attn.proj")
# Houlsby et al.'s places: the output of each block's attention and of its MLP (their last
# Linear), before the residual sum.
ADAPTER_TARGETS = ("blocks.*.attn.proj", "blocks.*.mlp.2")
BITFIT_TRAINABLE = ("*.bias", "head.*")  # every bias term, and the new head


# --- target tasks ---------------------------------------------------------------------------

def target_task(name: str, split: str, image_size: int = 28, mnist: str = "auto"
                ) -> fdata.Dataset:
    """``"mnist-5-9"``: MNIST digits 5–9, labels 0–4 (new classes, the source's domain).
    ``"digits"``: scikit-learn's 8×8 digits, all ten classes, resized to 20×20 and padded to
    28×28 like MNIST's framing (other writers, another resolution: a shift of domain).
    ``mnist`` is the ``source`` of :func:`fmlab.data.load`."""
    if name == "mnist-5-9":
        return split_classes(fdata.load("mnist", split, source=mnist), range(5, 10))
    if name == "digits":
        d = fdata.load("digits", split)
        inner = image_size * 5 // 7  # MNIST: a 20×20 box inside 28×28
        x = F.interpolate(d.x, size=(inner, inner), mode="bilinear", align_corners=False)
        pad = (image_size - inner) // 2
        x = F.pad(x, (pad, image_size - inner - pad) * 2).clamp(0, 1)  # (N, 1, 28, 28)
        return fdata.Dataset(x, d.y, d.classes, "digits-28")
    raise ValueError(f"unknown target {name!r}; choose 'mnist-5-9' or 'digits'")


def few_shot(data: fdata.Dataset, k: int | None, seed: int, val_fraction: float = 0.2
             ) -> tuple[fdata.Dataset, fdata.Dataset | None]:
    """``k`` labelled examples per class (``None``: all), drawn with ``seed``, split into a
    training and a validation part: ``round(val_fraction * k)`` per class, at least one, go to
    validation. With ``k = 1`` (or ``val_fraction=0``) nothing is held out: the validation
    part is ``None``."""
    g = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c in range(len(data.classes)):
        idx = (data.y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)][:k]
        n_val = 0 if len(idx) < 2 or val_fraction <= 0 else max(1, round(val_fraction * len(idx)))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])

    def pick(parts: list[torch.Tensor]) -> fdata.Dataset:
        i = torch.cat(parts)
        i = i[torch.randperm(len(i), generator=g)]  # classes mixed, not in blocks
        return fdata.Dataset(data.x[i], data.y[i], data.classes, data.name)

    val = pick(val_idx) if sum(map(len, val_idx)) else None
    return pick(train_idx), val


# --- freezing ---------------------------------------------------------------------------------

def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def freeze(model: nn.Module, trainable=()) -> int:
    """Freeze every parameter except those whose name matches one of the glob patterns in
    ``trainable`` (``fnmatch``: ``"head.*"``, ``"blocks.2.*"``); return how many parameter
    values are left trainable."""
    for name, p in model.named_parameters():
        p.requires_grad_(any(fnmatch.fnmatchcase(name, pat) for pat in trainable))
    return count_trainable(model)


# --- LoRA -------------------------------------------------------------------------------------

class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (Hu et al. 2022):

        y = W x + b + (alpha / r) · B A x,   A: (r, in), B: (out, r).

    A starts random (Kaiming-uniform, as peft), B at zero, so at initialisation the output is
    exactly the base layer's. ``merge()`` returns a plain ``nn.Linear`` with weight
    W + (alpha/r)·BA; the base layer itself is never modified.
    """

    def __init__(self, base: nn.Linear, r: int = 4, alpha: float = 8.0):
        super().__init__()
        if r < 1:
            raise ValueError(f"the rank r must be at least 1, got {r}")
        self.base, self.r, self.alpha = base, r, alpha
        self.scale = alpha / r
        for p in base.parameters():
            p.requires_grad_(False)
        self.A = nn.Parameter(torch.empty(r, base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.A.T @ self.B.T) * self.scale  # (…, out)

    def delta(self) -> torch.Tensor:
        return self.scale * self.B @ self.A  # (out, in), the update to W

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        merged = copy.deepcopy(self.base)
        merged.weight += self.delta()
        return merged


def add_lora(model: nn.Module, targets=LORA_TARGETS, r: int = 4, alpha: float = 8.0) -> list[str]:
    """Wrap every ``nn.Linear`` whose name matches a pattern of ``targets`` in a
    :class:`LoRALinear`; return their names. Freeze the rest yourself (:func:`freeze`)."""
    return _wrap_linears(model, targets, lambda base: LoRALinear(base, r, alpha))


def _wrap_linears(model: nn.Module, targets, wrap) -> list[str]:
    """Replace every ``nn.Linear`` whose name matches a pattern of ``targets`` by
    ``wrap(linear)``; return their names."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
             and any(fnmatch.fnmatchcase(n, t) for t in targets)]
    if not names:
        raise ValueError(f"no nn.Linear in the model matches {targets}")
    for n in names:
        model.set_submodule(n, wrap(model.get_submodule(n)))
    return names


def _unwrap(model: nn.Module, kind: type) -> None:
    """Replace each ``kind`` wrapper by its untouched ``base`` layer."""
    for n, m in [(n, m) for n, m in model.named_modules() if isinstance(m, kind)]:
        model.set_submodule(n, m.base)


def merge_lora(model: nn.Module) -> dict[str, LoRALinear]:
    """Replace each adapter by its merged ``nn.Linear`` (no extra cost at inference); return
    the adapters taken out, for :func:`unmerge_lora`."""
    adapters = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    for n, m in adapters.items():
        model.set_submodule(n, m.merge())
    return adapters


def unmerge_lora(model: nn.Module, adapters: dict[str, LoRALinear]) -> None:
    """Put the adapters that :func:`merge_lora` took out back in place."""
    for n, m in adapters.items():
        model.set_submodule(n, m)


def remove_lora(model: nn.Module) -> None:
    """Replace each adapter by its untouched base layer: the source model, bit for bit."""
    _unwrap(model, LoRALinear)


# --- adapters ---------------------------------------------------------------------------------

class AdapterLinear(nn.Module):
    """A frozen ``nn.Linear`` followed by a bottleneck adapter (Houlsby et al. 2019):

        h = W x + b,   y = h + W_up f(W_down h + b_down) + b_up,

    W_down: (m, out), W_up: (out, m), f = GELU. W_up and b_up start at zero, so at
    initialisation the output is exactly the base layer's; ``base`` is never modified.
    Per adapter: 2·m·out + m + out parameters.
    """

    def __init__(self, base: nn.Linear, bottleneck: int = 4):
        super().__init__()
        if bottleneck < 1:
            raise ValueError(f"the bottleneck must be at least 1, got {bottleneck}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.down = nn.Linear(base.out_features, bottleneck)
        self.up = nn.Linear(bottleneck, base.out_features)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)  # (…, out)
        return h + self.up(F.gelu(self.down(h)))  # (…, out), through an (…, m) bottleneck


def add_adapters(model: nn.Module, targets=ADAPTER_TARGETS, bottleneck: int = 4) -> list[str]:
    """Follow every ``nn.Linear`` whose name matches a pattern of ``targets`` by an adapter
    (:class:`AdapterLinear`); return their names. Freeze the rest yourself (:func:`freeze`)."""
    return _wrap_linears(model, targets, lambda base: AdapterLinear(base, bottleneck))


def remove_adapters(model: nn.Module) -> None:
    """Replace each adapter by its untouched base layer: the source model, bit for bit."""
    _unwrap(model, AdapterLinear)


# --- prompt tuning ----------------------------------------------------------------------------

class PromptTuned(nn.Module):
    """A :class:`ViT` with ``n`` learned prompt tokens inserted after the class token (VPT-
    shallow, Jia et al. 2022; Lester et al. 2021 prepend them to a language model's input).
    The ViT's own head moves to ``self.head``; ``self.vit`` is left otherwise untouched."""

    def __init__(self, vit: ViT, n: int = 4):
        super().__init__()
        self.vit, self.head = vit, vit.head
        vit.head = nn.Identity()
        dim = vit.pos_embed.shape[-1]
        self.prompts = nn.Parameter(torch.randn(1, n, dim) * 0.02)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.embed(x)  # (B, 1 + N, D)
        prompts = self.prompts.expand(len(x), -1, -1)  # (B, n, D)
        tokens = torch.cat([tokens[:, :1], prompts, tokens[:, 1:]], 1)  # (B, 1 + n + N, D)
        return self.vit.encode(tokens)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def remove(self) -> ViT:
        """The ViT without prompts, with this head."""
        self.vit.head = self.head
        return self.vit


# --- adaptation -------------------------------------------------------------------------------

@dataclass
class Adapted:
    """One adaptation run: the model (its ``head`` is the new task's), the trainable and
    total parameter counts, and the training history."""

    method: str
    model: nn.Module
    trainable: int
    total: int
    history: History


@torch.no_grad()
def features(model: ViT, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The class-token features (N, D) of a frozen model, in eval mode."""
    model.eval()
    return torch.cat([model.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def build(method: str, source: ViT, num_classes: int, seed: int = 0, **hyper) -> nn.Module:
    """The model ``method`` trains: a copy of ``source`` with a new head, frozen as the method
    says (the source itself is not touched)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    h = {**HYPER[method], **hyper}
    seed_everything(seed)
    if method == "scratch":
        return ViT(**{**source.config, "num_classes": num_classes})
    model = copy.deepcopy(source).cpu()
    model.head = nn.Linear(model.head.in_features, num_classes)
    if method == "full":
        freeze(model, ("*",))
    elif method == "probe":
        freeze(model, ("head.*",))
    elif method == "last":
        last = [f"blocks.{len(model.blocks) - 1 - i}.*" for i in range(h.get("blocks", 1))]
        freeze(model, (*last, "norm.*", "head.*"))
    elif method == "lora":
        freeze(model, ())
        add_lora(model, h.get("targets", LORA_TARGETS), h["r"], h["alpha"])
        model.head.requires_grad_(True)
    elif method == "adapter":
        freeze(model, ())
        add_adapters(model, h.get("targets", ADAPTER_TARGETS), h["bottleneck"])
        model.head.requires_grad_(True)
    elif method == "bitfit":
        freeze(model, BITFIT_TRAINABLE)
    else:
        freeze(model, ())
        model = PromptTuned(model, h["prompts"])
        model.head.requires_grad_(True)
    return model


def adapt(method: str, source: ViT, train: fdata.Dataset, val: fdata.Dataset | None, *,
          steps: int, batch_size: int = 64, patience_steps: int = 20, seed: int = 0,
          **hyper) -> Adapted:
    """Train ``method`` on ``train`` for about ``steps`` optimizer steps with Adam, keeping
    the weights of the epoch with the lowest validation loss (no early stopping without
    ``val``). The linear probe trains its head on precomputed features: same result as
    running the frozen model every step, for a fraction of the cost."""
    h = {**HYPER[method], **hyper}
    num_classes = len(train.classes)
    model = build(method, source, num_classes, seed, **hyper).to(device())
    steps *= h.get("step_factor", 1)  # the probe's steps are cheap: it sees features only
    bs = min(batch_size, len(train))
    per_epoch = math.ceil(len(train) / bs)
    epochs = max(1, math.ceil(steps / per_epoch))
    stop = EarlyStopping(patience=max(2, math.ceil(patience_steps / per_epoch)),
                         metric="val_loss") if val is not None else None
    opt = lambda params: torch.optim.Adam([p for p in params if p.requires_grad], lr=h["lr"])
    fit_kw = dict(epochs=epochs, optimizer=opt, batch_size=bs, early_stopping=stop, seed=seed,
                  progress=False, device=device())
    if method == "probe":
        feats = lambda d: None if d is None else fdata.Dataset(
            features(model, d.x.to(device())), d.y, d.classes, d.name)
        history = fit(model.head, feats(train), feats(val), **fit_kw)
    else:
        history = fit(model, train, val, **fit_kw)
    model.eval()
    total = sum(p.numel() for p in model.parameters())
    return Adapted(method, model, count_trainable(model), total, history)


@torch.no_grad()
def accuracy_with_head(model: nn.Module, head: nn.Module, data: fdata.Dataset) -> float:
    """Accuracy on ``data`` of ``model`` with its head swapped for ``head`` (e.g. the source
    task's, to measure forgetting); the model's own head is put back."""
    own = model.head
    model.head = head
    try:
        return evaluate(model, data).accuracy
    finally:
        model.head = own
