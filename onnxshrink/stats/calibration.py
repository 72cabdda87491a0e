"""Calibration data as the statistics passes read it: a bounded list of batches."""

from __future__ import annotations

from typing import Any, Protocol

import onnx

from onnxshrink.data import Batch, model_inputs, read_samples


class CalibrationBudget(Protocol):
    """The two option fields that say how much calibration data a pass reads
    (PruneOptions and WeightOnlyOptions both have them)."""

    calib_samples: int
    batch_size: int


def load_calibration(calib: Any, model: onnx.ModelProto, options: CalibrationBudget) -> list[Batch] | None:
    """Up to ``options.calib_samples`` samples of ``calib`` as a list of batches
    (passes read them more than once)."""
    if calib is None:
        return None
    return read_samples(calib, model_inputs(model), options.calib_samples, options.batch_size)
