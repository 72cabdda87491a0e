"""Comparing a candidate model against a reference in onnxruntime.

* :mod:`~onnxshrink.validation.gate`: :class:`Gate`, what an accuracy gate is measured against, verdicts;
* :mod:`~onnxshrink.validation.kinds`: what kind of answer an output gives (class scores, sequences, ...);
* :mod:`~onnxshrink.validation.metrics`: one output's running comparison and its kind's agreement;
* :mod:`~onnxshrink.validation.regions`: regions read from a probability map (text detectors, segmentation);
* :mod:`~onnxshrink.validation.stateful`: state pairs and the closed loop stateful models run in;
* :mod:`~onnxshrink.validation.compare`: :func:`compare_models` and its :class:`ValidationReport`;
* :mod:`~onnxshrink.validation.reference`: the reference's outputs kept for searches that measure many candidates.
"""

from onnxshrink.validation.compare import ValidationReport, compare_models
from onnxshrink.validation.gate import (
    AGREEMENT_BASIS,
    DEFAULT_FLOOR,
    LABELS_BASIS,
    Gate,
    accuracy_gate_basis,
    flip_text,
    floor_failure,
)
from onnxshrink.validation.metrics import as_comparable
from onnxshrink.validation.stateful import parse_state

__all__ = ["AGREEMENT_BASIS", "DEFAULT_FLOOR", "LABELS_BASIS", "Gate", "ValidationReport", "accuracy_gate_basis",
           "as_comparable", "compare_models", "flip_text", "floor_failure", "parse_state"]
