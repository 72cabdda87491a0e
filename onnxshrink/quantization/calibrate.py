"""Calibration: one onnxruntime session over streaming batches, reduced to statistics.

The float model is run once per batch with the tensors to calibrate exposed
as extra outputs; each batch is folded into fixed-size statistics
(:mod:`onnxshrink.quantization.stats`) and dropped, so memory does not grow
with the number of samples.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from onnxshrink import runtime
from onnxshrink.data import iter_batches, model_inputs
from onnxshrink.errors import DataError
from onnxshrink.quantization.bias_correction import ChannelMeans
from onnxshrink.quantization.stats import CalibrationStats

Progress = Callable[[str, int, int], None]
# Exposed intermediate tensors of one run stay under this (large images: fewer samples per run).
MEMORY_BUDGET_BYTES = 64 << 20


def calibrate(
    model: onnx.ModelProto,
    names: Sequence[str],
    data: Any,
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
    threads: int | None = None,
    histogram: bool = True,
    memory_budget: int = MEMORY_BUDGET_BYTES,
    channel_means: ChannelMeans | None = None,
) -> CalibrationStats:
    """Statistics of the values ``names`` of ``model`` over every sample of ``data``.

    ``data`` is an .npz path or folder, an NpzData, an onnxruntime-style
    CalibrationDataReader (``get_next()``) or an iterable of batches/dicts.
    ``histogram=False`` keeps only min/max (enough for the minmax method).
    Each run holds at most ``batch_size`` samples and, after a first
    one-sample run measures them, no more than fit ``memory_budget`` bytes of
    exposed tensors. ``channel_means`` (bias correction's accumulator) is fed
    its tensors in the same runs.
    ``model`` is not changed.
    """
    specs = model_inputs(model)
    input_names = {s.name for s in specs}
    wanted = list(dict.fromkeys([*names, *(channel_means.names if channel_means is not None else [])]))
    exposed = [n for n in wanted if n not in input_names]
    session = runtime.create_session(model, threads=threads or os.cpu_count() or 1, name="calibration model",
                                     extra_outputs=exposed)
    total = getattr(data, "num_samples", None)
    if total is None and isinstance(data, (str, os.PathLike)):
        from onnxshrink.data import NpzData

        data = NpzData(data)
        total = data.num_samples
    stats = CalibrationStats()
    # samples per run, so that the exposed tensors of one run fit in the budget (a fixed batch dim: as given)
    fixed_batch = any(s.shape and s.shape[0] is not None and s.shape[0] > 0 for s in specs)
    chunk = batch_size if fixed_batch else None
    for batch in iter_batches(data, specs, batch_size):
        missing = [s.name for s in specs if s.name not in batch.inputs]
        if missing:
            raise DataError(f"calibration data has no array for model input '{missing[0]}'")
        # runs are split along axis 0 only when every input is batched along it; per-run samples
        # (a scalar, an RNN state [2, batch, H]: Batch.size set) and fixed batch dims go whole
        arrays = [np.asarray(batch.inputs[s.name]) for s in specs]
        splittable = (not fixed_batch and batch.size is None and all(a.ndim for a in arrays)
                      and len({a.shape[0] for a in arrays}) == 1)
        start = 0
        while start < len(batch):
            step = (chunk or 1) if splittable else len(batch)
            feed = {s.name: (batch.inputs[s.name][start:start + step] if splittable else batch.inputs[s.name])
                    for s in specs}
            values = dict(zip(exposed, runtime.run(session, feed, exposed, what="calibration"))) if exposed else {}
            if chunk is None and splittable:
                per_sample = max(1, sum(v.nbytes for v in values.values()))
                chunk = int(max(1, min(batch_size, memory_budget // per_sample)))
            for name in wanted:
                if name in input_names:
                    values[name] = feed[name]
            if channel_means is not None:
                channel_means.update(values)
            stats.update({n: values[n] for n in names}, min(step, len(batch) - start), histogram=histogram)
            del values, feed
            start += step
        if progress:
            progress("calibrating", stats.samples, total or 0)
    del session
    runtime.release_memory()
    if stats.samples == 0:
        raise DataError("the calibration data holds no samples")
    return stats
