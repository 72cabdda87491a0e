"""The quantize pass: prepare, plan, calibrate, write Q/DQ, check, and report."""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import numpy as np
import onnx

from onnxshrink.cleanup import drop_inferred_value_info, growth_warning, remove_unused
from onnxshrink.model import data_bytes, serialized_size
from onnxshrink.runtime import release_memory
from onnxshrink.data import NpzData
from onnxshrink.errors import UsageError
from onnxshrink.quantization import bias_correction
from onnxshrink.quantization.calibrate import calibrate
from onnxshrink.quantization.check import final_check
from onnxshrink.quantization.options import GPTQ_AUTO_MAX_BYTES, QuantizeOptions
from onnxshrink.quantization.params import weight_levels
from onnxshrink.quantization.plan import IN_SUBGRAPH, Plan, make_plan
from onnxshrink.quantization.subgraph_weights import computed_float_warning, quantize_subgraph_weights
from onnxshrink.quantization.prepared import Prepared, prepare_model
from onnxshrink.quantization.slowdown import one_input, slowdown_warning
from onnxshrink.quantization.report import QuantizeReport, QuantizeResult
from onnxshrink.quantization.embeddings import quantize_embeddings
from onnxshrink.quantization.rewrite import NodeRecord, apply_plan, compute_params
from onnxshrink.quantization.rules import RULES
from onnxshrink.quantization.stats import CalibrationStats
from onnxshrink.quantization.weight_rounding import WeightRounder, layer_statistics

Progress = Callable[[str, int, int], None]


def calibration_values(model: onnx.ModelProto, types: dict[str, int]) -> list[str]:
    """Every float value read or written by an op we have a rule for: a superset
    of what any placement needs, so re-planning never needs a new calibration run."""
    constants = {t.name for t in model.graph.initializer} | {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    names: dict[str, None] = {}
    for node in model.graph.node:
        if node.op_type in RULES and node.domain in ("", "ai.onnx"):
            for value in list(node.input) + list(node.output):
                if value and value not in constants and types.get(value) == onnx.TensorProto.FLOAT:
                    names[value] = None
    return list(names)


class StatisticsSource:
    """Calibration statistics, collected on demand.

    The first placement's tensors are calibrated in one pass; a later
    placement (latency guard, accuracy-aware search) that needs more runs one
    more pass for just those, when the data can be read again (a path, NpzData
    or list). One-shot readers get every candidate tensor in the first pass.
    Histograms are kept only when the method needs them."""

    def __init__(self, prepared: Prepared, data: Any, options: QuantizeOptions, progress: Progress | None = None):
        self.prepared = prepared
        self.data = data
        self.options = options
        self.progress = progress
        self.seconds = 0.0
        self.stats = data if isinstance(data, CalibrationStats) else CalibrationStats()
        self.rereadable = isinstance(data, (str, os.PathLike, list, tuple, NpzData))
        self.input_means: dict[str, np.ndarray] = {}  # per-channel means of layer inputs, for bias correction
        self.bias_correction_skipped: str | None = None
        self.gptq_skipped: str | None = None
        self._rounder: WeightRounder | None = None

    def rounder(self) -> WeightRounder | None:
        """GPTQ rounding on the layer input Hessians of the float model, collected
        once (one more pass over the data); None when ``options.weight_rounding``
        is nearest or the data cannot be read again (with a note)."""
        if self.options.weight_rounding == "nearest":
            return None
        if self._rounder is None and self.gptq_skipped is None:
            weights = data_bytes(self.prepared.model)
            if self.options.weight_rounding == "auto" and weights > GPTQ_AUTO_MAX_BYTES:
                self.gptq_skipped = (f"GPTQ weight rounding skipped (weights rounded to nearest) on "
                                     f"{weights / 2**20:.0f} MiB of weights, above {GPTQ_AUTO_MAX_BYTES >> 20} MiB: "
                                     "its Hessian pass costs another pass over the data and memory; "
                                     "--weight-rounding gptq asks for it anyway")
                return None
            if not self.rereadable:
                self.gptq_skipped = ("GPTQ weight rounding skipped (weights rounded to nearest): it needs the "
                                     "calibration data once more, which saved statistics and one-shot readers "
                                     "cannot give; pass a path or a list of batches")
                return None
            self._rounder = WeightRounder(layer_statistics(self.prepared.model, self.prepared.types, self.data,
                                                           self.options.batch_size, self.progress))
        return self._rounder

    def bias_input_means(self, plan: Plan) -> dict[str, np.ndarray]:
        """Node name -> per-channel mean of its input, for every node of ``plan``
        bias correction applies to (collected by :meth:`require`); empty, with a
        note, when they could not be collected."""
        nodes = [p for p in plan.nodes.values() if bias_correction.correctable(p)]
        if any(p.activations[0] not in self.input_means for p in nodes):
            self.bias_correction_skipped = ("bias correction skipped: it needs layer input means, which saved "
                                            "statistics do not hold and are not collected from a one-shot reader; "
                                            "pass a path or a list of batches")
            return {}
        return {p.node.name: self.input_means[p.activations[0]] for p in nodes}

    def require(self, names: list[str], means_for: list[str] = ()) -> CalibrationStats:
        """Statistics of ``names``, and (data that can be read again only) the
        per-channel means of ``means_for`` for bias correction, in one pass."""
        missing = [n for n in names if n not in self.stats.tensors]
        missing_means = [n for n in means_for if n not in self.input_means] if self.rereadable else []
        if not missing and not missing_means:
            return self.stats
        if isinstance(self.data, CalibrationStats):
            raise UsageError(f"the calibration statistics have no entry for tensor '{missing[0]}'; "
                             "they were collected on another model or placement")
        if self.stats.samples and not self.rereadable:
            raise UsageError(f"tensor '{missing[0]}' was not calibrated and the calibration reader cannot be read "
                             "again; pass a path or a list of batches")
        if not self.rereadable:
            missing = calibration_values(self.prepared.model, self.prepared.types)
        started = time.perf_counter()
        means = bias_correction.ChannelMeans(missing_means) if missing_means else None
        fresh = calibrate(self.prepared.model, missing, self.data, batch_size=self.options.batch_size,
                          progress=self.progress, histogram=self.options.method != "minmax", channel_means=means)
        self.seconds += time.perf_counter() - started
        if means is not None:
            self.input_means.update(means.means())
        samples = self.stats.samples or fresh.samples
        self.stats.tensors.update(fresh.tensors)
        self.stats.samples = samples
        return self.stats


class PreparedCache:
    """The preparation and calibration statistics (GPTQ's layer Hessians
    included) of the last model quantized, kept for the next
    :func:`quantize_model` call on the same model object and data with the
    same preparation and calibration options: a search that tries several
    weight code ranges or targets on one model calibrates it once. Only the
    last model is kept (models are large)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._kept: tuple[onnx.ModelProto, Any, Prepared, StatisticsSource] | None = None

    def get(self, model: onnx.ModelProto, calib: Any, options: QuantizeOptions, name: str,
            progress: Progress | None) -> tuple[Prepared, StatisticsSource]:
        key = (id(model), id(calib), name, options.fold_constants, options.method, options.batch_size,
               options.weight_rounding, options.bias_correction)
        if self._kept is None or self._key != key or self._kept[0] is not model or self._kept[1] is not calib:
            self._kept = None  # the previous model's statistics go before the next are made
            prepared = prepare_model(model, name, fold_constants=options.fold_constants)
            self._key, self._kept = key, (model, calib, prepared, StatisticsSource(prepared, calib, options, progress))
        _, _, prepared, source = self._kept
        source.progress = progress
        return prepared, source


def build(prepared: Prepared, source: StatisticsSource, options: QuantizeOptions,
          keep_float: frozenset[str] = frozenset()) -> tuple[onnx.ModelProto, Plan, list]:
    """The quantized model for one placement (``keep_float`` nodes stay float)."""
    plan = make_plan(prepared.model, prepared.types, exclude_nodes=frozenset(options.exclude_nodes),
                     exclude_ops=frozenset(options.exclude_ops), keep_float=keep_float)
    bias_inputs = ([p.activations[0] for p in plan.nodes.values() if bias_correction.correctable(p)]
                   if options.bias_correction else [])
    stats = source.require(plan.calibrated, means_for=bias_inputs)
    params = compute_params(plan, stats, prepared.model.graph, options.method, options.activations, options.percentile)
    model, records = apply_plan(prepared.model, plan, params, per_channel_for=options.per_channel_for,
                                 weight_levels=weight_levels(options.weight_range_bits, options.target),
                                 bias_input_means=source.bias_input_means(plan) if options.bias_correction else None,
                                 rounder=source.rounder())
    tables, tables_left = quantize_embeddings(model, exclude_nodes=frozenset(options.exclude_nodes),
                                              exclude_ops=frozenset(options.exclude_ops))
    records.extend(NodeRecord(**r) for r in tables)
    plan.left_float.update(tables_left)
    branch_layers, computed_float = quantize_subgraph_weights(model, exclude_nodes=frozenset(options.exclude_nodes),
                                                              exclude_ops=frozenset(options.exclude_ops),
                                                              levels=weight_levels(options.weight_range_bits,
                                                                                   options.target))
    records.extend(NodeRecord(**r) for r in branch_layers)
    plan.left_float.update(computed_float)
    remove_unused(model)  # the float weights (Constant nodes among them) the Q/DQ rewrite replaced
    release_memory()  # the per-weight temporaries of a large model
    return model, plan, records


FALLBACK_UNFUSED = "onnxruntime has no integer kernel for it in this placement: it would run in float between Q/DQ"


def _as_data_for_validation(calib: Any) -> Any:
    """Calibration data that can be read a second time (a path or NpzData), else None."""
    return calib if isinstance(calib, (str, os.PathLike, NpzData, list, tuple)) else None


def quantize_model(
    model: onnx.ModelProto,
    calib: Any = None,
    options: QuantizeOptions = QuantizeOptions(),
    *,
    eval_data: Any = None,
    progress: Progress | None = None,
    name: str = "model",
    measure_latency: bool = True,
    deadline: float | None = None,
    cache: PreparedCache | None = None,
) -> QuantizeResult:
    """Quantize ``model`` to int8 QDQ form; ``model`` itself is not changed.

    ``calib`` is calibration data (an .npz path or folder, NpzData, an
    onnxruntime CalibrationDataReader or an iterable of batches) or a
    :class:`CalibrationStats` from earlier runs (merged with ``.merge``).
    ``eval_data`` (labels optional) is what the accuracy-aware search and
    the final check use; without it they use ``calib`` when it can be read
    again. With ``options.latency_guard`` the result is timed against
    ``model`` (the report's ``latency``) unless ``measure_latency`` is False
    (a caller that times it itself). Raises GateFailed when the target cannot
    be met (or ``deadline``, a ``time.perf_counter()`` value, passes during
    the accuracy-aware search) or, without one, the result fails the default
    floor (see :func:`onnxshrink.quantization.check.final_check`),
    UnsupportedModelError for models that cannot be quantized. ``cache``
    (a :class:`PreparedCache` the caller keeps) reuses the preparation and
    calibration statistics of the previous call on the same ``model`` object
    and ``calib``.
    """
    if options.dynamic:
        from onnxshrink.quantization.dynamic import quantize_dynamic

        return quantize_dynamic(model, options, eval_data=eval_data, name=name, measure_latency=measure_latency)
    if calib is None:
        raise UsageError("static quantization needs calibration data (--calib DATA), or use --dynamic")
    if cache is not None:
        prepared, source = cache.get(model, calib, options, name, progress)
    else:
        prepared = prepare_model(model, name, fold_constants=options.fold_constants)
        source = StatisticsSource(prepared, calib, options, progress)

    keep: dict[str, str] = {}
    qmodel, plan, records = build(prepared, source, options)
    warnings: list[str] = []
    if options.latency_guard and plan.nodes:
        from onnxshrink.quantization.fusion import unfused_nodes

        for _ in range(4):
            try:
                left, runs_as = unfused_nodes(qmodel, {n: p.node.op_type for n, p in plan.nodes.items()})
                for record in records:  # what onnxruntime really runs, rather than what the rule hopes for
                    record.kernel = runs_as.get(record.name, record.kernel)
            except Exception as e:  # the check is advice; a model onnxruntime cannot optimize still gets written
                warnings.append(f"latency guard skipped: {' '.join(str(e).split())[:200]}")
                break
            if not left:
                break
            keep.update({n: FALLBACK_UNFUSED for n in left})
            qmodel, plan, records = build(prepared, source, options, frozenset(keep))

    target = None
    search_log: list[dict[str, Any]] = []
    if options.accuracy_aware:
        from onnxshrink.quantization.search import accuracy_aware

        data = eval_data if eval_data is not None else _as_data_for_validation(calib)
        if data is None:
            raise UsageError("the accuracy-aware mode needs --eval data (the calibration reader can be read only once)")
        qmodel, plan, records, keep, search_log, target = accuracy_aware(
            prepared, source, options, data, keep, build, progress, deadline)

    drop_inferred_value_info(qmodel, model)  # shape inference's and the opset converter's
    left_float = dict(plan.left_float)
    left_float.update(keep)
    data = eval_data if eval_data is not None else _as_data_for_validation(calib)
    validation, latency = final_check(model, qmodel, data, options,
                                      "eval data" if eval_data is not None else "calibration data", measure_latency)
    lat = validation.latency_ms
    if records and latency is not None and latency.slower:  # beyond the noise: then say why
        warnings.append(slowdown_warning(model, qmodel, one_input(model, data, dict(options.shapes) or None), lat))
    if source.bias_correction_skipped:
        warnings.append(source.bias_correction_skipped)
    if source.gptq_skipped:
        warnings.append(source.gptq_skipped)
    in_subgraphs = sum(1 for why in left_float.values() if why == IN_SUBGRAPH)
    if in_subgraphs:
        warnings.append(f"{in_subgraphs} layers inside If/Loop/Scan bodies stay float, weights included (excluded, "
                        "under 256 elements, or also read in the main graph)")
    computed_float = computed_float_warning(left_float)
    if computed_float:
        warnings.append(computed_float)
    if not records:
        warnings.append("no node could be quantized; the model is unchanged apart from the preparation passes")
    grew = growth_warning(serialized_size(model), serialized_size(qmodel), "the int8 model")
    if grew:
        warnings.append(grew)
    stats = source.stats
    calibration = {"samples": stats.samples, "tensors": len(stats.tensors), "seconds": round(source.seconds, 3),
                   "method": options.method, "histograms": options.method != "minmax"}
    report = QuantizeReport(
        mode="static", method=options.method, activations=options.activations, per_channel=options.per_channel,
        weight_range_bits=options.weight_range_bits, cpu_target=options.target,
        weight_rounding="nearest" if source.gptq_skipped or options.weight_rounding == "nearest" else "gptq",
        weight_code_max=weight_levels(options.weight_range_bits, options.target),
        nodes=[r.to_dict() for r in records], left_float=left_float,
        size_bytes={"original": serialized_size(model), "quantized": serialized_size(qmodel)},
        calibration=calibration, validation=validation.to_dict(), latency_ms=dict(lat),
        latency=latency.to_dict() if latency is not None else None, target=target,
        search=search_log, prepared=prepared.notes, warnings=warnings,
    )
    return QuantizeResult(qmodel, bool(records), report, stats)
