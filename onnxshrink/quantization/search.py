"""Accuracy-aware quantization: keep the most sensitive nodes in float until a target holds.

Sensitivity of a node is the output error it adds when it alone is
quantized (1 - cosine of the outputs against the float model, on a few
batches). Nodes are then put back in float, most sensitive first, until the
target (output cosine, or accuracy drop in points: on labelled data against
the labels, else the share of the original's answers that changed) holds on
the evaluation data.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import onnx

from onnxshrink.validation import AGREEMENT_BASIS, LABELS_BASIS
from onnxshrink.validation.gate import changed_points
from onnxshrink.validation.reference import KeptReference

# Reference outputs are kept in memory up to this size; beyond, the float model is re-run.
CACHE_LIMIT_BYTES = 256 << 20
# Each node's sensitivity is scored on at most this many samples (rows, in a closed loop).
SENSITIVITY_SAMPLES = 256


@dataclasses.dataclass
class Score:
    """How a candidate compares with the float model on the evaluation data."""

    cosine: float  # the lowest over outputs
    accuracy: float | None
    reference_accuracy: float | None
    answers_changed: float = 0.0  # points: the most any output's answers changed

    @property
    def drop_points(self) -> float | None:
        """The labelled accuracy drop; without labels, the share (points) of the original's answers that changed."""
        if self.accuracy is None or self.reference_accuracy is None:
            return self.answers_changed
        return 100.0 * (self.reference_accuracy - self.accuracy)

    def to_dict(self) -> dict[str, Any]:
        return {"cosine": self.cosine, "accuracy": self.accuracy, "reference_accuracy": self.reference_accuracy,
                "accuracy_drop_points": self.drop_points, "answers_changed_points": self.answers_changed,
                "basis": LABELS_BASIS if self.accuracy is not None else AGREEMENT_BASIS}


class Evaluator:
    """Scores quantized candidates against one float model on fixed data, as
    :func:`onnxshrink.validation.compare_models` would (output kinds, closed
    loop for stateful models). The float model runs once; its outputs are
    kept (up to CACHE_LIMIT_BYTES; beyond, it is run again per candidate)."""

    def __init__(self, reference: onnx.ModelProto, data: Any, batch_size: int = 64, max_samples: int | None = None,
                 state: tuple[tuple[str, str], ...] = ()):
        self.kept = KeptReference(reference, data, state=state, batch_size=batch_size, limit=max_samples,
                                  cache_bytes=CACHE_LIMIT_BYTES)
        self.labelled = self.kept.labelled

    def score(self, candidate: onnx.ModelProto) -> Score:
        measured = self.kept.measure(candidate)
        changed = changed_points(measured.outputs)[0]
        if measured.labelled:
            return Score(measured.cosine, measured.accuracy, measured.reference_accuracy, changed)
        return Score(measured.cosine, None, None, changed)


def meets(score: Score, options: Any) -> bool:
    """Whether ``score`` holds the options' target (min_cosine, max_accuracy_drop or min_agreement)."""
    if options.min_cosine is not None and score.cosine < options.min_cosine:
        return False
    if options.max_accuracy_drop is not None and (score.drop_points or 0.0) > options.max_accuracy_drop + 1e-9:
        return False
    if options.min_agreement is not None and score.answers_changed > 100.0 * (1.0 - options.min_agreement) + 1e-9:
        return False
    return True


def _out_of_time(deadline: float | None, what: str) -> None:
    if deadline is not None and time.perf_counter() > deadline:
        from onnxshrink.errors import GateFailed

        raise GateFailed(f"the accuracy-aware search ran out of its time budget {what}; nothing written")


def sensitivities(candidates: list[str], build_only: Callable[[str], onnx.ModelProto], probe: Evaluator,
                  progress: Callable[[str, int, int], None] | None = None,
                  deadline: float | None = None) -> dict[str, float]:
    """1 - output cosine when each candidate node alone is quantized (GateFailed
    once ``deadline``, a ``time.perf_counter()`` value, has passed)."""
    result = {}
    for k, name in enumerate(candidates):
        _out_of_time(deadline, f"while measuring sensitivities ({k} of {len(candidates)} nodes)")
        result[name] = 1.0 - probe.score(build_only(name)).cosine
        if progress:
            progress("measuring sensitivity", k + 1, len(candidates))
    return result


def accuracy_aware(prepared, source, options, data, keep: dict[str, str], build, progress=None, deadline=None):
    """Put nodes back in float, most sensitive first, until the target holds.

    Returns (model, plan, records, keep, log, target); raises GateFailed when
    the target needs every node in float, or when ``deadline`` (a
    ``time.perf_counter()`` value) passes first."""
    from onnxshrink.errors import GateFailed

    target = {"min_cosine": options.min_cosine, "max_accuracy_drop": options.max_accuracy_drop,
              "min_agreement": options.min_agreement}
    evaluator = Evaluator(prepared.model, data, state=options.state)
    model, plan, records = build(prepared, source, options, frozenset(keep))
    score = evaluator.score(model)
    log = [{"float_nodes": [], **score.to_dict()}]
    if meets(score, options):
        return model, plan, records, keep, log, {**target, "met": True, **score.to_dict()}
    candidates = [n for n, p in plan.nodes.items() if p.rule.output != "shared"]
    probe = Evaluator(prepared.model, data, max_samples=SENSITIVITY_SAMPLES, state=options.state)
    everything = frozenset(candidates) | frozenset(keep)
    sens = sensitivities(candidates, lambda n: build(prepared, source, options, everything - {n})[0], probe, progress,
                         deadline)
    order = sorted(candidates, key=lambda n: -sens[n])
    for k in range(1, len(order)):
        _out_of_time(deadline, f"with {k - 1} nodes kept in float")
        chosen = order[:k]
        trial = dict(keep)
        trial.update({n: f"kept in float by the accuracy-aware search (sensitivity {sens[n]:.2e})" for n in chosen})
        model, plan, records = build(prepared, source, options, frozenset(trial))
        if not any(p.rule.output != "shared" for p in plan.nodes.values()):
            break  # nothing left in int8 (joins follow their inputs back to float)
        score = evaluator.score(model)
        log.append({"float_nodes": chosen, **score.to_dict()})
        if progress:
            progress("searching", k, len(order))
        if meets(score, options):
            return model, plan, records, trial, log, {**target, "met": True, **score.to_dict()}
    what = (f"accuracy drop <= {options.max_accuracy_drop} points" if options.max_accuracy_drop is not None
            else f"{100 * options.min_agreement:g}% of the original's answers" if options.min_agreement is not None
            else f"output cosine >= {options.min_cosine}")
    raise GateFailed(f"cannot reach {what} with any node quantized (best with one node left: cosine {score.cosine:.6f}"
                     + (f", drop {score.drop_points:.2f} points" if score.drop_points is not None else "")
                     + "); nothing written. Relax the target or exclude ops with --exclude-ops")
