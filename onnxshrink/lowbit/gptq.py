"""Error-compensated rounding (GPTQ, Frantar et al., 2023) on the OBS sweep.

GPTQ is SparseGPT's column sweep with rounding instead of masking: columns
(input features) are rounded in order and each rounding error is spread over
the columns not yet rounded through the inverse Hessian of the layer's input.
The sweep itself is :func:`onnxshrink.stats.rounding.gptq_round` (shared
with static int8); the Hessian ``H = XᵀX`` comes from
:func:`onnxshrink.stats.layer_inputs.collect_layer_inputs`, in its matrix view
(Conv weights as ``[out, kh*kw*in]``, kernel position major). Scales are
fixed before the sweep (from the original weights), so the codes land on
the same grid a nearest rounding would use. Weights that are exactly zero
(pruned) stay zero: their column entry is forced to 0 and that change is
compensated like any other error.
"""

from __future__ import annotations

import numpy as np

from onnxshrink.lowbit.grid import Grid, code_range
from onnxshrink.roles import WeightUse
from onnxshrink.stats.layer_inputs import LayerInputStats, from_matrices, weight_matrices
from onnxshrink.stats.obs import reconstruction_error
from onnxshrink.stats.rounding import gptq_round


def gptq_codes(w: np.ndarray, scales: np.ndarray, grid: Grid, use: WeightUse, stats: LayerInputStats, *,
               sparsity: float = 0.0, block_size: int = 128, damp: float = 0.01) -> np.ndarray:
    """Codes (float64, weight shape) of ``w`` on ``grid`` with ``scales``,
    rounded by GPTQ against ``stats.hessian``; with ``sparsity`` the lowest
    OBS scores of each row are also pruned in the same sweep. ``w`` is not
    changed."""
    layout = stats.layout
    element = grid.expand(scales, w.shape).astype(np.float64)
    lo, hi = code_range(grid.bits)
    codes = gptq_round(weight_matrices(w.astype(np.float64), layout, use), weight_matrices(element, layout, use),
                       stats.hessian, lo, hi, keep_zero=weight_matrices(w == 0, layout, use), sparsity=sparsity,
                       block_size=block_size, damp=damp)
    return from_matrices(codes, layout, use)


def output_error(w: np.ndarray, w_hat: np.ndarray, use: WeightUse, stats: LayerInputStats) -> float:
    """Relative output error of the layer, ``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)``, estimated from its Hessian."""
    layout = stats.layout
    return reconstruction_error(weight_matrices(w.astype(np.float64), layout, use),
                                weight_matrices(w_hat.astype(np.float64), layout, use), stats.hessian)
