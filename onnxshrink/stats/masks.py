"""Which weights to zero: masks from importance scores, counted exactly.

Masks are chosen by count (the ``k`` lowest scores), not by a threshold, so
ties (constant tensors) still give the requested sparsity. ``True`` in a mask
means "prune". N:M patterns group ``m`` consecutive elements along a weight's
input-channel axis and prune the ``n`` least important of each group.
"""

from __future__ import annotations

import numpy as np

from onnxshrink.errors import UsageError


def lowest(scores: np.ndarray, count: int) -> np.ndarray:
    """Mask of the ``count`` lowest entries of ``scores`` (any shape)."""
    flat = scores.reshape(-1)
    mask = np.zeros(flat.shape, bool)
    count = int(min(max(count, 0), flat.size))
    if count:
        mask[np.argpartition(flat, count - 1, kind="introselect")[:count]] = True
    return mask.reshape(scores.shape)


def lowest_per_row(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Mask of the lowest ``fraction`` of each row (last axis) of ``scores``."""
    width = scores.shape[-1]
    count = int(round(fraction * width))
    mask = np.zeros(scores.shape, bool)
    if count <= 0:
        return mask
    if count >= width:
        return ~mask
    order = np.argpartition(scores, count - 1, axis=-1)[..., :count]
    np.put_along_axis(mask, order, True, axis=-1)
    return mask


def n_m_mask(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    """Mask pruning the ``n`` lowest of every ``m`` consecutive entries along
    the last axis (whose length must be a multiple of ``m``)."""
    if scores.shape[-1] % m:
        raise UsageError(f"an {n}:{m} pattern needs the input axis to be a multiple of {m}, got {scores.shape[-1]}")
    grouped = scores.reshape(scores.shape[:-1] + (scores.shape[-1] // m, m))
    order = np.argsort(grouped, axis=-1, kind="stable")[..., :n]
    mask = np.zeros(grouped.shape, bool)
    np.put_along_axis(mask, order, True, axis=-1)
    return mask.reshape(scores.shape)


def along_input_axis(array: np.ndarray, in_axis: int) -> np.ndarray:
    """``array`` with its input-channel axis last: the axis N:M groups run along."""
    return np.moveaxis(array, in_axis, -1)


def n_m_holds(array: np.ndarray, in_axis: int, n: int = 2, m: int = 4) -> bool:
    """Whether every group of ``m`` consecutive elements along ``in_axis`` has at least ``n`` zeros."""
    moved = along_input_axis(array, in_axis)
    if moved.shape[-1] % m:
        return False
    zeros = (moved.reshape(-1, m) == 0).sum(axis=1)
    return bool((zeros >= n).all())


def parse_n_m(pattern: str) -> tuple[int, int]:
    n, _, m = pattern.partition(":")
    return int(n), int(m)
