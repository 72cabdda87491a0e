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
from onnxshrink.search import SearchInputs, ShrinkOptions, Trial, search
from onnxshrink.search.schedule import TrialProgress, describe
from onnxshrink.search.stages import packed_size
from onnxshrink.validation import Gate, ValidationReport, compare_models

Progress = Callable[[str, int, int], None]

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


def _float16_small(chosen: Trial, original: onnx.ModelProto, gate: Gate, check: Any) -> Trial | None:
    """The chosen candidate packed with its small float tensors as float16,
    if that is smaller and the model as it unpacks still passes the gate."""
    from onnxshrink.packing import PackOptions, load_packed, pack_model

    result = pack_model(chosen.outcome.model, PackOptions(float16_small=True))
    stored = [t.name for t in result.report.tensors if t.stored_as == "float16"]
    if not stored or len(result.data) >= chosen.outcome.size:
        return None
    restored = load_packed(result.data)
    validation = compare_models(original, restored, check, gate=gate, measure_latency=True)
    if not validation.passed:
        return None
    outcome = dataclasses.replace(chosen.outcome, model=restored, packed=result.data, size=len(result.data),
                                  validation=validation, float16=stored)
    return dataclasses.replace(chosen, outcome=outcome)


def _floor_entry(floor: Trial | None, gate: Gate) -> dict[str, Any] | None:
    """The plain weight-only int8 trial the result was compared with, for the report."""
    if floor is None:
        return None
    if floor.failed is not None:
        return {"failed": floor.failed}
    return {"size_bytes": floor.outcome.size, "ratio": round(floor.ratio, 3), "passed": floor.passed,
            "budget_used": round(floor.accuracy_drop, 6), "validation": floor.outcome.validation.to_dict()}


def shrink(model: onnx.ModelProto, calib: Any, options: ShrinkOptions, *, eval_data: Any = None,
           model_name: str = "model", progress: Progress | None = None,
           on_trial: Callable[[TrialProgress], None] | None = None) -> ShrinkResult:
    """Run the recipe's stages on a copy of ``model``; ``model`` is not changed.

    ``calib`` is the calibration data (path, NpzData, ORT-style reader or
    batches), ``eval_data`` the labelled data the gate is measured on (without
    it the gate is measured on the calibration inputs, cosine only). Raises
    GateFailed (exit 1) when no candidate passes the gate or reaches
    ``target_ratio``. ``progress`` hears of each step's work, ``on_trial`` of
    each search trial as it starts, ends or is skipped (with an estimate of
    the time left).
    """
    progress = progress or (lambda task, done, total: None)
    recipe = options.recipe
    gate = options.effective_gate
    if gate.max_accuracy_drop is not None and eval_data is None:
        raise UsageError(f"recipe '{recipe.name}' gates on accuracy: give --eval DATA with labels, or --min-cosine X")
    original = onnx.ModelProto()
    original.CopyFrom(model)
    original_bytes = original.ByteSize()
    stages: list[dict[str, Any]] = [{"name": "original", "bytes": original_bytes, "packed_bytes": None, "note": ""}]
    base = original
    if recipe.simplify:
        from onnxshrink.simplify import simplify

        simplified = simplify(original)
        base = simplified.model
        stages.append({"name": "simplify", "bytes": base.ByteSize(), "packed_bytes": None,
                       "note": simplified.fallback_reason or f"{simplified.nodes_before} -> {simplified.nodes_after} nodes"})
    calib_batches = read_samples(calib, model_inputs(base), options.calib_samples)
    check = eval_data if eval_data is not None else calib_batches
    found = search(SearchInputs(original, original_bytes, base, options, gate, calib_batches, check, progress,
                                on_trial or (lambda status: None)))
    chosen = found.chosen
    for stage in chosen.outcome.stages:
        stages.append({"name": stage.name, "bytes": stage.model.ByteSize(), "packed_bytes": packed_size(stage.model)[0],
                       "note": stage.note})
    if recipe.pack and recipe.pack_float16_small and gate.active:
        chosen = _float16_small(chosen, original, gate, check) or chosen
    outcome = chosen.outcome
    if recipe.pack:
        float16 = outcome.float16
        note = (f"{len(float16)} small float tensors stored as float16 (gate checked on the unpacked model), "
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
        "layers": outcome.layers,
        "float16_tensors": outcome.float16,
        "search": [t.search_entry(chosen) for t in found.trials if t.failed is None] if found.searching else [],
        "skipped": [s.report_entry() for s in found.skipped],
        "trials": [{"mode": describe(t.candidate), "prune_budget_share": t.candidate.prune_budget_share,
                    "seconds": {k: round(v, 3) for k, v in t.seconds.items()}, "reused": t.reused,
                    "failed": t.failed, "ratio": round(t.ratio, 3), "passed": t.passed}
                   for t in found.trials + ([found.floor] if found.floor and found.floor not in found.trials else [])],
        "weight_only_int8": _floor_entry(found.floor, gate),
        "notes": list(found.notes),
        "final": outcome.validation.to_dict(),
    }
    return ShrinkResult(outcome.model, outcome.packed, report, outcome.validation)
