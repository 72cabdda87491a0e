"""Error-compensated rounding (GPTQ, Frantar et al., 2023) on the OBS sweep.

GPTQ is SparseGPT's column sweep with rounding instead of masking: columns
(input features) are rounded in order and each rounding error is spread over
the columns not yet rounded through the inverse Hessian of the layer's input.
The sweep itself is :func:`onnxshrink.pruning.obs.obs_prune` with a
``quantize`` callback; the Hessian ``H = XᵀX`` comes from
:func:`onnxshrink.activations.collect_layer_inputs`, in its matrix view
(Conv weights as ``[out, kh*kw*in]``, kernel position major). Scales are
fixed before the sweep (from the original weights), so the codes land on
the same grid a nearest rounding would use. Weights that are exactly zero
(pruned) stay zero: their column entry is forced to 0 and that change is
compensated like any other error.
"""

from __future__ import annotations

import numpy as np

from onnxshrink.activations import LayerInputStats, from_matrices, weight_matrices
from onnxshrink.lowbit.grid import Grid, code_range
from onnxshrink.pruning.obs import obs_prune, reconstruction_error
from onnxshrink.roles import WeightUse


def _live_hessian(hessian: np.ndarray) -> np.ndarray:
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


def gptq_codes(w: np.ndarray, scales: np.ndarray, grid: Grid, use: WeightUse, stats: LayerInputStats, *,
               sparsity: float = 0.0, block_size: int = 128, damp: float = 0.01) -> np.ndarray:
    """Codes (float64, weight shape) of ``w`` on ``grid`` with ``scales``,
    rounded by GPTQ against ``stats.hessian``; with ``sparsity`` the lowest
    OBS scores of each row are also pruned in the same sweep. ``w`` is not
    changed."""
    layout = stats.layout
    element = grid.expand(scales, w.shape).astype(np.float64)
    wm = weight_matrices(w.astype(np.float64), layout, use)
    sm = weight_matrices(element, layout, use)
    zm = weight_matrices(w == 0, layout, use)
    lo, hi = code_range(grid.bits)

    def on_grid(column: np.ndarray, index: int) -> np.ndarray:
        s = sm[:, :, index]
        q = np.clip(np.rint(column / s), lo, hi) * s
        return np.where(zm[:, :, index], 0.0, q)

    swept = obs_prune(wm, _live_hessian(stats.hessian), sparsity=sparsity, block_size=block_size, damp=damp,
                      quantize=on_grid)
    return np.clip(np.rint(from_matrices(swept, layout, use) / element), lo, hi)


def output_error(w: np.ndarray, w_hat: np.ndarray, use: WeightUse, stats: LayerInputStats) -> float:
    """Relative output error of the layer, ``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)``, estimated from its Hessian."""
    layout = stats.layout
    return reconstruction_error(weight_matrices(w.astype(np.float64), layout, use),
                                weight_matrices(w_hat.astype(np.float64), layout, use), stats.hessian)
