"""Streaming statistics of one tensor: running min/max and a fixed-size histogram.

The histogram has ``2 * HALF_BINS`` bins of width ``w`` centred on zero,
covering ``[-HALF_BINS * w, HALF_BINS * w)``. ``w`` is always a power of two:
when a batch holds a value outside the range, adjacent bins are summed in
pairs and ``w`` doubles, which is exact. Two histograms of the same tensor
(from two runs, processes or machines) are merged the same way, so statistics
are independent of how the samples were split, and memory is fixed whatever
the number of samples.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

HALF_BINS = 1024
# The narrowest bin: values below this magnitude are all "zero" for 8-bit ranges.
MIN_EXPONENT = -40


@dataclasses.dataclass
class TensorStats:
    """Running statistics of one tensor's values."""

    min: float = math.inf
    max: float = -math.inf
    count: int = 0
    exponent: int = MIN_EXPONENT  # bin width is 2**exponent
    # None: min/max only (all the minmax method needs, and much cheaper to collect)
    hist: np.ndarray | None = dataclasses.field(default_factory=lambda: np.zeros(2 * HALF_BINS, np.int64))

    @property
    def bin_width(self) -> float:
        return math.ldexp(1.0, self.exponent)

    @property
    def half_range(self) -> float:
        return HALF_BINS * self.bin_width

    def _widen_to(self, exponent: int) -> None:
        """Double the bin width until it is ``2**exponent`` (sums bin pairs; exact)."""
        while self.exponent < exponent:
            pairs = self.hist.reshape(HALF_BINS, 2).sum(axis=1)
            self.hist = np.zeros_like(self.hist)
            self.hist[HALF_BINS // 2: HALF_BINS // 2 + HALF_BINS] = pairs
            self.exponent += 1

    def update(self, values: np.ndarray) -> None:
        """Add a batch of values (any shape); non-finite values are ignored."""
        flat = np.asarray(values, dtype=np.float32).reshape(-1)
        if flat.size == 0:
            return
        finite = np.isfinite(flat)
        if not finite.all():
            flat = flat[finite]
            if flat.size == 0:
                return
        lo, hi = float(flat.min()), float(flat.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += int(flat.size)
        if self.hist is None:
            return
        magnitude = max(abs(lo), abs(hi))
        if magnitude >= self.half_range:
            # smallest power-of-two width whose range holds the magnitude
            needed = math.frexp(magnitude / HALF_BINS)[1]
            self._widen_to(max(needed, MIN_EXPONENT))
        # bin = floor(x / w) + HALF_BINS; w is a power of two, so the float32 product is exact
        scaled = np.multiply(flat, np.float32(math.ldexp(1.0, -self.exponent)), dtype=np.float32)
        np.floor(scaled, out=scaled)
        np.clip(scaled, -HALF_BINS, HALF_BINS - 1, out=scaled)
        index = scaled.astype(np.int32)
        index += HALF_BINS
        self.hist += np.bincount(index, minlength=2 * HALF_BINS)

    def merge(self, other: "TensorStats") -> "TensorStats":
        """A new TensorStats holding both ``self`` and ``other`` (neither is changed)."""
        a, b = self.copy(), other.copy()
        if a.hist is None or b.hist is None:
            return TensorStats(min(a.min, b.min), max(a.max, b.max), a.count + b.count, MIN_EXPONENT, None)
        exponent = max(a.exponent, b.exponent)
        a._widen_to(exponent)
        b._widen_to(exponent)
        return TensorStats(min(a.min, b.min), max(a.max, b.max), a.count + b.count, exponent, a.hist + b.hist)

    def copy(self) -> "TensorStats":
        return TensorStats(self.min, self.max, self.count, self.exponent, None if self.hist is None else self.hist.copy())

    def bin_edges(self) -> np.ndarray:
        return (np.arange(2 * HALF_BINS + 1, dtype=np.float64) - HALF_BINS) * self.bin_width

    def to_dict(self) -> dict:
        if self.hist is None:
            return {"min": self.min, "max": self.max, "count": self.count}
        nonzero = np.flatnonzero(self.hist)
        return {"min": self.min, "max": self.max, "count": self.count, "exponent": self.exponent,
                "bins": nonzero.tolist(), "counts": self.hist[nonzero].tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "TensorStats":
        if "bins" not in d:
            return cls(float(d["min"]), float(d["max"]), int(d["count"]), MIN_EXPONENT, None)
        hist = np.zeros(2 * HALF_BINS, np.int64)
        hist[np.asarray(d["bins"], dtype=np.int64)] = np.asarray(d["counts"], dtype=np.int64)
        return cls(float(d["min"]), float(d["max"]), int(d["count"]), int(d["exponent"]), hist)


@dataclasses.dataclass
class CalibrationStats:
    """Statistics of every calibrated tensor, by name; mergeable across runs."""

    tensors: dict[str, TensorStats] = dataclasses.field(default_factory=dict)
    samples: int = 0

    def update(self, values: dict[str, np.ndarray], samples: int, *, histogram: bool = True) -> None:
        for name, value in values.items():
            if name not in self.tensors:
                self.tensors[name] = TensorStats() if histogram else TensorStats(hist=None)
            self.tensors[name].update(value)
        self.samples += samples

    def merge(self, other: "CalibrationStats") -> "CalibrationStats":
        merged = {name: s.copy() for name, s in self.tensors.items()}
        for name, s in other.tensors.items():
            merged[name] = merged[name].merge(s) if name in merged else s.copy()
        return CalibrationStats(merged, self.samples + other.samples)

    def to_dict(self) -> dict:
        return {"samples": self.samples, "tensors": {n: s.to_dict() for n, s in self.tensors.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "CalibrationStats":
        return cls({n: TensorStats.from_dict(s) for n, s in d["tensors"].items()}, int(d["samples"]))
