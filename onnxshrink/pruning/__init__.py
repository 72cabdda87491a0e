"""Pruning: zero weights (unstructured, N:M) or remove whole channels from the graph.

The entry point is :func:`prune_model`. Which tensors are weights comes from
their graph role (:mod:`onnxshrink.roles`); biases, normalisation parameters
and shape tensors are never pruned. Methods:

* ``magnitude``: the smallest ``|w|``;
* ``wanda``: the smallest ``|w| * ||x||`` per output (Sun et al., 2023),
  ``||x||`` from onnxruntime runs on calibration data;
* ``hessian``: layer-wise OBS with reconstruction (SparseGPT), ``H = XᵀX``
  from calibration data; the kept weights are updated to compensate.

With a target (``max_accuracy_drop`` or ``min_cosine``) each layer's
sensitivity is scanned and per-layer sparsities are searched so the total is
as high as the target allows.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import onnx

from onnxshrink.cleanup import growth_warning, remove_unused
from onnxshrink.errors import UsageError
from onnxshrink.latency import as_validation_ms, time_result
from onnxshrink.model import serialized_size
from onnxshrink.pruning.options import METHODS, PATTERNS, SCOPES, PruneOptions
from onnxshrink.pruning.report import PruneReport, count_flops, parameter_counts
from onnxshrink.pruning.targets import PruneTarget, prunable_weights
from onnxshrink.pruning.unstructured import TensorPruning, global_sparsities, prune_tensors
from onnxshrink.stats.calibration import load_calibration
from onnxshrink.stats.layer_inputs import ROWS_PER_FEATURE, LayerInputStats, collect_layer_inputs
from onnxshrink.stats.masks import n_m_holds, parse_n_m
from onnxshrink.validation import Gate, compare_models

Progress = Callable[[str, int, int], None]


@dataclasses.dataclass
class PruneResult:
    """The pruned model (a new proto), whether anything changed, and the report."""

    model: onnx.ModelProto
    modified: bool
    report: PruneReport


def _gate(options: PruneOptions) -> Gate:
    return Gate(min_cosine=options.min_cosine, max_accuracy_drop=options.max_accuracy_drop)


def prune_model(
    model: onnx.ModelProto,
    options: PruneOptions,
    *,
    calib: Any = None,
    eval_data: Any = None,
    progress: Progress | None = None,
    layer_stats: dict[str, LayerInputStats] | None = None,
    scan_cache: dict | None = None,
    measure_latency: bool = True,
    deadline: float | None = None,
) -> PruneResult:
    """Prune a copy of ``model`` as ``options`` say; ``model`` is not changed.

    ``calib`` (an .npz path, NpzData, reader or batches) feeds the
    activation-aware methods and channel reconstruction; ``eval_data``
    drives the search and the final validation (``max_accuracy_drop`` is
    measured on its labels, or without labels as the share of the original
    model's answers that changed; without ``eval_data``, on ``calib``). ``layer_stats`` (from :func:`collect_statistics` on the same
    model and data) skips collecting them again, for sweeps. ``scan_cache``
    (a dict the caller keeps) carries a searched target's sensitivity scan and
    measured allocations to later calls on the same model and data with other
    targets (shrink's trials), keyed by the options apart from the target.
    ``deadline`` (a ``time.perf_counter()`` value) bounds a searched
    unstructured or N:M target: when the sensitivity scan, estimated from its
    first pass, would not end by then, nothing is pruned and a note says so. Raises
    UsageError for options the data cannot serve and GateFailed when the
    final validation fails its gate.
    """
    from onnxshrink.pruning.allocation import SensitivityScan, search_sparsity
    from onnxshrink.pruning.channels import prune_channels

    progress = progress or (lambda task, done, total: None)
    method = options.resolved_method(calib is not None)
    if method != "magnitude" and calib is None:
        raise UsageError(f"--method {method} needs calibration data: give --calib DATA (an .npz of model inputs)")
    if options.has_target and eval_data is None and calib is None:
        flag = "--min-cosine" if options.min_cosine is not None else "--max-accuracy-drop"
        raise UsageError(f"{flag} needs inputs to compare outputs on: give --eval DATA or --calib DATA")
    work = onnx.ModelProto()
    work.CopyFrom(model)
    notes: list[str] = []
    origins: dict[str, str] = {}  # what onnxsim made a tensor from, by its (input model's) name
    if options.simplify:
        from onnxshrink.simplify import simplify

        simplified = simplify(work)
        work = simplified.model
        origins = simplified.names.origins
        if simplified.fallback_reason:
            notes.append(f"simplify skipped: {simplified.fallback_reason}")
    reference = onnx.ModelProto()
    reference.CopyFrom(work)
    params_before, nonzero_before = parameter_counts(work)
    flops_before = count_flops(work)
    batches = load_calibration(calib, work, options)
    check_data = eval_data if eval_data is not None else batches
    search: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = []
    targets, skipped = prunable_weights(work, min_size=options.min_size, exclude=options.exclude,
                                        include_recurrent=options.include_recurrent)
    if options.pattern != "channel" and not targets:
        # Nothing to collect statistics for, scan or search: said at once.
        records = []
        notes.append("no prunable weight: " + (f"all {len(skipped)} layer weights were skipped (see 'skipped')"
                                               if skipped else "the model has no Conv/Gemm/MatMul weight"))
    elif options.pattern == "channel":
        skipped = {name: why for name, why in skipped.items() if why == "excluded"}
        if options.has_target:
            work, records, groups, search = search_sparsity(work, reference, options, method, batches, check_data,
                                                            targets=None, progress=progress)
        else:
            work, records, groups = prune_channels(work, options, options.sparsity or 0.0, method, batches, progress,
                                                   stats=_usable(layer_stats, method))
    else:
        stats = _usable(layer_stats, method) or {}
        if not stats and batches is not None and method != "magnitude":
            want = ("hessian", "norms") if method == "hessian" else ("norms",)
            stats = collect_layer_inputs(work, [u for t in targets for u in t.uses], batches, want,
                                         progress=progress, total_batches=len(batches),
                                         rows_per_feature=ROWS_PER_FEATURE)
        if options.has_target:
            scan = None
            if scan_cache is not None:
                key = tuple((f.name, getattr(options, f.name)) for f in dataclasses.fields(options)
                            if f.name not in ("sparsity", "max_accuracy_drop", "min_cosine"))
                scan = scan_cache.setdefault(key, SensitivityScan())
            work, records, _, search = search_sparsity(work, reference, options, method, batches, check_data,
                                                       targets=(targets, stats), progress=progress, scan=scan,
                                                       deadline=deadline)
            notes.extend(step["skipped"] for step in search if step.get("skipped"))
        else:
            records = prune_unstructured(targets, stats, options, method)
    notes.extend(f"{r.name}: {origins[r.name]}" for r in records if r.name in origins)
    remove_unused(work)  # what channel removal or folding left unread
    validation = None
    if check_data is not None or options.has_target:
        validation = compare_models(reference, work, check_data, gate=_gate(options), measure_latency=False,
                                    state=options.state,
                                    checked_on="eval data" if eval_data is not None else "calibration data")
        validation.raise_if_failed()
    latency = None
    if measure_latency:
        latency = time_result(model, work, check_data)
        if validation is not None:
            validation.latency_ms = as_validation_ms(latency)
    params_after, nonzero_after = parameter_counts(work)
    report = PruneReport(
        pattern=options.pattern, method=method, scope="searched" if options.has_target else options.scope,
        requested_sparsity=options.sparsity,
        tensors=records, channel_groups=groups, skipped=skipped, params_before=params_before,
        params_after=params_after, nonzero_before=nonzero_before, nonzero_after=nonzero_after,
        flops_before=flops_before, flops_after=count_flops(work), search=search, validation=validation, notes=notes,
        latency=latency,
    )
    grew = growth_warning(serialized_size(model), serialized_size(work), "the pruned model")
    if grew:
        notes.append(grew)
    slower = latency.slower_text("the pruned model") if latency is not None else None
    if slower:
        notes.append(slower)
    modified = nonzero_after != nonzero_before or params_after != params_before
    return PruneResult(work, modified, report)


def collect_statistics(model: onnx.ModelProto, calib: Any, options: PruneOptions,
                       progress: Progress | None = None) -> dict[str, LayerInputStats]:
    """Input statistics (Hessian, norms, means) of every layer weight of
    ``model`` on ``calib``, for reuse across several :func:`prune_model` calls."""
    from onnxshrink.roles import weight_uses

    batches = load_calibration(calib, model, options)
    return collect_layer_inputs(model, weight_uses(model, include_recurrent=options.include_recurrent), batches,
                                ("hessian", "norms", "means"), progress=progress, total_batches=len(batches),
                                rows_per_feature=ROWS_PER_FEATURE)


def _usable(layer_stats: dict[str, LayerInputStats] | None, method: str) -> dict[str, LayerInputStats] | None:
    """Given statistics, as the method wants them (magnitude uses none)."""
    if layer_stats is None:
        return None
    return {} if method == "magnitude" else layer_stats


def prune_unstructured(
    targets: list[PruneTarget], stats: dict, options: PruneOptions, method: str,
    sparsities: dict[str, float] | None = None,
) -> list[TensorPruning]:
    """Unstructured or N:M pruning of ``targets`` in place: each at
    ``sparsities[name]`` when given, else at the options' sparsity and scope."""
    n_m = parse_n_m(options.pattern) if options.pattern != "unstructured" else None
    if sparsities is None:
        s = options.sparsity or 0.0
        if options.scope == "global" and n_m is None:
            sparsities = global_sparsities(targets, s)
        else:
            sparsities = {t.name: s for t in targets}
    return prune_tensors(targets, sparsities, method, stats, n_m=n_m, block_size=options.block_size,
                         damp=options.damp)


__all__ = [
    "METHODS",
    "PATTERNS",
    "SCOPES",
    "PruneOptions",
    "PruneReport",
    "PruneResult",
    "TensorPruning",
    "collect_statistics",
    "n_m_holds",
    "prune_model",
    "prunable_weights",
]
