"""From a tensor's calibration statistics to the float range an 8-bit grid covers.

One function per method, registered by name: ``minmax`` (the observed range),
``percentile`` (drop the outer tails), ``entropy`` (the clipping threshold
whose quantized histogram is closest in KL divergence, as in TensorRT) and
``mse`` (the clipping that minimises the expected squared error). Every
method returns ``(lo, hi)`` with ``lo <= 0 <= hi``, inside the observed range.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from onnxshrink.errors import UsageError
from onnxshrink.quantization.stats import HALF_BINS, TensorStats

RangeMethod = Callable[[TensorStats, int, float], tuple[float, float]]
RANGE_METHODS: dict[str, RangeMethod] = {}


def register_range_method(name: str) -> Callable[[RangeMethod], RangeMethod]:
    def add(fn: RangeMethod) -> RangeMethod:
        RANGE_METHODS[name] = fn
        return fn

    return add


def activation_range(stats: TensorStats, method: str, levels: int = 256, percentile: float = 99.99) -> tuple[float, float]:
    """The range ``[lo, hi]`` (``lo <= 0 <= hi``) to quantize a tensor onto ``levels`` steps."""
    if stats.count == 0:
        return 0.0, 0.0
    if stats.hist is None and method != "minmax":
        raise UsageError(f"--method {method} needs histograms; these statistics hold only min/max "
                         "(collect them with a histogram method)")
    lo, hi = RANGE_METHODS[method](stats, levels, percentile)
    lo = max(min(lo, 0.0), min(stats.min, 0.0))
    hi = min(max(hi, 0.0), max(stats.max, 0.0))
    return float(lo), float(hi)


@register_range_method("minmax")
def _minmax(stats: TensorStats, levels: int, percentile: float) -> tuple[float, float]:
    return stats.min, stats.max


@register_range_method("percentile")
def _percentile(stats: TensorStats, levels: int, percentile: float) -> tuple[float, float]:
    cumulative = np.cumsum(stats.hist)
    total = cumulative[-1]
    tail = total * (100.0 - percentile) / 100.0
    edges = stats.bin_edges()
    low_bin = int(np.searchsorted(cumulative, tail, side="right"))
    high_bin = int(np.searchsorted(cumulative, total - tail, side="left"))
    return float(edges[low_bin]), float(edges[min(high_bin + 1, 2 * HALF_BINS)])


def _folded(stats: TensorStats) -> tuple[np.ndarray, np.ndarray]:
    """|x| histogram: counts over [k*w, (k+1)*w), k = 0..HALF_BINS-1, and its upper edges."""
    positive = stats.hist[HALF_BINS:].copy()
    positive += stats.hist[:HALF_BINS][::-1]
    return positive, (np.arange(HALF_BINS) + 1) * stats.bin_width


@register_range_method("entropy")
def _entropy(stats: TensorStats, levels: int, percentile: float) -> tuple[float, float]:
    counts, upper = _folded(stats)
    signed = stats.min < 0 < stats.max
    target = levels // 2 if signed else levels
    last = int(np.flatnonzero(counts)[-1]) + 1 if counts.any() else 0
    if last <= target:
        return stats.min, stats.max
    best, best_kl = last, np.inf
    for end in range(target, last + 1, max(1, (last - target) // 256)):
        sliced = counts[:end].astype(np.float64)
        p = sliced.copy()
        p[-1] += counts[end:].sum()  # the reference keeps the clipped tail in its last bin ...
        # ... the candidate does not: its `target` levels are spread evenly over their nonzero bins
        groups = np.minimum((np.arange(end) * target) // end, target - 1)
        nonzero = p > 0
        level_sum = np.bincount(groups, weights=sliced, minlength=target)
        level_nz = np.bincount(groups, weights=nonzero, minlength=target)
        q = np.where(nonzero, level_sum[groups] / np.maximum(level_nz[groups], 1), 0.0)
        p_sum, q_sum = p.sum(), q.sum()
        if q_sum == 0:
            continue
        pn, qn = p / p_sum, q / q_sum
        mask = pn > 0
        kl = float(np.sum(pn[mask] * np.log(pn[mask] / np.maximum(qn[mask], 1e-12))))
        if kl < best_kl:
            best, best_kl = end, kl
    threshold = float(upper[best - 1])
    return max(stats.min, -threshold), min(stats.max, threshold)


@register_range_method("mse")
def _mse(stats: TensorStats, levels: int, percentile: float) -> tuple[float, float]:
    lo, hi = min(stats.min, 0.0), max(stats.max, 0.0)
    if hi - lo <= 0:
        return lo, hi
    edges = stats.bin_edges()
    centres = (edges[:-1] + edges[1:]) / 2
    used = stats.hist > 0
    x, n = centres[used], stats.hist[used].astype(np.float64)
    shrink = np.linspace(0.3, 1.0, 141)[:, None]  # candidate clippings, vectorised over bins
    c_lo, c_hi = lo * shrink, hi * shrink
    step = (c_hi - c_lo) / (levels - 1)
    clipped = np.clip(x[None, :], c_lo, c_hi)
    error = (x[None, :] - clipped) ** 2 + step**2 / 12.0
    best = int(np.argmin((error * n[None, :]).sum(axis=1)))
    return float(c_lo[best, 0]), float(c_hi[best, 0])
