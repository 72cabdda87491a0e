"""Quality gates: thresholds, what an accuracy gate is measured against, verdicts.

An accuracy gate (``max_accuracy_drop``, in points) is measured against the
data's ``labels`` when it has them. Without labels it is measured against the
original model's own answers: at most that many percent of them may change
(per output kind: top-1 classes, class sequences, decisions, a map's regions,
nearest neighbours; see :mod:`onnxshrink.validation.kinds`). A flag the user gave on
unlabelled data is refused before any work (they asked for accuracy); a
recipe's gate is measured the label-free way and the report says so.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from onnxshrink.data import NpzData
from onnxshrink.errors import UsageError
from onnxshrink.validation.metrics import answers_changed_points

LABELS_BASIS = "labels"
AGREEMENT_BASIS = "agreement with the original model's answers (no labels)"


@dataclasses.dataclass(frozen=True)
class Gate:
    """Quality thresholds; a None field is not checked.

    ``max_accuracy_drop`` is in accuracy points (percent): 1.0 allows the
    candidate to be one point below the reference (on unlabelled data: 1 % of
    the original's answers to change). ``min_cosine`` bounds every output's
    cosine. ``min_agreement`` asks every output to keep at least this fraction
    of the original's answers, labels or not (outputs with no answer to
    compare: the lowest per-sample cosine); it is the floor ``quantize``
    checks when no gate is given.
    """

    min_cosine: float | None = None
    max_accuracy_drop: float | None = None
    min_agreement: float | None = None

    def __post_init__(self) -> None:
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise UsageError(f"--min-cosine must lie in [-1, 1], got {self.min_cosine}")
        if self.max_accuracy_drop is not None and not 0.0 <= self.max_accuracy_drop <= 100.0:
            raise UsageError(f"--max-accuracy-drop is in points and must lie in [0, 100], got {self.max_accuracy_drop}")
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 1.0:
            raise UsageError(f"the agreement floor must lie in [0, 1], got {self.min_agreement}")

    @property
    def active(self) -> bool:
        return self.min_cosine is not None or self.max_accuracy_drop is not None or self.min_agreement is not None


# What `quantize` checks when it is given no gate: a result that changes more
# than 2 % of the original's answers on the eval (else calibration) data is
# not handed back. Outputs with no answer to compare (dense maps) need every
# sample's cosine >= 0.98.
DEFAULT_FLOOR = Gate(min_agreement=0.98)


def accuracy_gate_basis(data: Any, *, explicit: bool, flag: str = "--max-accuracy-drop") -> str:
    """How an accuracy gate is measured on ``data``, decided before any work;
    the one place that decides it.

    ``"labels"``: top-1 accuracy against the data's ``labels`` (data whose
    labels are seen only as it is read, readers or batches, counts as
    labelled here; the measurement falls back to agreement if it is not).
    Unlabelled data: an ``explicit`` gate (a flag the user gave) is refused
    with a UsageError naming the file (exit 2, before any work); a gate
    that comes from a recipe gives :data:`AGREEMENT_BASIS`: it is measured
    against the original model's own answers.
    """
    if isinstance(data, (str, os.PathLike)):
        data = NpzData(data)
    if not isinstance(data, NpzData) or data.has_labels:
        return LABELS_BASIS
    if explicit:
        raise UsageError(f"{flag} needs labels in {data.path}: add an array 'labels' (one class per sample), "
                         "or gate on --min-cosine instead")
    return AGREEMENT_BASIS


def flip_text(accuracy: dict[str, Any]) -> str:
    """How many labelled samples changed verdict, and what one sample weighs:
    on small eval sets a drop of a few tenths of a point is a sample or two."""
    n = accuracy.get("labelled")
    if not n:
        return ""
    return (f"{accuracy['lost']} of {n} samples newly wrong, {accuracy['gained']} newly right; "
            f"one sample is {100.0 / n:.3g} points")


def changed_points(outputs: dict[str, dict[str, Any]]) -> tuple[float, str | None]:
    """The most any output's answers changed, in points, and which output."""
    worst, name = 0.0, None
    for output, metrics in outputs.items():
        points = answers_changed_points(metrics)
        if name is None or points > worst:
            worst, name = points, output
    return worst, name


def _what_changed(name: str, m: dict[str, Any]) -> str:
    if m.get("agreement") is not None:
        return f"output '{name}' ({m['kind']}) keeps {100 * m['agreement']:.2f}% of the original's answers ({m['agreement_of']})"
    return f"output '{name}' ({m['kind']}: no answer to compare) has a sample at cosine {m['min_sample_cosine']:.4f}"


def check_gate(gate: Gate, outputs: dict[str, dict[str, Any]], accuracy: dict[str, Any] | None) -> list[str]:
    """The gate's failures (empty: it holds). ``accuracy`` is the labelled
    top-1 accuracy, None on unlabelled data (the gate then counts the
    original's answers that changed)."""
    failures = []
    if gate.min_cosine is not None:
        for name, m in outputs.items():
            if m["cosine"] < gate.min_cosine:
                failures.append(f"output '{name}' cosine {m['cosine']:.6f} < {gate.min_cosine}")
    if gate.max_accuracy_drop is not None:
        if accuracy is not None:
            drop = 100.0 * (accuracy["reference"] - accuracy["candidate"])
            if drop > gate.max_accuracy_drop + 1e-9:
                failures.append(f"accuracy drop {drop:.2f} points > {gate.max_accuracy_drop} ({flip_text(accuracy)})")
        else:
            for name, m in outputs.items():
                points = answers_changed_points(m)
                if points > gate.max_accuracy_drop + 1e-9:
                    failures.append(f"{points:.2f}% of the original's answers changed > {gate.max_accuracy_drop} "
                                    f"(no labels): {_what_changed(name, m)}")
    if gate.min_agreement is not None:
        for name, m in outputs.items():
            points = answers_changed_points(m)
            if points > 100.0 * (1.0 - gate.min_agreement) + 1e-9:
                failures.append(f"{_what_changed(name, m)}, below the floor of {100 * gate.min_agreement:.0f}%")
    return failures


def floor_failure(what: str, report: Any) -> str:
    """The one line a pass gives when its result fails the default floor (exit 1, nothing written)."""
    return (f"{what} fails the default quality floor on the {report.checked_on} (every output keeps "
            f"{100 * DEFAULT_FLOOR.min_agreement:.0f}% of the original's answers): {'; '.join(report.failures)}; "
            "nothing written. --no-gate writes it anyway")
