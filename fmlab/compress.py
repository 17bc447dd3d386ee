"""Compression: magnitude pruning (unstructured, and of whole filters) and distillation.

Explained in book/05_compression.ipynb. Quantization (:mod:`fmlab.quantize`) and the
measurements of bytes, multiply-accumulates and latency (:mod:`fmlab.measure`) are re-exported
here, so ``from fmlab import compress`` holds the whole chapter.

Pruning keeps a 0/1 mask per layer as a *parametrization* of the layer's weight: the layer
computes with ``weight * mask``, and training updates the float weight underneath, whose masked
entries get a zero gradient and so stay out of the model. :func:`make_permanent` writes the
zeros into the weight and drops the masks. Zeros in a dense tensor save no bytes and no time
by themselves: :func:`packed_state` stores them as a bit mask (plus int8 codes), and only
:func:`prune_filters`, which removes whole filters, makes the layers smaller and faster.
"""
from __future__ import annotations

import copy
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .data import Dataset, batches
from .measure import (PRUNABLE, count_macs, median_latency, packed_state, saved_bytes,  # noqa: F401
                      unpack_state)
from .quantize import (FakeQuant, IntegerMLP, Quantized, add_fake_quant, dequantize,  # noqa: F401
                       fake_quantize, fixed_point_multiplier, integer_linear, make_permanent,
                       prunable, qparams, qrange, quantize, quantize_with, share_weights, torchao_int8,
                       weights_quantized)
from .runtime import device as default_device
from .train import train_one_epoch

# Sizes of book/05_compression.ipynb (read with ``profile().pick(SIZES)``).
SIZES = {
    "quick": {
        "cnn": "twoconv", "teacher": "twoconv", "teacher_widths": None,
        "epochs": 3, "mlp_epochs": 8, "lr": 2e-3, "batch_size": 64,
        "sparsities": [0.75, 0.917, 0.95, 0.98], "retrain_epochs": 1,
        "retrain_lr": 1e-3, "cnn_sparsities": [0.5, 0.9], "cnn_retrain_epochs": 1,
        "cnn_methods": ["no retraining", "iterative"],
        "table_sparsity": 0.9, "ticket_sparsity": 0.95, "ticket_epochs": 4, "seeds": [0, 1, 2],
        "filter_amount": 0.5, "filter_retrain_epochs": 1,
        "qat_bits": [4, 2], "qat_epochs": 1, "qat_lr": 5e-4,
        "student_hidden": 40, "student_epochs": 10, "T": 8.0, "alpha": 0.9,
        "combo_sparsity": 0.75, "combo_epochs": 5,
        "latency_batches": [1, 256], "latency_repeats": 3, "threads": 1,
    },
    "full": {  # full MNIST on a GPU: a ResNet teacher, longer training and retraining
        "cnn": "twoconv", "teacher": "resnet", "teacher_widths": [48, 96, 192],
        "epochs": 15, "mlp_epochs": 30, "lr": 1e-3, "batch_size": 128,
        "sparsities": [0.5, 0.75, 0.9, 0.917, 0.95, 0.98], "retrain_epochs": 4,
        "retrain_lr": 5e-4, "cnn_sparsities": [0.5, 0.8, 0.9, 0.95], "cnn_retrain_epochs": 3,
        "cnn_methods": ["no retraining", "one-shot", "iterative"],
        "table_sparsity": 0.9, "ticket_sparsity": 0.95, "ticket_epochs": 30,
        "seeds": [0, 1, 2, 3, 4], "filter_amount": 0.5, "filter_retrain_epochs": 5,
        "qat_bits": [8, 4, 2], "qat_epochs": 4, "qat_lr": 2e-4,
        "student_hidden": 40, "student_epochs": 40, "T": 8.0, "alpha": 0.9,
        "combo_sparsity": 0.75, "combo_epochs": 10,
        "latency_batches": [1, 256], "latency_repeats": 15, "threads": 1,
    },
    # FMLAB_SMOKE=1: the same code paths with a token amount of training
    # (a narrower ResNet teacher, still 10x the narrower student, and the two sparsities
    # the chapter looks up by value)
    "smoke": {"teacher_widths": [16, 32, 64], "student_hidden": 6,
              "sparsities": [0.917, 0.95],
              "cnn_sparsities": [0.9],
              "epochs": 1, "mlp_epochs": 1, "retrain_epochs": 1, "cnn_retrain_epochs": 1,
              "ticket_epochs": 1, "seeds": [0, 1], "filter_retrain_epochs": 1, "qat_epochs": 1,
              "student_epochs": 1, "combo_epochs": 1, "latency_repeats": 1},
}


# ---------------------------------------------------------------------------------------------
# Unstructured magnitude pruning
# ---------------------------------------------------------------------------------------------

class Mask(nn.Module):
    """A parametrization: the layer computes with ``weight * mask``."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def _count(amount: float | int, n: int) -> int:
    """How many of ``n`` weights ``amount`` prunes: a fraction (rounded as torch.nn.utils.prune
    rounds, half to even) or a count."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise TypeError(f"amount must be a fraction in [0, 1] or a count, got {amount!r}")
    if isinstance(amount, int):
        if not 0 <= amount <= n:
            raise ValueError(f"cannot prune {amount} of {n} weights")
        return amount
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"amount {amount} is not a fraction in [0, 1] (pass an int to prune a count)")
    return round(amount * n)


def _smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A 0/1 mask of ``scores``' shape that is 0 at its ``k`` smallest entries."""
    keep = torch.ones(scores.numel(), device=scores.device)
    if k:
        keep[torch.topk(scores.flatten(), k, largest=False).indices] = 0
    return keep.view_as(scores)


def magnitude_masks(model: nn.Module, amount: float | int, scope: str = "global") -> dict[str, torch.Tensor]:
    """Masks that zero the ``amount`` smallest weights by magnitude ``|w|``: across all
    prunable layers together (``scope="global"``) or the same fraction of each (``"layer"``).

    Already-pruned weights are zeros, so they are the first to go: a larger ``amount`` keeps a
    subset of what a smaller one kept.
    """
    layers = prunable(model)
    if not layers:
        raise ValueError("the model has no Linear or Conv2d layer to prune")
    scores = {name: m.weight.detach().abs() for name, m in layers.items()}
    if scope == "layer":
        return {name: _smallest(s, _count(amount, s.numel())) for name, s in scores.items()}
    if scope != "global":
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    flat = torch.cat([s.flatten() for s in scores.values()])  # in the order of named_modules
    keep = _smallest(flat, _count(amount, flat.numel()))
    sizes = [s.numel() for s in scores.values()]
    return {name: piece.view_as(s) for (name, s), piece in zip(scores.items(), keep.split(sizes))}


def n_m_masks(model: nn.Module, n: int = 2, m: int = 4) -> dict[str, torch.Tensor]:
    """Semi-structured N:M masks: in every group of ``m`` consecutive weights of a row (along
    the inputs), keep the ``n`` of largest magnitude. 2:4 (half the weights) is the pattern
    NVIDIA's sparse tensor cores skip in hardware (Mishra et al. 2021).

    >>> layer = nn.Linear(8, 2)
    >>> mask = n_m_masks(nn.Sequential(layer))["0"]
    >>> mask.view(2, 2, 4).sum(-1).tolist()
    [[2.0, 2.0], [2.0, 2.0]]
    """
    if not 0 < n < m:
        raise ValueError(f"keep n of every m weights with 0 < n < m, got n={n}, m={m}")
    masks = {}
    for name, layer in prunable(model).items():
        rows = layer.weight.detach().reshape(layer.weight.shape[0], -1)  # (out, inputs)
        if rows.shape[1] % m:
            raise ValueError(f"{name}: {rows.shape[1]} inputs per row do not split into groups of {m}")
        groups = rows.abs().reshape(rows.shape[0], -1, m)  # (out, inputs / m, m)
        keep = torch.zeros_like(groups).scatter_(-1, groups.topk(n, dim=-1).indices, 1.0)
        masks[name] = keep.reshape(layer.weight.shape)
    return masks


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Make each named layer compute with ``weight * mask`` (replacing an earlier mask)."""
    layers = prunable(model)
    for name, mask in masks.items():
        if name not in layers:
            raise KeyError(f"the model has no prunable layer called {name!r}; it has {sorted(layers)}")
        layer = layers[name]
        mask = mask.to(layer.weight.device, layer.weight.dtype)
        if tuple(mask.shape) != tuple(layer.weight.shape):
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, "
                             f"its weight {tuple(layer.weight.shape)}")
        existing = [p for p in layer.parametrizations.weight if isinstance(p, Mask)] \
            if parametrize.is_parametrized(layer, "weight") else []
        if existing:
            existing[0].mask.copy_(mask)
        else:
            parametrize.register_parametrization(layer, "weight", Mask(mask))
    return model


def magnitude_prune(model: nn.Module, amount: float | int, scope: str = "global") -> dict[str, torch.Tensor]:
    """Prune ``model`` in place by weight magnitude (see :func:`magnitude_masks`); return the masks."""
    masks = magnitude_masks(model, amount, scope)
    apply_masks(model, masks)
    return masks


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The current masks of a pruned model, by layer name."""
    return {name: p.mask.clone() for name, m in prunable(model).items()
            if parametrize.is_parametrized(m, "weight")
            for p in m.parametrizations.weight if isinstance(p, Mask)}


def sparsity(model: nn.Module, per_layer: bool = False) -> float | dict[str, float]:
    """The fraction of prunable weights that are exactly zero (counted in the weights the
    layers compute with, masks applied), overall or per layer."""
    layers = prunable(model)
    zeros = {name: int((m.weight == 0).sum()) for name, m in layers.items()}
    sizes = {name: m.weight.numel() for name, m in layers.items()}
    if per_layer:
        return {name: zeros[name] / sizes[name] for name in layers}
    return sum(zeros.values()) / max(sum(sizes.values()), 1)


# ---------------------------------------------------------------------------------------------
# Structured pruning: remove whole filters by their L1 norm (Li et al. 2017)
# ---------------------------------------------------------------------------------------------

def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if not list(m.children())]


def _is_chain(model: nn.Module, leaves, example: torch.Tensor) -> bool:
    """Does running the leaf modules one after another give the model's output?"""
    with torch.no_grad():
        h = example
        try:
            for _, m in leaves:
                h = m(h)
        except RuntimeError:  # shapes that do not fit: not a chain
            return False
        out = model(example)
        return h.shape == out.shape and torch.allclose(h, out, atol=1e-5)


def prune_filters(model: nn.Module, amount: float, example: torch.Tensor) -> nn.Module:
    """A smaller copy of ``model`` with the fraction ``amount`` of each Conv2d's filters removed,
    those of smallest L1 norm ``sum |W[c]|``; the next layer loses the matching inputs (a
    Conv2d's input channels, a BatchNorm2d's channels, or a Linear's columns after Flatten).

    For chains of layers (SeedCNN, LeNet5, TwoConvNet); ``example`` is one input batch, used to
    check that the model is a chain. Networks with branches (ResNets) need a dependency graph:
    the ``torch-pruning`` package builds one.
    """
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"amount must be in [0, 1), got {amount}")
    model = make_permanent(copy.deepcopy(model))
    modes = {name: m.training for name, m in model.named_modules()}  # restored at the end
    model.eval()
    leaves = _leaves(model)
    if not _is_chain(model, leaves, example):
        raise ValueError("prune_filters handles models that are a chain of layers; this one has "
                         "branches or functional steps: use torch-pruning's DependencyGraph")
    shapes, h = [], example
    with torch.no_grad():
        for _, m in leaves:
            shapes.append(h.shape)
            h = m(h)
    # Each layer's filters are ranked on the original weights ("independent pruning", Li et al.)
    chosen = {}
    for name, conv in leaves:
        if isinstance(conv, nn.Conv2d) and conv.groups == 1:
            n_keep = max(1, int(conv.out_channels * (1 - amount)))  # as torch-pruning counts
            norms = conv.weight.detach().abs().sum(dim=(1, 2, 3))  # (C_out,)
            chosen[name] = torch.sort(torch.topk(norms, n_keep).indices).values
    for i, (name, conv) in enumerate(leaves):
        if name in chosen:
            new = _conv_keeping(conv, chosen[name])
            model.set_submodule(name, new)
            leaves[i] = (name, new)
            _shrink_inputs_after(model, leaves, i, chosen[name], conv.out_channels, shapes)
    # each submodule gets its own mode back (a frozen batch norm stays in eval mode); a new
    # layer takes the mode of the layer it replaces
    for name, m in model.named_modules():
        m.training = modes.get(name, modes[""])
    return model


def _conv_keeping(conv: nn.Conv2d, keep: torch.Tensor) -> nn.Conv2d:
    """A copy of ``conv`` with only the output filters ``keep``."""
    new = nn.Conv2d(conv.in_channels, len(keep), conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    new.weight.data = conv.weight.data[keep].clone()
    if conv.bias is not None:
        new.bias.data = conv.bias.data[keep].clone()
    return new


def _shrink_inputs_after(model: nn.Module, leaves: list, i: int, keep: torch.Tensor,
                         channels: int, shapes: list) -> None:
    """Make the layers after ``leaves[i]`` read only its kept channels ``keep`` (of
    ``channels``): BatchNorm2d layers on the way shrink, and the next Conv2d or Linear (after a
    Flatten) loses the matching inputs. ``shapes[k]`` is the input shape of ``leaves[k]``."""
    name, n_keep = leaves[i][0], len(keep)
    for j in range(i + 1, len(leaves)):
        nxt_name, nxt = leaves[j]
        if isinstance(nxt, nn.BatchNorm2d):
            bn = nn.BatchNorm2d(n_keep, nxt.eps, nxt.momentum, nxt.affine, nxt.track_running_stats)
            for attr in ("weight", "bias", "running_mean", "running_var"):
                if getattr(nxt, attr) is not None:
                    getattr(bn, attr).data = getattr(nxt, attr).data[keep].clone()
            model.set_submodule(nxt_name, bn)
            leaves[j] = (nxt_name, bn)
        elif isinstance(nxt, nn.Conv2d):
            nxt.weight.data = nxt.weight.data[:, keep].clone()
            nxt.in_channels = n_keep
            return
        elif isinstance(nxt, nn.Linear):
            flat = [k for k in range(i + 1, j) if isinstance(leaves[k][1], nn.Flatten)]
            c, hh, ww = shapes[flat[-1]][1:] if flat and len(shapes[flat[-1]]) == 4 else (0, 1, 1)
            if c != channels:
                raise ValueError(f"cannot tell which inputs of {nxt_name!r} come from {name!r}")
            cols = (keep[:, None] * hh * ww + torch.arange(hh * ww)).flatten()  # channel-major
            lin = nn.Linear(n_keep * hh * ww, nxt.out_features, bias=nxt.bias is not None)
            lin.weight.data = nxt.weight.data[:, cols].clone()
            if nxt.bias is not None:
                lin.bias.data = nxt.bias.data.clone()
            model.set_submodule(nxt_name, lin)
            leaves[j] = (nxt_name, lin)
            return


# ---------------------------------------------------------------------------------------------
# Distillation (Hinton, Vinyals & Dean 2015)
# ---------------------------------------------------------------------------------------------

def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      targets: torch.Tensor, T: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """``alpha * T² * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``, averaged over
    the batch. The T² keeps the soft term's gradient the same size whatever the temperature."""
    if T <= 0 or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"need T > 0 and alpha in [0, 1], got T={T}, alpha={alpha}")
    log_p_s = F.log_softmax(student_logits / T, dim=1)  # (B, K)
    log_p_t = F.log_softmax(teacher_logits.detach() / T, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1).mean()
    return alpha * T * T * kl + (1 - alpha) * F.cross_entropy(student_logits, targets)


def distillation_grad(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      targets: torch.Tensor, T: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """The gradient of :func:`distillation_loss` with respect to the student's logits, in closed
    form: ``(alpha * T * (softmax(s/T) - softmax(t/T)) + (1 - alpha) * (softmax(s) - onehot(y))) / B``."""
    s, t = student_logits.detach(), teacher_logits.detach()
    onehot = F.one_hot(targets, s.shape[1]).to(s.dtype)
    soft = torch.softmax(s / T, 1) - torch.softmax(t / T, 1)
    return (alpha * T * soft + (1 - alpha) * (torch.softmax(s, 1) - onehot)) / len(s)


def train_distilled(student: nn.Module, train: Dataset, teacher_logits: torch.Tensor | None, *,
                    epochs: int, T: float = 4.0, alpha: float = 0.9, lr: float = 1e-3,
                    batch_size: int = 64, seed: int = 0,
                    device: torch.device | str | None = None) -> nn.Module:
    """Train ``student`` with Adam on :func:`distillation_loss` against the teacher's logits for
    the training images (computed once, row i for image i). ``teacher_logits=None`` trains on
    the labels alone (plain cross-entropy) with the same batches, for a fair comparison.
    Each epoch is :func:`fmlab.train.train_one_epoch`, so a nan or inf loss stops training
    with its :class:`~fmlab.monitor.NonFiniteLossError`."""
    dev = torch.device(device) if device is not None else default_device()
    student.to(dev).train()
    x, y, idx = train.x.to(dev), train.y.to(dev), torch.arange(len(train), device=dev)
    if teacher_logits is not None:
        teacher_logits = teacher_logits.to(dev)
        if len(teacher_logits) != len(train):
            raise ValueError(f"{len(teacher_logits)} teacher logits for {len(train)} images")
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)

    def loss_fn(out: torch.Tensor, ib: torch.Tensor) -> torch.Tensor:  # ib: the images' rows
        if teacher_logits is None:
            return F.cross_entropy(out, y[ib])
        return distillation_loss(out, teacher_logits[ib], y[ib], T, alpha)

    for epoch in range(1, epochs + 1):
        train_one_epoch(student, batches(x, idx, batch_size, generator=gen), opt, loss_fn,
                        epoch=epoch)
    return student.eval()
