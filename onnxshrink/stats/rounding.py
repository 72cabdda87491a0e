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

from onnxshrink.stats.obs import obs_prune, reconstruction_error


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
               damp: float = 0.01, act_order: bool = False) -> np.ndarray:
    """Integer codes (float64, [groups, rows, features]) of ``weights`` on the
    grid ``steps`` (same shape, the value of one code per weight), rounded by
    GPTQ against ``hessian`` [groups, features, features] and clipped to
    ``[lo, hi]``. Entries of ``keep_zero`` get code 0 (that change is
    compensated like any rounding error); with ``sparsity`` the lowest OBS
    scores of each row are also pruned in the same sweep. ``act_order``
    rounds features by decreasing Hessian diagonal (the most read first), as
    GPTQ's act-order does. The inputs are not changed."""
    w = np.asarray(weights, dtype=np.float64)
    s = np.asarray(steps, dtype=np.float64)
    zero = np.zeros(w.shape, bool) if keep_zero is None else np.asarray(keep_zero, bool)
    h = live_hessian(hessian)
    order = None
    if act_order:
        # stable: ties keep feature order, so the result is the same on every run
        order = np.argsort(-np.einsum("gii->gi", h).mean(axis=0), kind="stable")
        w, s, zero = w[:, :, order], s[:, :, order], zero[:, :, order]
        h = np.ascontiguousarray(h[:, order][:, :, order])

    def on_grid(column: np.ndarray, index: int) -> np.ndarray:
        step = s[:, :, index]
        q = np.clip(np.rint(column / step), lo, hi) * step
        return np.where(zero[:, :, index], 0.0, q)

    swept = obs_prune(w, h, sparsity=sparsity, block_size=block_size, damp=damp, quantize=on_grid)
    codes = np.clip(np.rint(swept / s), lo, hi)
    if order is not None:
        codes = codes[:, :, np.argsort(order)]
    return codes


def output_error(weights: np.ndarray, rounded: np.ndarray, hessian: np.ndarray) -> float:
    """Relative layer output error ``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` of ``rounded`` against ``weights``,
    both [groups, rows, features]."""
    return reconstruction_error(np.asarray(weights, np.float64), np.asarray(rounded, np.float64), hessian)
