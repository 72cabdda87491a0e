"""Weight-only quantization: int8/int4 weights behind DequantizeLinear, float activations.

Which tensors are weights comes from their graph role: the weight input of
Conv, ConvTranspose, Gemm and MatMul, the W and R inputs of LSTM, GRU and RNN
(:mod:`onnxshrink.roles`) and the data
input of Gather (embedding tables), in the main graph and in If/Loop/Scan
bodies, as initializers or Constant nodes. Biases, norms and shape tensors
stay float.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from typing import Any, Callable

import numpy as np
import onnx

from onnxshrink.branch_folding import fold_branch_constants
from onnxshrink.cleanup import drop_inferred_value_info, growth_warning, remove_unused
from onnxshrink.data import NpzData
from onnxshrink.errors import GateFailed, UsageError
from onnxshrink.lowbit.dequantize import (UniqueNames, dequantize_in_graph, ensure_opset, required_opset,
                                          set_ir_version_for)
from onnxshrink.lowbit.gptq import gptq_codes, output_error
from onnxshrink.lowbit.grid import Grid, quantize_nearest, storage_bits
from onnxshrink.lowbit.options import WeightOnlyOptions
from onnxshrink.lowbit.report import WeightOnlyReport, WeightRecord
from onnxshrink.model import WeightRef, iter_weights, opset_version, serialized_size
from onnxshrink.roles import RECURRENT_OPS, WeightUse, embedding_uses, weight_uses
from onnxshrink.stats.calibration import load_calibration
from onnxshrink.stats.layer_inputs import ROWS_PER_FEATURE, LayerInputStats, collect_layer_inputs

Progress = Callable[[str, int, int], None]
KEPT_FLOAT = "kept float by layer_bits"  # the skipped-reason of weights layer_bits maps to None
QUANTIZABLE_DTYPES = (onnx.TensorProto.FLOAT,)


@dataclasses.dataclass
class WeightOnlyResult:
    """The quantized model (a new proto), whether anything changed, and the report."""

    model: onnx.ModelProto
    modified: bool
    report: WeightOnlyReport


@dataclasses.dataclass
class WeightTarget:
    """One weight tensor to quantize, with every node that reads it as a weight."""

    ref: WeightRef
    uses: list[WeightUse]
    bits: int

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def out_axis(self) -> int:
        return self.uses[0].out_axis

    @property
    def in_axis(self) -> int:
        return self.uses[0].in_axis

    def grid(self, block: int | None) -> Grid:
        return Grid(self.bits, self.out_axis) if block is None else Grid(self.bits, self.in_axis, block)


def weight_targets(model: onnx.ModelProto, options: WeightOnlyOptions) -> tuple[list[WeightTarget], dict[str, str]]:
    """The weights ``options`` quantize, in graph order, and those left float with the reason."""
    grouped: dict[int, list[WeightUse]] = {}
    # LSTM/GRU/RNN weights too: the op reads the dequantized float tensor like any other
    for use in [*weight_uses(model, include_recurrent=True), *embedding_uses(model)]:
        grouped.setdefault(id(use.weight.tensor), []).append(use)
    main_inputs = {vi.name for vi in model.graph.input}
    targets, skipped = [], {}
    for uses in grouped.values():
        ref = uses[0].weight
        names = [ref.name, *(u.node.name for u in uses if u.node.name)]
        bits = options.bits_for(ref.name)
        if any(fnmatch.fnmatchcase(n, p) for n in names for p in options.exclude):
            skipped[ref.name] = "excluded"
        elif bits is None:
            skipped[ref.name] = KEPT_FLOAT
        elif ref.tensor.data_type not in QUANTIZABLE_DTYPES:
            skipped[ref.name] = f"{onnx.TensorProto.DataType.Name(ref.tensor.data_type).lower()}, not float32"
        elif ref.size < options.min_size:
            skipped[ref.name] = f"{ref.size} elements < min_size {options.min_size}"
        elif ref.kind == "initializer" and ref.graph is model.graph and ref.name in main_inputs:
            skipped[ref.name] = "also a graph input (a caller may override it)"
        elif not np.isfinite(ref.array()).all():
            skipped[ref.name] = "holds NaN or Inf"
        else:
            targets.append(WeightTarget(ref, uses, bits))
    return targets, skipped


def _block(target: WeightTarget, options: WeightOnlyOptions) -> int | None:
    dims = target.ref.tensor.dims
    in_features = int(dims[target.in_axis]) if len(dims) > target.in_axis else None
    return options.block_for(target.bits, (u.op_type for u in target.uses), in_features)


def _model_opset_need(targets: list[WeightTarget], options: WeightOnlyOptions) -> int:
    return max((required_opset(t.bits, _block(t, options)) for t in targets), default=0)


def quantize_weights(
    model: onnx.ModelProto,
    options: WeightOnlyOptions,
    *,
    calib: Any = None,
    eval_data: Any = None,
    progress: Progress | None = None,
    name: str = "model",
    layer_stats: dict[str, LayerInputStats] | None = None,
    measure_latency: bool = True,
    codes_cache: dict | None = None,
    compare: bool = True,
) -> WeightOnlyResult:
    """Quantize the weights of a copy of ``model`` as ``options`` say; ``model``
    is not changed.

    ``calib`` (an .npz path, NpzData, reader or batches) is needed by
    ``rounding="gptq"`` and, when given, also yields the output error
    estimate of each layer. The default-domain opset is raised (21 for int4
    or blocked scales, 13 for per-channel int8) when the model's is lower.
    The result is compared to ``model`` on ``eval_data`` (else ``calib``, else
    random inputs, which give no verdict) and the comparison is in the report;
    with ``options.gate_floor`` a result that fails the default floor is
    refused (GateFailed, exit 1). ``compare=False`` (a caller that checks
    the result itself, as the shrink search's width mix does with each of
    its candidates) leaves the comparison out: it runs the original and the
    result once each. ``layer_stats`` (from
    :func:`collect_weight_statistics` on the same model and data) skips
    collecting them again, for sweeps over bits and rounding. ``codes_cache``
    (a dict the caller keeps, with the same ``layer_stats``) carries each
    weight's codes from one call to the next, keyed by its values, width,
    grid and rounding: a sweep over per-layer widths rounds each weight at
    each width once. With ``measure_latency`` the result, as written
    (DequantizeLinear before each weight), is timed against ``model`` (the
    report's ``latency``; a slower one gets a warning naming the faster load
    forms of a packed copy). Raises UsageError for options the data cannot
    serve and UnsupportedModelError when the opset cannot be raised.
    """
    progress = progress or (lambda task, done, total: None)
    if options.rounding == "gptq" and calib is None and layer_stats is None:
        raise UsageError("--rounding gptq needs calibration data: give --calib DATA (an .npz of model inputs)")
    # Weights an exporter rearranges inside If/Loop bodies (an LSTM's gates) become constants first.
    work = fold_branch_constants(model).model
    if work is model:
        work = onnx.ModelProto()
        work.CopyFrom(model)
    opset_before = opset_version(work)
    targets, skipped = weight_targets(work, options)
    need = _model_opset_need(targets, options)
    if need > opset_before:
        work = ensure_opset(work, need, name)
        targets, skipped = weight_targets(work, options)
    stats: dict[str, LayerInputStats] = dict(layer_stats or {})
    samples = 0
    if calib is not None and targets and layer_stats is None:
        stats, samples = _statistics(work, targets, calib, options, progress)
    planned = []
    for done, target in enumerate(targets, 1):
        planned.append((target, *_cached_quantize_one(target, _block(target, options), options, stats.get(target.name),
                                                      codes_cache)))
        progress("quantizing weights", done, len(targets))
    names = UniqueNames(work)
    for target, codes, scales, _ in planned:
        dequantize_in_graph(target.ref, codes, scales, target.grid(_block(target, options)), names)
    set_ir_version_for(work)
    remove_unused(work)
    drop_inferred_value_info(work, model)  # the opset converter's
    sizes = {"original": serialized_size(model), "quantized": serialized_size(work)}
    grew = growth_warning(sizes["original"], sizes["quantized"], "the weight-only model")
    report = WeightOnlyReport(
        options=options.to_dict(), weights=[record for *_, record in planned], skipped=skipped,
        opset_before=opset_before, opset_after=opset_version(work),
        size_bytes=sizes, calibration_samples=samples, warnings=[grew] if grew else [],
    )
    # Calibration data that can be read again (a one-shot reader was spent on the statistics).
    data = eval_data if eval_data is not None else (calib if isinstance(calib, (str, os.PathLike, NpzData, list, tuple))
                                                    else None)
    if compare and data is None and options.gate_floor:
        report.warnings.append("not checked against the original: no --eval or --calib data to run it on")
    elif compare and data is not None:
        from onnxshrink.validation import DEFAULT_FLOOR, Gate, compare_models, floor_failure

        validation = compare_models(model, work, data, gate=DEFAULT_FLOOR if options.gate_floor else Gate(),
                                    state=options.state, measure_latency=False,
                                    checked_on="eval data" if eval_data is not None else "calibration data")
        report.validation = validation.to_dict()
        if validation.passed is False:
            raise GateFailed(floor_failure("the weight-only model", validation))
    if measure_latency:
        from onnxshrink.latency import time_result

        latency = time_result(model, work, data)
        report.latency = latency.to_dict() if latency is not None else None
        slower = latency.slower_text("the weight-only model") if latency is not None else None
        if slower:
            report.warnings.append(slower + ": onnxruntime dequantizes its weights on every run as written; packed "
                                   "(onnxshrink pack), onnxshrink.session and unpack load its 4/8-bit MatMul/Gemm "
                                   "layers on onnxruntime's low-bit kernels and the rest as float32")
    return WeightOnlyResult(work, bool(planned), report)


def collect_weight_statistics(model: onnx.ModelProto, calib: Any, options: WeightOnlyOptions,
                              progress: Progress | None = None) -> dict[str, LayerInputStats]:
    """Input Hessians of the weights ``options`` select in ``model``, from
    ``calib``, for reuse across several :func:`quantize_weights` calls."""
    return _statistics(model, weight_targets(model, options)[0], calib, options, progress)[0]


def _statistics(model: onnx.ModelProto, targets: list[WeightTarget], calib: Any, options: WeightOnlyOptions,
                progress: Progress | None) -> tuple[dict[str, LayerInputStats], int]:
    # The shared collector (the one Hessian pruning uses); Gather tables have no layer input.
    batches = load_calibration(calib, model, options)
    uses = [u for t in targets for u in t.uses if u.op_type not in ("Gather", *RECURRENT_OPS)]
    stats = collect_layer_inputs(model, uses, batches, ("hessian",), progress=progress, total_batches=len(batches),
                                 rows_per_feature=ROWS_PER_FEATURE)
    return stats, sum(len(b) for b in batches)


def _cached_quantize_one(target: WeightTarget, block: int | None, options: WeightOnlyOptions,
                         stats: LayerInputStats | None, cache: dict | None):
    if cache is None:
        return _quantize_one(target, block, options, stats)
    import hashlib

    w = target.ref.array()
    key = (target.name, target.bits, block, options.rounding, options.sparsity, options.block_size, options.damp,
           stats is not None and stats.hessian is not None, w.dtype.str, w.shape,
           hashlib.sha256(np.ascontiguousarray(w).tobytes()).hexdigest())
    if key not in cache:
        cache[key] = _quantize_one(target, block, options, stats)
    codes, scales, record = cache[key]
    return codes.copy(), scales.copy(), dataclasses.replace(record)


def _quantize_one(target: WeightTarget, block: int | None, options: WeightOnlyOptions,
                  stats: LayerInputStats | None) -> tuple[np.ndarray, np.ndarray, WeightRecord]:
    """(codes, scales, record) of one weight; the model is not touched."""
    w = target.ref.array()
    grid = target.grid(block)
    codes, scales = quantize_nearest(w, grid)
    rounding, why = "nearest", None
    has_hessian = stats is not None and stats.hessian is not None
    if options.rounding == "gptq":
        if has_hessian:
            codes = gptq_codes(w, scales, grid, _use_of(target, stats), stats, sparsity=options.sparsity,
                               block_size=options.block_size, damp=options.damp)
            rounding = "gptq"
        else:
            why = _why_no_hessian(target, stats)
    w_hat = codes * grid.expand(scales, w.shape).astype(np.float64)
    norm = float(np.linalg.norm(w))
    record = WeightRecord(
        name=target.name, op_types=sorted({u.op_type for u in target.uses}), shape=list(w.shape), bits=grid.bits,
        granularity="channel" if block is None else f"block:{block}", rounding=rounding,
        relative_error=float(np.linalg.norm(w_hat - w)) / norm if norm > 0 else 0.0,
        output_error=output_error(w, w_hat, _use_of(target, stats), stats) if has_hessian else None,
        bytes_before=w.nbytes, bytes_after=(w.size * storage_bits(grid.bits) + 7) // 8 + scales.nbytes,
        sparsity=float((codes == 0).mean()), why_nearest=why,
    )
    return codes, scales, record


def _use_of(target: WeightTarget, stats: LayerInputStats) -> WeightUse:
    """The use whose layer layout the statistics were collected for."""
    return next((u for u in target.uses if u.op_type == stats.layout.op_type), target.uses[0])


def _why_no_hessian(target: WeightTarget, stats: LayerInputStats | None) -> str:
    ops = {u.op_type for u in target.uses}
    if stats is not None:
        return "too many input features for a Hessian"
    if ops & {"Gather", "ConvTranspose", *RECURRENT_OPS}:
        return f"{'/'.join(sorted(ops))} weights get no input statistics"
    if target.ref.depth > 0:
        return "inside a subgraph (no input statistics)"
    return "no input statistics for this layer"
