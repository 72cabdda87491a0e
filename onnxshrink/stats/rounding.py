"""Error-compensated rounding (GPTQ, Frantar et al., 2023) of weight matrices on a fixed grid.

GPTQ is SparseGPT's column sweep with rounding instead of masking: columns
(input features) are rounded in order and each rounding error is spread over
the columns not yet rounded through the inverse Hessian ``H = XᵀX`` of the
layer's input (:func:`onnxshrink.stats.obs.obs_prune` with a ``quantize``
callback). The grid is given (one step per weight, fixed before the sweep),
so codes land where a nearest rounding would put them give or take a few
steps, and always within ``[lo, hi]``. Both weight-only low-bit
(:mod:`onnxshrink.lowbit.gptq`) and static int8 (:mod:`onnxshrink.quantization`)
round through :func:`gptq_round`.
"""

from __future__ import annotations

import numpy as np

from onnxshrink.stats.obs import obs_prune


# Rows swept at once hold at most this many bytes of float64 weights.
SWEEP_BYTES = 32 << 20


def live_hessian(hessian: np.ndarray) -> np.ndarray:
    """``hessian`` with features the data never reached (zero diagonal) given a
    tiny positive diagonal: they are uncoupled from the rest, so the sweep
    rounds them to nearest instead of zeroing them as pruning does (data
    outside calibration may still reach them)."""
    h = np.array(hessian, dtype=np.float64, copy=True)
    diag = np.einsum("gii->gi", h)
    live = diag > 0
    floor = np.where(live.any(axis=1), np.where(live, diag, 0).sum(axis=1) / np.maximum(live.sum(axis=1), 1), 1.0)
    gi, fi = np.nonzero(~live)
    h[gi, fi, fi] = 1e-6 * floor[gi]
    return h


def gptq_round(weights: np.ndarray, steps: np.ndarray, hessian: np.ndarray, lo: int, hi: int, *,
               keep_zero: np.ndarray | None = None, sparsity: float = 0.0, block_size: int = 128,
               damp: float = 0.01, act_order: bool = False, dtype: type = np.float64) -> np.ndarray:
    """Integer codes (``dtype``, [groups, rows, features]) of ``weights`` on the
    grid ``steps`` (the value of one code per weight; any shape that broadcasts,
    such as [groups, rows, 1] for per-row scales), rounded by GPTQ against
    ``hessian`` [groups, features, features] and clipped to ``[lo, hi]``.
    Entries of ``keep_zero`` get code 0 (that change is compensated like any
    rounding error); with ``sparsity`` the lowest OBS scores of each row are
    also pruned in the same sweep. ``act_order`` rounds features by
    decreasing Hessian diagonal (the most read first), as GPTQ's act-order
    does. Rows are independent, so they are swept in blocks of at most
    :data:`SWEEP_BYTES` (float64) with one factorisation of the Hessian; codes
    come back as ``dtype``. The inputs are not changed."""
    w = weights
    s = np.broadcast_to(np.asarray(steps, dtype=np.float64), w.shape)
    zero = np.zeros(w.shape, bool) if keep_zero is None else np.asarray(keep_zero, bool)
    h = live_hessian(hessian)
    order = None
    if act_order:
        # stable: ties keep feature order, so the result is the same on every run
        order = np.argsort(-np.einsum("gii->gi", h).mean(axis=0), kind="stable")
        w, s, zero = w[:, :, order], s[:, :, order], zero[:, :, order]
        h = np.ascontiguousarray(h[:, order][:, :, order])

    groups, rows, features = w.shape
    codes = np.empty(w.shape, dtype)
    step = max(1, SWEEP_BYTES // (8 * groups * features))
    for start in range(0, rows, step):
        part = slice(start, start + step)
        s_part, zero_part = s[:, part], zero[:, part]

        def on_grid(column: np.ndarray, index: int) -> np.ndarray:
            q = np.clip(np.rint(column / s_part[:, :, index]), lo, hi) * s_part[:, :, index]
            return np.where(zero_part[:, :, index], 0.0, q)

        swept = obs_prune(w[:, part], h, sparsity=sparsity, block_size=block_size, damp=damp, quantize=on_grid)
        np.divide(swept, s_part, out=swept)  # in place: the sweep's array becomes the codes
        codes[:, part] = np.clip(np.rint(swept, out=swept), lo, hi, out=swept)
    if order is not None:
        codes = codes[:, :, np.argsort(order)]
    return codes


def rounding_error(weights: np.ndarray, codes: np.ndarray, steps: np.ndarray, hessian: np.ndarray,
                   rows: int = 256) -> float:
    """The layer output error ``tr(ΔW H ΔWᵀ)`` of ``codes x steps`` against
    ``weights`` (all [groups, rows, features], ``steps`` broadcast), a block of
    ``rows`` rows at a time so that no full float64 copy is made."""
    s = np.broadcast_to(np.asarray(steps, dtype=np.float64), weights.shape)
    total = 0.0
    for start in range(0, weights.shape[1], rows):
        part = slice(start, start + rows)
        delta = codes[:, part].astype(np.float64) * s[:, part] - weights[:, part]
        total += float((np.matmul(delta, hessian) * delta).sum())
    return total
