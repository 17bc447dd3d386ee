"""Measuring a compressed model: bytes of its saved weights, multiply-accumulates, latency;
and a storage format for sparse and int8 weights.

Explained in book/05_compression.ipynb (re-exported by :mod:`fmlab.compress`).

Sizes are bytes of ``torch.save`` output, counted, not parameter counts: a parameter takes
4 bytes in float32, 1 in int8, and 1 bit when a pruned zero is stored in a bit mask.
Latency is a median over interleaved repeats; compare models by the ratio of their medians
measured in the same call, never by seconds from different runs.
"""
from __future__ import annotations

import copy
import io
import statistics
import time
from typing import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from .quantize import PRUNABLE, dequantize, make_permanent, quantize


def saved_bytes(obj: nn.Module | Mapping) -> int:
    """Bytes of ``torch.save(model.state_dict())`` (or of a dict such as :func:`packed_state`)."""
    if isinstance(obj, nn.Module):
        if any(parametrize.is_parametrized(m) for m in obj.modules()):
            raise ValueError("the model still carries masks or fake quantizers; count the bytes "
                             "of make_permanent(copy.deepcopy(model))")
        obj = obj.state_dict()
    buffer = io.BytesIO()
    torch.save(dict(obj), buffer)
    return buffer.tell()


def packed_state(model: nn.Module, sparse: bool = True, bits: int | None = None) -> dict:
    """A state dict for storage: each Linear/Conv2d weight as a bit mask of its nonzeros plus
    their values (``sparse``), the values as int8 codes with one float32 scale per output
    channel (``bits=8``, symmetric), or both. Other tensors are kept as they are.
    :func:`unpack_state` inverts it (exactly, up to the quantization)."""
    if bits not in (None, 8):
        raise ValueError("packed_state stores float32 values (bits=None) or int8 codes (bits=8)")
    model = make_permanent(copy.deepcopy(model))
    weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, PRUNABLE)}
    packed = {}
    for key, t in model.state_dict().items():
        if key not in weights:
            packed[key] = t.clone()
            continue
        entry: dict = {"shape": tuple(t.shape)}
        values = t.detach().cpu().float()
        if bits is not None:
            q, scale, _ = quantize(values, 8, "symmetric", axis=0)
            entry["scale"], values = scale, q
        if sparse:
            nonzero = t.detach().cpu() != 0
            entry["mask"] = torch.from_numpy(np.packbits(nonzero.flatten().numpy()))  # 1 bit each
            values = values[nonzero]
        entry["values"] = values.clone()
        packed[key] = entry
    return packed


def unpack_state(packed: Mapping) -> dict[str, torch.Tensor]:
    """The plain state dict that :func:`packed_state` stored."""
    state = {}
    for key, entry in packed.items():
        if not isinstance(entry, dict):
            state[key] = entry
            continue
        shape, n = entry["shape"], int(np.prod(entry["shape"]))
        values = entry["values"]
        if "mask" in entry:
            nonzero = torch.from_numpy(np.unpackbits(entry["mask"].numpy())[:n].astype(bool)).view(shape)
            full = torch.zeros(shape, dtype=values.dtype)
            full[nonzero] = values
            values = full
        if "scale" in entry:
            zero = torch.zeros_like(entry["scale"], dtype=torch.int64)  # symmetric codes
            values = dequantize(values, entry["scale"], zero, axis=0)
        state[key] = values.reshape(shape).float()
    return state


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass per example, in Conv2d and Linear layers (dense
    kernels do all of them, zeros or not; a FLOP count is about twice this)."""
    total = 0

    def hook(m, inputs, out):
        nonlocal total
        per_output = m.in_features if isinstance(m, nn.Linear) else \
            m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        total += out.numel() // out.shape[0] * per_output

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, PRUNABLE)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return total


def median_latency(models: Mapping[str, nn.Module], x: torch.Tensor, repeats: int = 9,
                   threads: int = 1, min_time: float = 0.05, warmup: int = 3) -> dict[str, float]:
    """Median seconds per forward pass of each model on ``x`` (CPU, ``threads`` threads).

    After ``warmup`` calls each, the models take turns within every repeat (in a rotating
    order), so a busy moment of the machine hits all of them alike; each timing repeats a
    model's call often enough to last about ``min_time`` seconds. Compare models by the ratio
    of their medians from the same call, not by seconds.
    """
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    names = list(models)
    try:
        with torch.inference_mode():
            calls = {}
            for name, model in models.items():
                for _ in range(warmup):
                    model(x)
                t0 = time.perf_counter()
                model(x)
                calls[name] = max(1, round(min_time / max(time.perf_counter() - t0, 1e-7)))
            times: dict[str, list[float]] = {n: [] for n in names}
            for r in range(repeats):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    model, n = models[name], calls[name]
                    t0 = time.perf_counter()
                    for _ in range(n):
                        model(x)
                    times[name].append((time.perf_counter() - t0) / n)
    finally:
        torch.set_num_threads(saved)
    return {n: statistics.median(t) for n, t in times.items()}
