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
weights read as different shapes, those past :data:`HESSIAN_BUDGET_BYTES`)
round to nearest.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import onnx

from onnxshrink.data import Batch, NpzData, iter_batches, model_inputs
from onnxshrink.quantization.options import WEIGHT_ROUNDINGS  # noqa: F401  (re-exported)
from onnxshrink.roles import WeightUse, weight_uses
from onnxshrink.runtime import capture, release_memory
from onnxshrink.stats.layer_inputs import (
    HESSIAN_MAX_FEATURES,
    ROWS_PER_FEATURE,
    LayerInputStats,
    collect_layer_inputs,
    from_matrices,
    layer_layout,
    weight_matrices,
)
from onnxshrink.stats.rounding import gptq_round, rounding_error

LAYER_OPS = ("Conv", "Gemm", "MatMul")
# Damping of the Hessian diagonal (a fraction of its mean), as GPTQ's reference code.
DAMP = 0.01
# Hessians (float64 running sums) of at most this many bytes in all; later layers round to nearest.
HESSIAN_BUDGET_BYTES = 1 << 30
# Captured layer inputs of one onnxruntime run stay under this many bytes (calibration's cap).
RUN_BYTES = 64 << 20


def layer_statistics(model: onnx.ModelProto, types: dict[str, int], data: Any, batch_size: int,
                     progress: Callable[[str, int, int], None] | None = None) -> dict[str, LayerInputStats]:
    """Input Hessians of the Conv/Gemm/MatMul weights of ``model`` whose layer
    input is float32 (``types``: value name -> element type) over ``data`` (read
    once more), by weight name, in graph order until their running sums would
    pass :data:`HESSIAN_BUDGET_BYTES` (later layers round to nearest). Each
    onnxruntime run holds at most about :data:`RUN_BYTES` of layer inputs
    (batches are split, as calibration's are). ``model`` is not changed."""
    uses = _within_budget([u for u in weight_uses(model) if u.op_type in LAYER_OPS and u.node.input
                           and types.get(u.node.input[0]) == onnx.TensorProto.FLOAT])
    if not uses:
        return {}
    if isinstance(data, (str, os.PathLike)):
        data = NpzData(data)
    specs = model_inputs(model)
    fixed_batch = any(s.shape and s.shape[0] is not None and s.shape[0] > 0 for s in specs)
    chunk = batch_size if fixed_batch else _samples_per_run(model, uses, next(_split(iter_batches(data, specs, 1), 1)), batch_size)
    # About ROWS_PER_FEATURE x F rows (at least 4096) in all, not per run:
    # Conv layers read every spatial position, and XᵀX of them all costs more
    # than the rest of the quantize run while adding little to the estimate.
    if isinstance(data, NpzData):
        parts = -(-data.num_samples // chunk)
    else:
        parts = sum(-(-len(b) // chunk) for b in data) if isinstance(data, (list, tuple)) else 1
    parts = max(parts, 1)
    batches: Iterable = iter_batches(data, specs, chunk if isinstance(data, NpzData) else batch_size)
    if not fixed_batch:
        batches = _split(batches, chunk)
    stats = collect_layer_inputs(model, uses, batches, ("hessian",), progress=progress,
                                 rows_per_feature=ROWS_PER_FEATURE / parts, min_rows=-(-4096 // parts))
    release_memory()  # the capture session's arena, before the model is built
    return stats


def _within_budget(uses: list[WeightUse]) -> list[WeightUse]:
    """The uses whose weights get a Hessian: in graph order, while the running
    sums (float64, groups x F x F) fit in HESSIAN_BUDGET_BYTES."""
    kept, taken, total = [], set(), 0
    for use in uses:
        layout = layer_layout(use)
        if layout is None or layout.features > HESSIAN_MAX_FEATURES:
            continue
        if use.weight.name not in taken:
            size = 8 * layout.groups * layout.features ** 2
            if total + size > HESSIAN_BUDGET_BYTES:
                continue
            total += size
            taken.add(use.weight.name)
        kept.append(use)
    return kept


def _samples_per_run(model: onnx.ModelProto, uses: list[WeightUse], one: Batch, batch_size: int) -> int:
    """Samples per onnxruntime run so that the captured layer inputs stay
    under RUN_BYTES, measured on the one-sample batch ``one``."""
    graph_inputs = {i.name for i in model.graph.input}
    names = [n for n in dict.fromkeys(u.node.input[0] for u in uses) if n not in graph_inputs]
    if not names or len(one) != 1:
        return batch_size
    per_sample = max(1, sum(v.nbytes for _, values in capture(model, names, [one]) for v in values.values()))
    return int(max(1, min(batch_size, RUN_BYTES // per_sample)))


def _split(batches: Iterable[Batch], size: int) -> Iterator[Batch]:
    """``batches`` in pieces of at most ``size`` samples, where every input is batched along axis 0."""
    for batch in batches:
        n = len(batch)
        if n <= size or batch.size is not None or not all(
                np.ndim(a) and np.shape(a)[0] == n for a in batch.inputs.values()):
            yield batch
            continue
        for start in range(0, n, size):
            part = slice(start, start + size)
            yield Batch({k: v[part] for k, v in batch.inputs.items()},
                        None if batch.labels is None else batch.labels[part],
                        reset=None if batch.reset is None else batch.reset[part])


class WeightRounder:
    """Rounds int8 weights by GPTQ on ``stats`` (weight name -> its input
    statistics), remembering each result: a quantize run builds the model
    again for each placement the latency guard or the search tries, with the
    same weights and scales."""

    def __init__(self, stats: dict[str, LayerInputStats]):
        self.stats = stats
        self._done: dict[tuple, tuple[np.ndarray, str]] = {}

    def codes(self, use: WeightUse, weight: np.ndarray, scale: np.ndarray, axis: int | None, levels: int,
              nearest: np.ndarray) -> tuple[np.ndarray, str]:
        """(int8 codes of ``weight`` (float32) with ``scale`` per channel along
        ``axis`` (or one), within [-levels, levels]; "gptq" or "nearest", the
        rounding used). ``nearest`` are its codes rounded to nearest, what a
        layer without a Hessian keeps."""
        stats = self.stats.get(use.weight.name)
        if stats is None or stats.hessian is None or stats.layout.shape != tuple(weight.shape) \
                or stats.layout.op_type != use.op_type or axis not in (None, use.out_axis):
            return nearest, "nearest"
        # The weight of one name is the same all run long (alpha folded in: shape and scale tell it apart).
        key = (use.weight.name, axis, levels, scale.tobytes(), float(np.abs(weight).sum(dtype=np.float64)))
        if key not in self._done:
            self._done[key] = self._gptq(use, stats, weight, scale, axis, nearest, levels)
        codes, how = self._done[key]
        return codes.copy(), how

    @staticmethod
    def _gptq(use: WeightUse, stats: LayerInputStats, weight: np.ndarray, scale: np.ndarray, axis: int | None,
              nearest: np.ndarray, levels: int) -> tuple[np.ndarray, str]:
        layout = stats.layout
        # One step per row of the matrix view: per-channel scales are per output channel (its rows).
        steps = (scale.astype(np.float64).reshape(layout.groups, layout.rows, 1) if axis is not None
                 else np.full((1, 1, 1), float(scale), np.float64))
        wm = weight_matrices(weight, layout, use)
        swept = gptq_round(wm, steps, stats.hessian, -levels, levels, keep_zero=wm == 0, damp=DAMP, dtype=np.int8)
        if rounding_error(wm, swept, steps, stats.hessian) > rounding_error(
                wm, weight_matrices(nearest, layout, use), steps, stats.hessian):
            return nearest, "nearest"
        return np.ascontiguousarray(from_matrices(swept, layout, use)), "gptq"
