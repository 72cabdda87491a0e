"""The gate as a budget: how much of it a model uses, and a share of it as a sub-gate.

An accuracy gate's budget is in accuracy points (on unlabelled data: points
of the original model's answers that may change, see
:mod:`onnxshrink.validation.gate`); a cosine gate's is ``1 - min_cosine``.
Pruning gets a share of the budget, quantization what pruning left.
"""

from __future__ import annotations

from onnxshrink.validation import Gate, ValidationReport


def used(report: ValidationReport, gate: Gate) -> float:
    """How much of the budget a model uses: accuracy points (labelled drop, or
    the share of the original's answers that changed), or 1 - min cosine."""
    if gate.max_accuracy_drop is not None:
        return max(report.drop_points, 0.0)
    return max(1.0 - min(m["cosine"] for m in report.outputs.values()), 0.0)


def budget(gate: Gate) -> float:
    """The whole budget of ``gate``."""
    return gate.max_accuracy_drop if gate.max_accuracy_drop is not None else 1.0 - (gate.min_cosine or 1.0)


def sub_gate(gate: Gate, amount: float) -> dict[str, float]:
    """A target of the same kind as ``gate`` allowing ``amount`` of its budget
    (as option fields: ``max_accuracy_drop`` or ``min_cosine``)."""
    if gate.max_accuracy_drop is not None:
        return {"max_accuracy_drop": max(amount, 0.0)}
    return {"min_cosine": min(1.0, 1.0 - max(amount, 0.0))}
