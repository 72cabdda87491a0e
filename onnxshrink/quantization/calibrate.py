"""Calibration: one onnxruntime session over streaming batches, reduced to statistics.

The float model is run once per batch with the tensors to calibrate exposed
as extra outputs; each batch is folded into fixed-size statistics
(:mod:`onnxshrink.quantization.stats`) and dropped, so memory does not grow
with the number of samples.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import onnx

from onnxshrink import runtime
from onnxshrink.data import iter_batches, model_inputs
from onnxshrink.errors import DataError
from onnxshrink.quantization.stats import CalibrationStats

Progress = Callable[[str, int, int], None]


def calibrate(
    model: onnx.ModelProto,
    names: Sequence[str],
    data: Any,
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
    threads: int | None = None,
    histogram: bool = True,
) -> CalibrationStats:
    """Statistics of the values ``names`` of ``model`` over every sample of ``data``.

    ``data`` is an .npz path or folder, an NpzData, an onnxruntime-style
    CalibrationDataReader (``get_next()``) or an iterable of batches/dicts.
    ``histogram=False`` keeps only min/max (enough for the minmax method).
    ``model`` is not changed.
    """
    specs = model_inputs(model)
    input_names = {s.name for s in specs}
    exposed = [n for n in dict.fromkeys(names) if n not in input_names]
    session = runtime.create_session(runtime.with_outputs(model, exposed), threads=threads or os.cpu_count() or 1,
                                     name="calibration model")
    total = getattr(data, "num_samples", None)
    if total is None and isinstance(data, (str, os.PathLike)):
        from onnxshrink.data import NpzData

        data = NpzData(data)
        total = data.num_samples
    stats = CalibrationStats()
    for batch in iter_batches(data, specs, batch_size):
        missing = [s.name for s in specs if s.name not in batch.inputs]
        if missing:
            raise DataError(f"calibration data has no array for model input '{missing[0]}'")
        feed = {s.name: batch.inputs[s.name] for s in specs}
        values = dict(zip(exposed, runtime.run(session, feed, exposed, what="calibration"))) if exposed else {}
        for name in names:
            if name in input_names:
                values[name] = feed[name]
        stats.update(values, len(batch), histogram=histogram)
        del values, feed
        if progress:
            progress("calibrating", stats.samples, total or 0)
    if stats.samples == 0:
        raise DataError("the calibration data holds no samples")
    return stats
