"""How static int8 rounds its weights: to nearest, or by GPTQ against the layer input Hessians.

With calibration data, each quantized Conv/Gemm/MatMul weight is rounded by
GPTQ (:func:`onnxshrink.stats.rounding.gptq_round`): columns (input
features) are rounded in turn and each rounding error is spread over the
columns not yet rounded through the inverse Hessian ``H = XᵀX`` of the
layer's float input on the calibration data. The per-channel scales and the
code bound (64 on x86-avx2) are those a nearest rounding uses; only which
code each weight gets changes. Per layer the rounding with the lower
estimated output error ``tr(ΔW H ΔWᵀ)`` is kept (on the undamped Hessian,
GPTQ nearly always, but not by construction). Weights that are exactly zero
keep code 0. Layers without a Hessian (batched MatMul weights, more than
:data:`~onnxshrink.stats.layer_inputs.HESSIAN_MAX_FEATURES` features, shared
weights read as different shapes) round to nearest.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

import numpy as np
import onnx

from onnxshrink.data import NpzData, iter_batches, model_inputs
from onnxshrink.quantization.options import WEIGHT_ROUNDINGS  # noqa: F401  (re-exported)
from onnxshrink.roles import WeightUse, weight_uses
from onnxshrink.stats.layer_inputs import (
    ROWS_PER_FEATURE,
    LayerInputStats,
    collect_layer_inputs,
    from_matrices,
    weight_matrices,
)
from onnxshrink.stats.rounding import gptq_round, output_error

LAYER_OPS = ("Conv", "Gemm", "MatMul")
# Damping of the Hessian diagonal (a fraction of its mean), as GPTQ's reference code.
DAMP = 0.01


def layer_statistics(model: onnx.ModelProto, types: dict[str, int], data: Any, batch_size: int,
                     progress: Callable[[str, int, int], None] | None = None) -> dict[str, LayerInputStats]:
    """Input Hessians of every Conv/Gemm/MatMul weight of ``model`` whose layer
    input is float32 (``types``: value name -> element type) over ``data`` (read
    once more), by weight name; ``model`` is not changed."""
    uses = [u for u in weight_uses(model) if u.op_type in LAYER_OPS and u.node.input
            and types.get(u.node.input[0]) == onnx.TensorProto.FLOAT]
    if isinstance(data, (str, os.PathLike)):
        data = NpzData(data)
    # About ROWS_PER_FEATURE x F rows (at least 4096) in all, not per batch:
    # Conv layers read every spatial position, and XᵀX of them all costs more
    # than the rest of the quantize run while adding little to the estimate.
    parts = (-(-data.num_samples // batch_size) if isinstance(data, NpzData)
             else len(data) if isinstance(data, (list, tuple)) else 1)  # batches it will yield
    parts = max(parts, 1)
    batches: Iterable = iter_batches(data, model_inputs(model), batch_size)
    return collect_layer_inputs(model, uses, batches, ("hessian",), progress=progress,
                                rows_per_feature=ROWS_PER_FEATURE / parts, min_rows=-(-4096 // parts))


def nearest_codes(weight: np.ndarray, steps: np.ndarray, levels: int) -> np.ndarray:
    """``round(w / step)`` clipped to [-levels, levels], as int8 (zeros stay 0)."""
    return np.clip(np.rint(weight.astype(np.float32) / steps.astype(np.float32)), -levels, levels).astype(np.int8)


class WeightRounder:
    """Rounds int8 weights by GPTQ on ``stats`` (weight name -> its input
    statistics), remembering each result: a quantize run builds the model
    again for each placement the latency guard or the search tries, with the
    same weights and scales."""

    def __init__(self, stats: dict[str, LayerInputStats]):
        self.stats = stats
        self._done: dict[tuple, tuple[np.ndarray, str]] = {}

    def codes(self, use: WeightUse, weight: np.ndarray, scale: np.ndarray, axis: int | None,
              levels: int) -> tuple[np.ndarray, str]:
        """(int8 codes of ``weight`` with ``scale`` per channel along ``axis``
        (or one), within [-levels, levels]; "gptq" or "nearest", the rounding used)."""
        steps = np.broadcast_to(scale if axis is None else
                                scale.reshape([-1 if d == axis else 1 for d in range(weight.ndim)]), weight.shape)
        nearest = nearest_codes(weight, steps, levels)
        stats = self.stats.get(use.weight.name)
        if stats is None or stats.hessian is None or stats.layout.shape != tuple(weight.shape) \
                or stats.layout.op_type != use.op_type:
            return nearest, "nearest"
        key = (use.weight.name, axis, levels, scale.tobytes(), weight.tobytes())
        if key not in self._done:
            self._done[key] = self._gptq(use, stats, weight, steps, nearest, levels)
        codes, how = self._done[key]
        return codes.copy(), how

    @staticmethod
    def _gptq(use: WeightUse, stats: LayerInputStats, weight: np.ndarray, steps: np.ndarray, nearest: np.ndarray,
              levels: int) -> tuple[np.ndarray, str]:
        layout = stats.layout
        wm = weight_matrices(weight.astype(np.float64), layout, use)
        sm = weight_matrices(steps.astype(np.float32).astype(np.float64), layout, use)
        swept = gptq_round(wm, sm, stats.hessian, -levels, levels, keep_zero=weight_matrices(weight == 0, layout, use),
                           damp=DAMP)
        codes = from_matrices(swept, layout, use).astype(np.int8)
        nm = weight_matrices(nearest.astype(np.float64), layout, use) * sm
        gm = swept * sm
        if output_error(wm, gm, stats.hessian) <= output_error(wm, nm, stats.hessian):
            return codes, "gptq"
        return nearest, "nearest"
