"""Comparing a candidate model against a reference in onnxruntime: gates, metrics, reports."""

from onnxshrink.validation.compare import (
    Gate,
    ValidationReport,
    accuracy_gate_basis,
    as_comparable,
    compare_models,
    flip_text,
)

__all__ = ["Gate", "ValidationReport", "accuracy_gate_basis", "as_comparable", "compare_models", "flip_text"]
