"""Per-layer sparsity under a quality target: scan sensitivity, then search one knob.

1. Each layer is pruned alone at every candidate level (cached); its local
   error is the relative change of the layer's output, from its input Hessian
   ``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` (or the weight change without data).
2. One onnxruntime run per layer, pruned alone at a probe level, turns local
   error into its effect on the model's outputs (layers differ in how much
   their errors propagate).
   Before the full scan, each layer alone at its lowest level is measured
   against the target (least disturbed first, usually one run): when none
   passes, nothing is prunable and the scan and search are skipped.
3. For a knob ``λ`` every layer takes the level maximising
   ``λ · weights removed - predicted output error``; ``λ`` is bisected
   (on a log scale) for the highest overall sparsity whose measured metric
   (accuracy drop on labelled data, the share of the original's answers
   that changed without labels, or output cosine) meets the target.

For channel pruning the fraction of channels removed from every group is
bisected directly.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable

import numpy as np
import onnx

from onnxshrink import runtime
from onnxshrink.data import Batch
from onnxshrink.pruning.options import PruneOptions
from onnxshrink.pruning.targets import PruneTarget
from onnxshrink.pruning.unstructured import TensorPruning, n_m_fits, pruned_array, usable_method
from onnxshrink.stats.layer_inputs import LayerInputStats, weight_matrices
from onnxshrink.stats.masks import parse_n_m
from onnxshrink.stats.obs import reconstruction_error
from onnxshrink.validation.reference import KeptReference

LEVELS = (0.0, 0.25, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95)
PROBE = 0.7
PROBE_SAMPLES = 128
SEARCH_STEPS = 12


class OutputChecker:
    """The reference model's outputs on fixed data, computed once; candidates
    are measured against them as :func:`onnxshrink.validation.compare_models`
    does: cosine over all output values, and for an accuracy target the
    top-1 accuracy drop on labelled data, else the share of the original's
    answers that changed (per output kind); a stateful model in a closed loop."""

    def __init__(self, reference: onnx.ModelProto, data: Any, batch_size: int = 64, limit: int | None = None,
                 state: tuple[tuple[str, str], ...] = ()):
        start = time.perf_counter()
        self.kept = KeptReference(reference, data, state=state, batch_size=batch_size, limit=limit)
        self.run_seconds = time.perf_counter() - start  # about one run of the reference over the data
        self.batches: list[Batch] = self.kept.batches or []
        self.labels = np.concatenate([b.labels for b in self.batches]) if self.kept.labelled else None

    # What scripts/bench_*.py read: the reference's outputs, each concatenated over the batches.
    @functools.cached_property
    def reference(self) -> list[np.ndarray]:
        return [np.concatenate([np.asarray(out[i]) for out in self.kept.outputs]).astype(np.float64)
                for i in range(len(self.kept.names))]

    @functools.cached_property
    def reference_accuracy(self) -> float:
        return self.accuracy(self.reference[0])

    def outputs(self, model: onnx.ModelProto) -> list[np.ndarray]:
        """``model``'s outputs on the kept batches, each concatenated (no closed loop: for scripts)."""
        session = runtime.create_session(model, threads=os.cpu_count() or 1, name="candidate")
        runs = [runtime.run(session, b.inputs, what="candidate") for b in self.batches]
        return [np.concatenate([r[i] for r in runs]).astype(np.float64) for i in range(len(runs[0]))]

    def accuracy(self, logits: np.ndarray) -> float:
        return float((logits.reshape(len(self.labels), -1).argmax(axis=1) == self.labels).mean())

    def measure(self, model: onnx.ModelProto) -> dict[str, float]:
        measured = self.kept.measure(model)
        result = {"cosine": measured.cosine, "output_error": measured.relative_error,
                  "accuracy_drop": measured.drop_points}
        if measured.labelled:
            result["accuracy"] = measured.accuracy
        return result

    def passes(self, metrics: dict[str, float], options: PruneOptions) -> bool:
        if options.max_accuracy_drop is not None and metrics["accuracy_drop"] > options.max_accuracy_drop + 1e-9:
            return False
        if options.min_cosine is not None and round(metrics["cosine"], 9) < options.min_cosine:
            return False
        return True


def _local_error(original: np.ndarray, pruned: np.ndarray, target: PruneTarget, s: LayerInputStats | None) -> float:
    if s is not None and target.layout is not None:
        use = target.uses[0]
        w0 = weight_matrices(original.astype(np.float64), target.layout, use)
        w1 = weight_matrices(pruned.astype(np.float64), target.layout, use)
        if s.hessian is not None:
            return reconstruction_error(w0, w1, s.hessian)
        if s.feature_sq is not None:
            d = s.feature_sq[:, None, :]
            return float((((w1 - w0) ** 2) * d).sum() / max(float((w0**2 * d).sum()), 1e-30))
    o = original.astype(np.float64)
    return float(((pruned - o) ** 2).sum() / max(float((o**2).sum()), 1e-30))


def _levels(target: PruneTarget, options: PruneOptions) -> tuple[float, ...]:
    if options.pattern == "unstructured":
        return LEVELS
    return (0.0, 0.5) if n_m_fits(target, parse_n_m(options.pattern)[1]) else (0.0,)


def _assemble(model: onnx.ModelProto, targets: list[PruneTarget], choice: dict[str, int],
              arrays: dict[tuple[str, int], np.ndarray], originals: dict[str, np.ndarray]) -> None:
    for t in targets:
        level = choice.get(t.name, 0)
        t.ref.set_array(arrays[(t.name, level)] if level else originals[t.name])


class SensitivityScan:
    """What a search learns that does not depend on its target: each layer
    pruned at every level (``arrays``), its local error curve (``errors``),
    how that error reaches the outputs (``scale``), and the metrics of every
    allocation measured (``measured``, keyed by the allocation). Valid only
    for the model, calibration and check data, and options (target aside) it
    was filled with; shrink keeps one per recipe across its trials."""

    def __init__(self) -> None:
        self.scanned = False
        self.arrays: dict[tuple[str, int], np.ndarray] = {}
        self.errors: dict[str, np.ndarray] = {}
        self.scale: dict[str, float] = {}
        self.measured: dict[tuple, dict[str, float]] = {}
        self.lowest_errors: dict[str, float] = {}  # local error of each layer at its lowest level
        self.first_pass_seconds = 0.0  # the time pruning every layer at its lowest level took


def _scan(scan: SensitivityScan, model: onnx.ModelProto, reference: onnx.ModelProto, target_list: list[PruneTarget],
          stats: dict[str, LayerInputStats], originals: dict[str, np.ndarray], levels: dict[str, tuple[float, ...]],
          options: PruneOptions, method: str, n_m: tuple[int, int] | None, batches: list[Batch] | None,
          checker: OutputChecker, progress: Callable[[str, int, int], None],
          deadline: float | None = None) -> str | None:
    """Fill ``scan``: every layer pruned alone at each level, its local error,
    and a probe of how far that error reaches the outputs. Returns why nothing
    is prunable under the options' target, or why the scan would not end by
    ``deadline`` (a ``time.perf_counter()`` value; estimated from the first
    pass over the layers), and stops there; else None."""
    arrays, errors, scale = scan.arrays, scan.errors, scan.scale
    total_work = sum(len(v) - 1 for v in levels.values())
    done = 0

    def prune_at(t: PruneTarget, i: int) -> float:
        nonlocal done
        s = stats.get(t.name)
        arrays[(t.name, i)] = pruned_array(t, originals[t.name], usable_method(method, t, s), s,
                                           sparsity=levels[t.name][i], n_m=n_m, block_size=options.block_size,
                                           damp=options.damp)
        done += 1
        progress("scanning layer sensitivity", done, total_work)
        return _local_error(originals[t.name], arrays[(t.name, i)], t, s)

    # Every layer at its lowest level first (kept for later calls with other targets): when
    # none of them alone meets the target, no allocation can (each prunes at least one layer
    # that far), and the scan stops here; a later, looser target takes it up again.
    first_pass = time.perf_counter()
    fresh = [t for t in target_list if len(levels[t.name]) > 1 and t.name not in scan.lowest_errors]
    for t in fresh:
        scan.lowest_errors[t.name] = prune_at(t, 1)
    if fresh:
        scan.first_pass_seconds = time.perf_counter() - first_pass
    done = len(scan.lowest_errors)
    single, why = _first_single(scan, model, target_list, levels, arrays, originals, checker, options, deadline)
    if single is None:
        return why
    if deadline is not None:
        # The rest of the scan is the first pass again at every other level, one probe run per
        # layer and the search's runs (each about a run of the check data).
        rest = (scan.first_pass_seconds * (max(len(v) for v in levels.values()) - 2)
                + checker.run_seconds * (len(target_list) + SEARCH_STEPS))
        if time.perf_counter() + rest > deadline:
            return (f"pruning skipped: its sensitivity scan and search would take about {rest:.0f} s more "
                    f"(a first pass over the {len(target_list)} layers took {scan.first_pass_seconds:.0f} s), "
                    f"past the time budget")
    for t in target_list:
        errs = [0.0] + ([scan.lowest_errors[t.name]] if len(levels[t.name]) > 1 else [])
        errs += [prune_at(t, i) for i in range(2, len(levels[t.name]))]
        errors[t.name] = np.maximum.accumulate(np.array(errs))
    # Probe: each layer alone at the probe level, measured on calibration data.
    probe_checker = (OutputChecker(reference, batches, limit=PROBE_SAMPLES, state=options.state)
                     if batches is not None else checker)
    for k, t in enumerate(target_list):
        lv = levels[t.name]
        if len(lv) == 1:
            scale[t.name] = 1.0
            continue
        i = int(np.argmin(np.abs(np.array(lv) - (0.5 if n_m else PROBE))))
        _assemble(model, target_list, {t.name: i}, arrays, originals)
        effect = probe_checker.measure(model)["output_error"]
        scale[t.name] = effect / errors[t.name][i] if errors[t.name][i] > 0 else 0.0
        progress("probing layers", k + 1, len(target_list))
    _assemble(model, target_list, {}, arrays, originals)
    scan.scanned = True
    return None


def _first_single(scan: SensitivityScan, model: onnx.ModelProto, target_list: list[PruneTarget],
                  levels: dict[str, tuple[float, ...]], arrays: dict[tuple[str, int], np.ndarray],
                  originals: dict[str, np.ndarray], checker: OutputChecker,
                  options: PruneOptions, deadline: float | None = None) -> tuple[dict[str, int] | None, str | None]:
    """The first allocation pruning one layer alone at its lowest level that meets
    the target, the least disturbed layer first (usually the first: one run, and
    none when measured before), or None and why nothing is prunable under it.
    Deterministic whatever ``scan`` already measured, unless ``deadline`` (a
    ``time.perf_counter()`` value) passes before a layer is found."""
    candidates = sorted((t for t in target_list if len(levels[t.name]) > 1),
                        key=lambda t: (scan.lowest_errors[t.name], t.name))
    if not candidates:
        return None, "no layer weight can be pruned in this pattern"
    found = None
    for k, t in enumerate(candidates):
        choice = {u.name: (1 if u.name == t.name else 0) for u in target_list}
        key = tuple(sorted(choice.items()))
        if key not in scan.measured and deadline is not None and time.perf_counter() > deadline:
            _assemble(model, target_list, {}, arrays, originals)
            tried = f"none of the first {k} of {len(candidates)} layers pruned alone meets the target, and " if k else ""
            return None, f"pruning skipped: {tried}the time budget ran out before {'the rest' if k else 'any layer'} " \
                         "could be measured"
        if key not in scan.measured:
            _assemble(model, target_list, choice, arrays, originals)
            scan.measured[key] = checker.measure(model)
        if checker.passes(scan.measured[key], options):
            found = choice
            break
    _assemble(model, target_list, {}, arrays, originals)
    if found is not None:
        return found, None
    lowest = min(levels[t.name][1] for t in candidates)
    return None, (f"nothing prunable under the target: each of the {len(candidates)} layers pruned alone at its "
                  f"lowest level ({100 * lowest:.0f}%) misses it, so the search was skipped")


def search_sparsity(
    work: onnx.ModelProto,
    reference: onnx.ModelProto,
    options: PruneOptions,
    method: str,
    batches: list[Batch] | None,
    check_data: Any,
    *,
    targets: tuple[list[PruneTarget], dict[str, LayerInputStats]] | None,
    progress: Callable[[str, int, int], None],
    scan: "SensitivityScan | None" = None,
    deadline: float | None = None,
) -> tuple[onnx.ModelProto, list, list[dict[str, Any]], list[dict[str, Any]]]:
    """The most-pruned model meeting the options' target, its per-tensor
    records, channel groups and the search steps. ``targets`` are tensors of
    ``work`` (changed in place); ``reference`` is the dense model. ``scan``
    (unstructured and N:M) holds the sensitivity scan and the measured
    allocations, filled on first use and reused by later searches on the same
    model, data and options with another target."""
    checker = OutputChecker(reference, check_data, state=options.state)
    if options.pattern == "channel":
        return _search_channels(reference, options, method, batches, checker, progress)
    target_list, stats = targets
    model = work
    n_m = parse_n_m(options.pattern) if options.pattern != "unstructured" else None
    originals = {t.name: t.ref.array() for t in target_list}
    levels = {t.name: _levels(t, options) for t in target_list}
    scan = scan if scan is not None else SensitivityScan()
    nothing_prunable = None
    if not scan.scanned:
        nothing_prunable = _scan(scan, model, reference, target_list, stats, originals, levels, options, method, n_m,
                                 batches, checker, progress, deadline)
    single = None
    if not nothing_prunable:  # this target's own check (the scan may have been made under another)
        single, nothing_prunable = _first_single(scan, model, target_list, levels, scan.arrays, originals, checker,
                                                 options, deadline)
    if nothing_prunable:
        records = [TensorPruning(t.name, t.op_type, list(originals[t.name].shape), int(originals[t.name].size),
                                 int(np.count_nonzero(originals[t.name] == 0)),
                                 int(np.count_nonzero(originals[t.name] == 0)), "none", 0.0, None) for t in target_list]
        return model, records, [], [{"step": 0, "skipped": nothing_prunable}]
    arrays, errors, scale = scan.arrays, scan.errors, scan.scale
    sizes = {t.name: t.size for t in target_list}
    total = max(sum(sizes.values()), 1)

    def choose(lam: float) -> dict[str, int]:
        choice = {}
        for t in target_list:
            lv = np.array(levels[t.name])
            gain = lam * sizes[t.name] / total * lv - scale[t.name] * errors[t.name]
            choice[t.name] = int(np.argmax(gain))
        return choice

    def overall(choice: dict[str, int]) -> float:
        return sum(levels[n][i] * sizes[n] for n, i in choice.items()) / total

    steps: list[dict[str, Any]] = []
    verdicts: dict[tuple, bool] = {}  # allocation -> met the target
    best = ({}, 0.0, None)
    lo, hi = -8.0, 8.0  # log10 of λ
    measured = 0
    while measured < SEARCH_STEPS and hi - lo > 1e-3:
        mid = (lo + hi) / 2
        choice = choose(10.0**mid)
        key = tuple(sorted(choice.items()))
        if key not in verdicts:  # a new allocation: measure it
            sparsity = overall(choice)
            metrics = {}
            if options.sparsity is None or sparsity <= options.sparsity + 1e-9:
                if key not in scan.measured:
                    _assemble(model, target_list, choice, arrays, originals)
                    scan.measured[key] = checker.measure(model)
                metrics = scan.measured[key]
            verdicts[key] = ok = bool(metrics) and checker.passes(metrics, options)
            steps.append({"step": measured, "knob": round(mid, 4), "sparsity": round(sparsity, 6), "passed": ok,
                          **{k: round(v, 6) for k, v in metrics.items()}})
            if ok and sparsity >= best[1]:
                best = (choice, sparsity, metrics)
            measured += 1
            progress("searching per-layer sparsity", measured, SEARCH_STEPS)
        lo, hi = (mid, hi) if verdicts[key] else (lo, mid)
    # The bisection can jump from nothing to too much: the single layer that met the target
    # in the check above is a candidate too.
    single_sparsity = overall(single)
    if single_sparsity > best[1] and (options.sparsity is None or single_sparsity <= options.sparsity + 1e-9):
        metrics = scan.measured[tuple(sorted(single.items()))]
        best = (single, single_sparsity, metrics)
        steps.append({"step": len(steps), "single_layer": True, "sparsity": round(single_sparsity, 6), "passed": True,
                      **{k: round(v, 6) for k, v in metrics.items()}})
    choice = best[0]
    _assemble(model, target_list, choice, arrays, originals)
    records = []
    for t in target_list:
        i = choice.get(t.name, 0)
        array = t.ref.array()
        s = stats.get(t.name)
        err = None
        if i and s is not None and s.hessian is not None and t.layout is not None:
            err = float(errors[t.name][i])
        records.append(TensorPruning(t.name, t.op_type, list(array.shape), int(array.size),
                                     int(np.count_nonzero(originals[t.name] == 0)), int(np.count_nonzero(array == 0)),
                                     usable_method(method, t, s) if i else "none", float(levels[t.name][i]), err))
    return model, records, [], steps


def _search_channels(reference, options, method, batches, checker, progress):
    from onnxshrink.pruning.channels import channel_statistics, prune_channels

    stats = channel_statistics(reference, method, batches, progress)
    cap = options.sparsity if options.sparsity is not None else 0.95
    lo, hi = 0.0, cap
    best = None
    steps = []
    for step in range(8):
        fraction = hi if step == 0 else (lo + hi) / 2
        candidate = onnx.ModelProto()
        candidate.CopyFrom(reference)
        candidate, records, groups = prune_channels(candidate, options, fraction, method, batches, stats=stats)
        metrics = checker.measure(candidate)
        ok = checker.passes(metrics, options)
        steps.append({"step": step, "fraction": round(fraction, 6), "passed": ok, **{k: round(v, 6) for k, v in metrics.items()}})
        if ok and (best is None or fraction >= best[0]):
            best = (fraction, candidate, records, groups)
        if step == 0 and ok:
            break
        lo, hi = (fraction, hi) if ok else (lo, fraction)
        progress("searching channel fraction", step + 1, 8)
    if best is None:
        candidate = onnx.ModelProto()
        candidate.CopyFrom(reference)
        return candidate, [], [], steps
    return best[1], best[2], best[3], steps
