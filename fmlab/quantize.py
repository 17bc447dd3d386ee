"""Quantization from scratch: integer codes, scales and zero points; fake quantization with a
straight-through gradient; post-training int8 with torchao.

Explained in book/05_compression.ipynb.

A ``bits``-bit quantizer maps a real ``x`` to an integer ``q`` in ``[qmin, qmax]``::

    q = clamp(round(x / scale) + zero_point, qmin, qmax)        x̂ = scale * (q - zero_point)

* ``scheme="affine"``: unsigned codes ``[0, 2^b - 1]``; the range ``[min(x, 0), max(x, 0)]``
  is spread over all codes: ``scale = (max - min) / (qmax - qmin)`` and
  ``zero_point = clamp(qmin - round(min / scale), qmin, qmax)``, so that 0 is exact.
* ``scheme="symmetric"``: signed codes ``[-2^(b-1), 2^(b-1) - 1]``, ``zero_point = 0`` and
  ``scale = max|x| / ((qmax - qmin) / 2)``.

These are the formulas of PyTorch's min/max observers, and ``x / scale`` is computed as
``x * (1 / scale)`` in float32 with round-half-to-even, as ``torch.quantize_per_tensor`` does,
so at 8 bits the codes equal PyTorch's exactly (tests/test_compress.py). ``axis=None`` uses one
scale for the whole tensor; ``axis=k`` one per slice along dimension ``k`` (per channel).
Inside the representable range the error is at most half a step: ``|x - x̂| <= scale / 2``.
"""
from __future__ import annotations

import copy
import logging
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils import parametrize

SCHEMES = ("symmetric", "affine")
PRUNABLE = (nn.Linear, nn.Conv2d)  # the layers whose weights are pruned and quantized


def prunable(model: nn.Module) -> dict[str, nn.Module]:
    """The layers whose weights are pruned (Linear and Conv2d; biases are left alone), by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE)}


def make_permanent(model: nn.Module) -> nn.Module:
    """Write the masked (or fake-quantized) weights into the layers and drop the
    parametrizations, so the state_dict holds plain tensors with real zeros. In place."""
    for m in prunable(model).values():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model

_EPS = torch.finfo(torch.float32).eps  # the observers' smallest scale


class Quantized(NamedTuple):
    """Integer codes ``q`` (int8 for "symmetric", uint8 for "affine"), ``scale`` (float32) and
    ``zero_point`` (int64): 0-d tensors per tensor, 1-d (one per channel) with ``axis``."""

    q: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor


def qrange(bits: int, scheme: str) -> tuple[int, int]:
    """The integer codes ``(qmin, qmax)`` of a ``bits``-bit quantizer."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an integer from 2 to 8, got {bits!r}")
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if scheme == "symmetric" else (0, 2 ** bits - 1)


def _reduce_dims(x: torch.Tensor, axis: int | None) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(x.dim()))
    if not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis {axis} does not exist for a tensor of shape {tuple(x.shape)}")
    return tuple(d for d in range(x.dim()) if d != axis % x.dim())


def _along(v: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """A per-channel vector shaped to broadcast against ``x`` along ``axis``."""
    if axis is None:
        return v
    shape = [1] * x.dim()
    shape[axis % x.dim()] = -1
    return v.reshape(shape)


def qparams(x: torch.Tensor, bits: int = 8, scheme: str = "symmetric",
            axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero_point)`` from the min and max of ``x`` (see the module docstring)."""
    qmin, qmax = qrange(bits, scheme)
    if not x.is_floating_point() or x.numel() == 0:
        raise ValueError("quantize a non-empty floating-point tensor")
    if not torch.isfinite(x).all():
        raise ValueError("the tensor holds nan or inf, which have no integer code")
    dims = _reduce_dims(x, axis)
    lo = x.detach().float().amin(dim=dims).clamp(max=0)  # the range always includes 0
    hi = x.detach().float().amax(dim=dims).clamp(min=0)
    if scheme == "symmetric":
        scale = (torch.maximum(-lo, hi) / ((qmax - qmin) / 2)).clamp(min=_EPS)
        zero_point = torch.zeros_like(scale, dtype=torch.int64)
    else:
        scale = ((hi - lo) / (qmax - qmin)).clamp(min=_EPS)
        zero_point = (qmin - torch.round(lo / scale)).to(torch.int64).clamp(qmin, qmax)
    return scale, zero_point


def quantize(x: torch.Tensor, bits: int = 8, scheme: str = "symmetric",
             axis: int | None = None) -> Quantized:
    """``q = clamp(round(x / scale) + zero_point, qmin, qmax)`` with the scale and zero point of
    :func:`qparams`; returns :class:`Quantized` ``(q, scale, zero_point)``."""
    qmin, qmax = qrange(bits, scheme)
    scale, zero_point = qparams(x, bits, scheme, axis)
    inv = _along(1.0 / scale, x, axis)  # float32 reciprocal, as PyTorch's kernels
    q = torch.round(x.detach().float() * inv) + _along(zero_point, x, axis)
    dtype = torch.int8 if scheme == "symmetric" else torch.uint8
    return Quantized(q.clamp(qmin, qmax).to(dtype), scale, zero_point)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
               axis: int | None = None) -> torch.Tensor:
    """``x̂ = scale * (q - zero_point)``, float32; ``axis`` as given to :func:`quantize`."""
    return _along(scale, q, axis) * (q.to(torch.int64) - _along(zero_point, q, axis)).float()


def fake_quantize(x: torch.Tensor, bits: int = 8, scheme: str = "symmetric",
                  axis: int | None = None) -> torch.Tensor:
    """Quantize and dequantize in the forward pass; pass the gradient straight through.

    ``x + (x̂ - x).detach()`` equals ``x̂`` in value and has the identity as its derivative:
    the straight-through estimator (Bengio et al. 2013). PyTorch's
    ``torch.fake_quantize_per_*_affine`` also zero the gradient of values outside the
    representable range; with min/max scales that is at most the extreme value of a channel.
    """
    with torch.no_grad():
        x_hat = dequantize(*quantize(x, bits, scheme, axis), axis=axis).to(x.dtype)
    return x + (x_hat - x).detach()


class FakeQuant(nn.Module):
    """A parametrization: the layer computes with ``fake_quantize(weight)``, per output channel
    (``axis=0``) or per tensor (``axis=None``), while the optimizer updates the float weight
    underneath (quantization-aware training, Jacob et al. 2018)."""

    def __init__(self, bits: int = 8, scheme: str = "symmetric", axis: int | None = 0):
        super().__init__()
        qrange(bits, scheme)  # validates
        self.bits, self.scheme, self.axis = bits, scheme, axis

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quantize(w, self.bits, self.scheme, self.axis)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, scheme={self.scheme!r}, axis={self.axis}"


def add_fake_quant(model: nn.Module, bits: int, scheme: str = "symmetric",
                   axis: int | None = 0) -> nn.Module:
    """Make every Linear and Conv2d layer of ``model`` compute with ``bits``-bit weights, one
    scale per output channel (``axis=0``) or per layer (``None``); in place. Biases and
    activations stay float32. Returns ``model``."""
    for layer in prunable(model).values():
        if parametrize.is_parametrized(layer, "weight"):
            raise ValueError("this layer's weight is already parametrized (pruned or fake-quantized); "
                             "make that permanent first (make_permanent, in fmlab.quantize and fmlab.compress)")
        parametrize.register_parametrization(layer, "weight", FakeQuant(bits, scheme, axis))
    return model


def weights_quantized(model: nn.Module, bits: int, scheme: str = "symmetric",
                      axis: int | None = 0) -> nn.Module:
    """Post-training quantization, simulated: a copy of ``model`` whose Linear and Conv2d weights
    are replaced by their ``bits``-bit values, per output channel (``axis=0``) or per layer
    (float32 tensors holding exactly the values the integer codes stand for)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for layer in prunable(model).values():
            layer.weight.copy_(dequantize(*quantize(layer.weight, bits, scheme, axis), axis=axis))
    return model


def torchao_int8(model: nn.Module, mode: str = "weight_only") -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers torchao quantized to int8 (per output
    channel): ``mode="weight_only"`` keeps activations float; ``"dynamic"`` also quantizes each
    input batch to int8 on the fly. Other layers (convolutions) stay float32. For CPU inference.
    """
    modes = {"weight_only": "Int8WeightOnlyConfig", "dynamic": "Int8DynamicActivationInt8WeightConfig"}
    if mode not in modes:
        raise ValueError(f"mode must be one of {sorted(modes)}, got {mode!r}")
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)  # torchao's import notes a deprecation that is not ours
    try:
        import torchao.quantization as tq
    except ImportError as err:
        raise ImportError("post-training int8 quantization uses torchao: pip install torchao") from err
    finally:
        pytree_log.setLevel(level)
    model = copy.deepcopy(model).cpu().eval()
    tq.quantize_(model, getattr(tq, modes[mode])())
    return model
