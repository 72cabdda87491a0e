"""shrink: simplify -> prune -> quantize -> validate gate -> pack, in one call.

Each stage is optional and configured by a recipe (see :mod:`onnxshrink.recipes`).
When the gate is an accuracy or cosine budget and the recipe gives no
sparsity, shrink searches (:mod:`onnxshrink.search`): it tries pruning budgets
from the most aggressive down, quantizes each candidate within what is left
of the budget, checks the final model against the original, and keeps the
smallest packed model that passes. Nothing is written by this module; the
caller writes the result.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import onnx

from onnxshrink.data import model_inputs, read_samples
from onnxshrink.errors import UsageError
from onnxshrink.latency import Latency, compare_latency, sample_feed
from onnxshrink.report.layers import layer_rows
from onnxshrink.search import SearchInputs, ShrinkOptions, Trial, search
from onnxshrink.search.schedule import TrialProgress
from onnxshrink.search.stages import deployed, packed_size
from onnxshrink.validation import ValidationReport, compare_models

Progress = Callable[[str, int, int], None]
# The chosen output is timed again with more rounds: it is the figure the report gives.
FINAL_ROUNDS = 7

__all__ = ["ShrinkOptions", "ShrinkResult", "shrink"]


@dataclasses.dataclass
class ShrinkResult:
    """The final model (not yet packed), its packed bytes, and the report."""

    model: onnx.ModelProto
    packed: bytes | None
    report: dict[str, Any]
    validation: ValidationReport | None

    @property
    def output_bytes(self) -> bytes:
        return self.packed if self.packed is not None else self.model.SerializeToString()



def _float16_small(chosen: Trial, inputs: SearchInputs) -> Trial | None:
    """The chosen candidate packed with its float tensors as float16, if that
    is smaller and the model as it unpacks, in its default load form, still
    passes the gate: first every float tensor (layer weights the search kept
    float too: float16 holds them far closer than int8 codes), else the small
    ones only (biases, norms)."""
    from onnxshrink.packing import PackOptions, load_packed, pack_model
    from onnxshrink.packing.encoder import FLOAT16_ALL_BELOW

    tried: set[tuple[str, ...]] = set()
    for below in (FLOAT16_ALL_BELOW, PackOptions.float16_small_below):
        result = pack_model(chosen.outcome.model, PackOptions(float16_small=True, float16_small_below=below))
        stored = [t.name for t in result.report.tensors if t.stored_as == "float16"]
        if not stored or len(result.data) >= chosen.outcome.size or tuple(stored) in tried:
            continue
        tried.add(tuple(stored))
        restored = load_packed(result.data)
        validation = compare_models(inputs.original, deployed(inputs, restored), inputs.check, gate=inputs.gate,
                                    measure_latency=False, state=inputs.options.state, checked_on=inputs.checked_on)
        if not validation.passed:
            continue
        outcome = dataclasses.replace(chosen.outcome, model=restored, packed=result.data, size=len(result.data),
                                      validation=validation, float16=stored)
        return dataclasses.replace(chosen, outcome=outcome)
    return None


def _latency_probe(original: onnx.ModelProto, feed: dict, form: str, rounds: int = 5
                   ) -> Callable[[onnx.ModelProto], Latency]:
    """Times a candidate (already in the form it loads in) against ``original`` on ``feed``."""
    return lambda candidate: compare_latency(original, candidate, feed, form=form, rounds=rounds)


def _floor_entry(floor: Trial | None) -> dict[str, Any] | None:
    """The plain weight-only int8 trial the result was compared with, for the report."""
    if floor is None:
        return None
    if floor.failed is not None:
        return {"failed": floor.failed}
    return {"size_bytes": floor.outcome.size, "ratio": round(floor.ratio, 3), "passed": floor.passed,
            "budget_used": round(floor.accuracy_drop, 6), "validation": floor.outcome.validation.to_dict()}


def shrink(model: onnx.ModelProto, calib: Any, options: ShrinkOptions, *, eval_data: Any = None,
           model_name: str = "model", progress: Progress | None = None,
           measure: Callable[[onnx.ModelProto], Latency] | None = None,
           on_trial: Callable[[TrialProgress], None] | None = None) -> ShrinkResult:
    """Run the recipe's stages on a copy of ``model``; ``model`` is not changed.

    ``calib`` is the calibration data (path, NpzData, ORT-style reader or
    batches), ``eval_data`` the data the gate is measured on (without it, the
    calibration inputs). An accuracy gate is measured against the data's
    labels, or without labels as the share of the original model's answers
    that change (the report's ``final.basis``); an explicit
    ``options.gate.max_accuracy_drop`` needs ``eval_data``. Each candidate
    is timed in the form it loads in against the original (1 thread, batch
    1: the first sample of the gate's data) unless ``options.measure_latency``
    is False; ``measure`` replaces that timing (it gets the candidate in its
    load form and returns its Latency). ``progress`` hears of each step's
    work, ``on_trial`` of each search trial as it starts, ends or is skipped
    (with an estimate of the time left). Raises GateFailed (exit 1) when no
    candidate passes the gate, reaches ``target_ratio`` or meets the latency
    bound.
    """
    progress = progress or (lambda task, done, total: None)
    recipe = options.recipe
    gate = options.effective_gate
    if options.gate.max_accuracy_drop is not None and eval_data is None:
        raise UsageError("--max-accuracy-drop is measured on labelled eval data: give --eval DATA, or --min-cosine X")
    original = onnx.ModelProto()
    original.CopyFrom(model)
    original_bytes = original.ByteSize()
    stages: list[dict[str, Any]] = [{"name": "original", "bytes": original_bytes, "packed_bytes": None, "note": ""}]
    base = original
    origins: dict[str, str] = {}
    if recipe.simplify:
        from onnxshrink.simplify import simplify

        simplified = simplify(original)
        base = simplified.model
        origins = simplified.names.origins  # what onnxsim made, under the input's names
        stages.append({"name": "simplify", "bytes": base.ByteSize(), "packed_bytes": None,
                       "note": simplified.fallback_reason or f"{simplified.nodes_before} -> {simplified.nodes_after} nodes"})
    if recipe.pack:
        from onnxshrink.packing.forms import record_reference

        if base is original:
            base = onnx.ModelProto()
            base.CopyFrom(original)
        # The default load form bounds memory against the model the user gave (issue 17), not the pruned one.
        record_reference(base, original)
    calib_batches = read_samples(calib, model_inputs(base), options.calib_samples)
    check = eval_data if eval_data is not None else calib_batches
    form = "default load form" if recipe.pack else "as written"
    final_measure = measure
    if measure is None and options.measure_latency:
        feed = sample_feed(original, check)
        measure = _latency_probe(original, feed, form)
        final_measure = _latency_probe(original, feed, form, rounds=FINAL_ROUNDS)
    inputs = SearchInputs(original, original_bytes, base, options, gate, calib_batches, check, progress,
                          checked_on="eval data" if eval_data is not None else "calibration data",
                          measure=measure if options.measure_latency else None,
                          on_trial=on_trial or (lambda status: None))
    found = search(inputs)
    chosen = found.chosen
    for stage in chosen.outcome.stages:
        stages.append({"name": stage.name, "bytes": stage.model.ByteSize(), "packed_bytes": packed_size(stage.model)[0],
                       "note": stage.note})
    if recipe.pack and recipe.pack_float16_small and gate.active:
        chosen = _float16_small(chosen, inputs) or chosen
    outcome = chosen.outcome
    # The reported figure: the output as it loads, timed once more, with more rounds.
    latency = final_measure(deployed(inputs, outcome.model)) if inputs.measure is not None else None
    warnings = [w for w in [latency.slower_text() if latency is not None else None] if w]
    if recipe.pack:
        float16 = outcome.float16
        note = (f"{len(float16)} float tensors stored as float16 (gate checked on the unpacked model), "
                "the rest lossless") if float16 else "lossless"
        stages.append({"name": "pack", "bytes": outcome.size, "packed_bytes": outcome.size, "note": note})
    report = {
        "model": model_name,
        "recipe": recipe.to_dict(),
        "weight_bits": list(options.weight_bits),
        "gate": dataclasses.asdict(gate),
        "passed": True,
        "original_bytes": original_bytes,
        "output_bytes": outcome.size,
        "ratio": round(original_bytes / max(outcome.size, 1), 4),
        "stages": stages,
        "layers": layer_rows(base, outcome.model, outcome.layers, origins=origins,
                             quantized=recipe.quantize is not None, weight_range_bits=outcome.weight_range_bits,
                             float16=outcome.float16),
        "float16_tensors": outcome.float16,
        "origins": {n: origins[n] for n in outcome.float16 if n in origins},
        "searched": found.searching,
        "search": [t.search_entry(chosen) for t in found.trials],
        "prune_search": outcome.prune_steps,
        "skipped": [s.report_entry() for s in found.skipped],
        "weight_only_int8": _floor_entry(found.floor),
        "notes": list(found.notes),
        "final": outcome.validation.to_dict(),
        "max_latency_ratio": options.latency_bound,
        "latency": latency.to_dict() if latency is not None else None,
        "warnings": warnings,
    }
    return ShrinkResult(outcome.model, outcome.packed, report, outcome.validation)
