"""Symmetric integer grids for weights: scales per channel or per block, codes.

A weight ``W`` is stored as integer codes ``q`` and float32 scales ``s`` with
``W ≈ q * s`` and zero point 0, so a zero weight is exactly code 0 (pruned
zeros survive). Scales are ``max|w| / qmax`` over a channel (or block); a
channel that is all zero, or so small that its scale would be subnormal, gets
a safe normal scale (1.0, or the smallest normal float32) so
DequantizeLinear never multiplies by zero, a subnormal, Inf or NaN.

Below 8 bits, scales in float16's normal range are rounded *up* to the nearest value
float16 holds exactly (a relative change under 2^-11, and up, so no code
clips): their low mantissa bits are then zero, which the container codes in
about half the bytes, and the scales can be cast to float16 losslessly.
At 8 bits scales are a small share of the bytes and stay exact.
"""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np

_TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32
_F16_MIN, _F16_MAX = float(np.finfo(np.float16).tiny), float(np.finfo(np.float16).max)


def float16_exact_up(s: np.ndarray) -> np.ndarray:
    """float32 ``s`` with entries in float16's normal range rounded up to the
    nearest value float16 represents exactly; other entries unchanged."""
    s = np.asarray(s, dtype=np.float32)
    inside = (s >= _F16_MIN) & (s <= _F16_MAX)
    with np.errstate(over="ignore"):
        h = np.where(inside, s, np.float32(1.0)).astype(np.float16)  # no overflow: outside entries are 1.0
        h = np.where(h.astype(np.float32) < s, np.nextafter(h, np.float16(np.inf)), h)
    up = h.astype(np.float32)
    return np.where(inside & np.isfinite(up), up, s).astype(np.float32)


def code_range(bits: int) -> tuple[int, int]:
    """Codes a ``bits``-wide signed integer can hold: (-2^(b-1), 2^(b-1) - 1)."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def code_dtype(bits: int) -> np.dtype:
    """int8 for 8 bits and for 6 and 5 (fewer levels in int8 storage); int4
    for 4 and for 3 and 2 (fewer levels in int4 storage)."""
    return np.dtype(np.int8) if storage_bits(bits) == 8 else np.dtype(ml_dtypes.int4)


def storage_bits(bits: int) -> int:
    """The width of the integer type ``bits``-wide codes are stored in: 8 (int8) from 5 bits up, else 4 (int4).
    Narrower codes in the same type run on the same kernels; packed, fewer levels take fewer bits."""
    return 8 if bits >= 5 else 4


@dataclasses.dataclass(frozen=True)
class Grid:
    """Where a weight's scales lie: ``axis`` holds one scale per index
    (per channel: the output axis), or with ``block`` one scale per ``block``
    consecutive entries along ``axis`` (the input axis) for each position of
    the other axes."""

    bits: int
    axis: int
    block: int | None = None

    def scale_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.block is None:
            return (shape[self.axis],)
        return shape[:self.axis] + (-(-shape[self.axis] // self.block),) + shape[self.axis + 1:]

    def scales(self, w: np.ndarray) -> np.ndarray:
        """float32 scales of ``w`` (shape :meth:`scale_shape`), all normal and finite."""
        a = np.abs(w.astype(np.float64))
        if self.block is None:
            amax = np.moveaxis(a, self.axis, 0).reshape(w.shape[self.axis], -1).max(axis=1, initial=0.0)
        else:
            n = w.shape[self.axis]
            pad = [(0, 0)] * w.ndim
            pad[self.axis] = (0, -n % self.block)
            a = np.pad(a, pad)
            split = a.shape[:self.axis] + (a.shape[self.axis] // self.block, self.block) + a.shape[self.axis + 1:]
            amax = a.reshape(split).max(axis=self.axis + 1)
        s = (amax / code_range(self.bits)[1]).astype(np.float32)
        s = np.where(amax > 0, np.maximum(s, np.float32(_TINY)), np.float32(1.0))
        s = np.where(np.isfinite(s), s, np.float32(1.0)).astype(np.float32)
        return float16_exact_up(s) if self.bits < 8 else s

    def expand(self, scales: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """The per-element scale of a weight of ``shape`` (what DequantizeLinear multiplies by)."""
        if self.block is None:
            view = [1] * len(shape)
            view[self.axis] = shape[self.axis]
            return np.broadcast_to(scales.reshape(view), shape)
        full = np.repeat(scales, self.block, axis=self.axis)
        return np.take(full, np.arange(shape[self.axis]), axis=self.axis)

    def codes(self, values: np.ndarray, element_scales: np.ndarray) -> np.ndarray:
        """Nearest codes of ``values`` (float) for per-element scales, clipped to the code range."""
        lo, hi = code_range(self.bits)
        return np.clip(np.rint(values / element_scales), lo, hi)


def quantize_nearest(w: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """(codes as float64, float32 scales) of ``w`` by round-to-nearest."""
    scales = grid.scales(w)
    return grid.codes(w.astype(np.float64), grid.expand(scales, w.shape).astype(np.float64)), scales


def as_code_array(codes: np.ndarray, bits: int) -> np.ndarray:
    """Integer codes (any numeric dtype, already in range) in the storage dtype."""
    return codes.astype(np.int8).astype(code_dtype(bits))
