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
import math
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


def share_weights(model: nn.Module, clusters: int = 16, iterations: int = 30) -> nn.Module:
    """Weight sharing (Deep Compression, Han et al. 2016): a copy of ``model`` in which each
    Linear and Conv2d layer's weights take only ``clusters`` values, the centroids of a k-means
    over that layer's weights (initialised evenly between their min and max, as Han et al.
    found best; Lloyd's iterations). Stored, a weight is then a log2(clusters)-bit index into
    the layer's codebook."""
    if clusters < 2:
        raise ValueError(f"share weights among at least 2 values, got {clusters}")
    model = copy.deepcopy(model)
    with torch.no_grad():
        for layer in prunable(model).values():
            flat = layer.weight.detach().flatten().float()
            centroids = torch.linspace(flat.min().item(), flat.max().item(), clusters)
            for _ in range(iterations + 1):
                # in one dimension the nearest centroid is found between sorted midpoints
                index = torch.bucketize(flat, (centroids[1:] + centroids[:-1]) / 2)
                counts = torch.bincount(index, minlength=clusters)
                sums = torch.zeros(clusters).index_add_(0, index, flat)
                centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids).sort().values
            layer.weight.copy_(centroids[index].view_as(layer.weight))
    return model


# ---------------------------------------------------------------------------------------------
# Integer-only inference (Jacob et al. 2018): every multiply-add on integers
# ---------------------------------------------------------------------------------------------

def fixed_point_multiplier(m: float) -> tuple[int, int]:
    """``m`` in (0, 1) as ``(m0, shift)`` with ``m ≈ m0 * 2**-shift`` and ``m0`` an integer in
    ``[2**30, 2**31)``: the requantization multiplier ``M = S_x S_w / S_y`` of integer-only
    inference, applied as an int32 product and a right shift (Jacob et al. 2018, section 2.2).

    >>> m0, shift = fixed_point_multiplier(0.0123)
    >>> abs(m0 * 2.0 ** -shift - 0.0123) < 0.0123 * 2.0 ** -30
    True
    """
    if not 0 < m < 1:
        raise ValueError(f"the multiplier S_x S_w / S_y must lie in (0, 1), got {m}")
    mantissa, exponent = math.frexp(m)  # m = mantissa * 2**exponent, mantissa in [0.5, 1)
    m0 = round(mantissa * 2**31)
    if m0 == 2**31:  # the mantissa rounded up to 1
        m0, exponent = 2**30, exponent + 1
    return m0, 31 - exponent


def rounding_right_shift(x: torch.Tensor, shift: int) -> torch.Tensor:
    """``round(x / 2**shift)`` on integers (halves rounded up), without a float."""
    return (x + (1 << (shift - 1))) >> shift


class IntLinear(NamedTuple):
    """One Linear layer in integers: int8 weight codes (symmetric, zero point 0), the bias as
    int32 at scale ``S_x S_w``, the fixed-point multiplier, and the output's scale and zero
    point (uint8); ``relu``: the output is clamped at its zero point (the ReLU, fused)."""

    q_weight: torch.Tensor
    q_bias: torch.Tensor
    m0: int
    shift: int
    out_scale: float
    out_zero: int
    relu: bool


def integer_linear(q_x: torch.Tensor, x_zero: int, layer: IntLinear) -> torch.Tensor:
    """``q_y = Z_y + M Σ (q_x - Z_x) q_w + q_b``, clamped to uint8: the codes' products summed
    in int32, then the multiplier as an int64 product and a rounding shift. It gives
    ``torch.ops.quantized.linear``'s codes exactly (tests/test_compress.py)."""
    acc = (q_x.to(torch.int32) - x_zero) @ layer.q_weight.to(torch.int32).T + layer.q_bias
    q_y = layer.out_zero + rounding_right_shift(acc.to(torch.int64) * layer.m0, layer.shift)
    return q_y.clamp(layer.out_zero if layer.relu else 0, 255).to(torch.uint8)


class IntegerMLP(nn.Module):
    """A chain of Linear (and ReLU) layers run in integers only, with *static* activation
    scales: each layer's output range is calibrated once, on sample inputs, and then fixed.
    The input is quantized to uint8 at its calibrated scale; the last layer's codes are
    dequantized, so the module returns float logits like the model it was made from."""

    def __init__(self, model: nn.Module, calibration: torch.Tensor):
        super().__init__()
        leaves = [m for m in model.modules() if not list(m.children())]
        odd = [type(m).__name__ for m in leaves if not isinstance(m, (nn.Linear, nn.ReLU, nn.Flatten))]
        if odd or not leaves:
            raise ValueError(f"IntegerMLP runs chains of Linear and ReLU layers, not {odd or 'nothing'}")
        linears = [m for m in leaves if isinstance(m, nn.Linear)]
        relu = [i + 1 < len(leaves) and isinstance(leaves[i + 1], nn.ReLU)
                for i, m in enumerate(leaves) if isinstance(m, nn.Linear)]
        x_scale, x_zero = qparams(calibration.flatten(1), 8, "affine")
        self.x_scale, self.x_zero = float(x_scale), int(x_zero)
        self.layers: list[IntLinear] = []
        h, scale = calibration.flatten(1).float(), self.x_scale
        with torch.no_grad():
            for linear, has_relu in zip(linears, relu):
                h = linear(h).relu() if has_relu else linear(h)
                out_scale, out_zero = qparams(h, 8, "affine")
                q_w, w_scale, _ = quantize(linear.weight, 8, "symmetric")
                bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
                q_b = torch.round(bias / (scale * w_scale)).to(torch.int32)
                m0, shift = fixed_point_multiplier(scale * float(w_scale) / float(out_scale))
                self.layers.append(IntLinear(q_w, q_b, m0, shift, float(out_scale), int(out_zero),
                                             has_relu))
                scale = float(out_scale)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's uint8 codes for float inputs ``x``."""
        q = quantize_with(x.flatten(1), self.x_scale, self.x_zero)
        zero = self.x_zero
        for layer in self.layers:
            q, zero = integer_linear(q, zero, layer), layer.out_zero
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = self.layers[-1]
        return last.out_scale * (self.codes(x).to(torch.int32) - last.out_zero).float()


def quantize_with(x: torch.Tensor, scale: float, zero: int) -> torch.Tensor:
    """uint8 codes of ``x`` at a fixed (calibrated) scale and zero point; values outside the
    calibrated range saturate."""
    return (torch.round(x.float() * (1.0 / scale)) + zero).clamp(0, 255).to(torch.uint8)


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
