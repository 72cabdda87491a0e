"""Scales and zero points: activations asymmetric, weights symmetric per channel, biases int32.

Every scale produced here is a finite, normal, positive float32: an all-zero
tensor or channel gets scale 1 (or whatever its bias needs), never 0, a
subnormal or NaN, so the quantized model cannot divide by zero or overflow.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from onnxshrink.cpu_targets import int8_weight_limit

# Smallest scale we emit: far above float32's subnormals (1.2e-38), so that
# products of two scales (bias scale = input scale x weight scale) stay normal.
MIN_SCALE = 1e-15
INT32_LIMIT = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class QuantParams:
    """Per-tensor activation parameters: ``x ~ scale * (q - zero_point)``."""

    scale: float
    zero_point: int
    dtype: str  # "uint8" or "int8"

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def to_dict(self) -> dict:
        return {"scale": self.scale, "zero_point": self.zero_point, "type": self.dtype}


def activation_params(lo: float, hi: float, dtype: str) -> QuantParams:
    """Asymmetric parameters covering ``[lo, hi]`` (widened to include 0, so 0 is exact)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    qmin, qmax = (0, 255) if dtype == "uint8" else (-128, 127)
    scale = (hi - lo) / (qmax - qmin)
    if not np.isfinite(scale) or scale < MIN_SCALE:
        scale = 1.0 if not (hi - lo) > 0 else MIN_SCALE
    scale = float(np.float32(scale))
    zero_point = int(np.clip(np.round(qmin - lo / scale), qmin, qmax))
    return QuantParams(scale, zero_point, dtype)


@dataclasses.dataclass
class QuantizedWeight:
    """An int8 weight with its scales (one per channel along ``axis``, or one)."""

    values: np.ndarray  # int8
    scale: np.ndarray  # float32, shape [channels] or []
    axis: int | None


def weight_levels(bits: int, target: str) -> int:
    """The largest code of symmetric weights with ``bits`` of range (31 for 6, 127 for
    8), never above what ``target`` computes exactly (64 on x86-avx2). Codes are
    symmetric, so -128 is never used and negation is exact."""
    return min(2 ** (bits - 1) - 1, int8_weight_limit(target))


def weight_scales(weight: np.ndarray, axis: int | None, levels: int) -> np.ndarray:
    """Symmetric scales, max|w| / ``levels`` per channel along ``axis`` (per tensor if None).

    An all-zero channel gets scale 1 (any scale maps zeros to zeros); tiny
    non-zero channels get at least MIN_SCALE."""
    w = np.abs(np.asarray(weight, dtype=np.float64))
    if axis is None:
        peak = np.asarray(w.max(initial=0.0))
    else:
        peak = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1).max(axis=1, initial=0.0)
    scale = peak / levels
    scale = np.where(peak > 0, np.maximum(scale, MIN_SCALE), 1.0)
    return scale.astype(np.float32)


def quantize_weight(weight: np.ndarray, scale: np.ndarray, axis: int | None, levels: int) -> QuantizedWeight:
    """int8 values ``round(w / scale)`` clipped to [-levels, levels]; zeros stay exactly zero."""
    w = np.asarray(weight, dtype=np.float32)
    s = scale if axis is None else scale.reshape([-1 if d == axis else 1 for d in range(w.ndim)])
    q = np.clip(np.rint(w / s), -levels, levels).astype(np.int8)
    return QuantizedWeight(q, scale.astype(np.float32), axis)


def fit_bias(weight_scale: np.ndarray, bias: np.ndarray, input_scale: float) -> np.ndarray:
    """Raise weight scales where the int32 bias would overflow ``bias / (input_scale * w_scale)``."""
    needed = np.abs(bias.astype(np.float64)) / (float(input_scale) * (INT32_LIMIT // 2))
    return np.maximum(weight_scale.astype(np.float64), needed).astype(np.float32)


def quantize_bias(bias: np.ndarray, input_scale: float, weight_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias with scale ``input_scale * weight_scale`` (per channel, or one), and that scale."""
    scale = (np.float64(input_scale) * weight_scale.astype(np.float64)).astype(np.float32)
    q = np.clip(np.rint(bias.astype(np.float64) / scale.astype(np.float64)), -INT32_LIMIT, INT32_LIMIT).astype(np.int32)
    return q, scale
