"""onnxruntime sessions on CPU, and capturing intermediate tensors.

Every check onnxshrink makes runs the model for real with onnxruntime's
CPUExecutionProvider; this module is the only place that creates sessions.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from onnxshrink.data import Batch, InputSpec
from onnxshrink.errors import DataError, UnsupportedModelError

ModelSource = onnx.ModelProto | bytes | str | os.PathLike


def create_session(
    model: ModelSource, *, threads: int = 1, optimize: bool = True, name: str = "model"
) -> ort.InferenceSession:
    """A CPU session for ``model`` (a proto, serialized bytes or a path).

    ``threads`` sets intra-op threads (1 makes latency comparable across
    runs); ``optimize=False`` disables graph optimizations, so what runs is the
    graph as written. Raises UnsupportedModelError when onnxruntime refuses it.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # errors come back as exceptions; we print them as one line
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    keep_alive: list = []
    if isinstance(model, onnx.ModelProto):
        model, keep_alive = _serialized(model, options)
    try:
        session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                       providers=["CPUExecutionProvider"])
    except Exception as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise UnsupportedModelError(f"{name}: onnxruntime cannot load it ({first})") from None
    # onnxruntime uses the external initializers' memory in place: they live as long as the session.
    session._onnxshrink_initializers = keep_alive
    return session


# Above this many bytes of initializers a model cannot be one protobuf (2 GiB):
# its large initializers go to onnxruntime as OrtValues instead.
INLINE_SESSION_BYTES = 1_800_000_000
_EXTERNAL_MIN_BYTES = 1 << 20


def _serialized(model: onnx.ModelProto, options: ort.SessionOptions) -> tuple[bytes, list]:
    """``model`` as bytes for onnxruntime; a model over the protobuf limit as a
    skeleton plus its large main-graph initializers in ``options`` (the
    returned OrtValues must outlive the session). ``model`` is not changed."""
    from onnxshrink.external_data import _bytes_needed, _copy_fields_except

    sizes = [_bytes_needed(t) or 0 for t in model.graph.initializer]
    if sum(sizes) < INLINE_SESSION_BYTES:
        return model.SerializeToString(), []
    skeleton = onnx.ModelProto()
    _copy_fields_except(model, skeleton, "graph")
    _copy_fields_except(model.graph, skeleton.graph, "initializer")
    names, values = [], []
    for tensor, size in zip(model.graph.initializer, sizes):
        stub = skeleton.graph.initializer.add()
        if size < _EXTERNAL_MIN_BYTES or tensor.data_type == onnx.TensorProto.STRING:
            stub.CopyFrom(tensor)
            continue
        _copy_fields_except(tensor, stub, "raw_data", "float_data", "int32_data", "int64_data", "double_data",
                            "uint64_data", "external_data", "data_location")
        stub.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", "onnxshrink-in-memory"), ("offset", "0"), ("length", str(size))):
            entry = stub.external_data.add()
            entry.key, entry.value = key, value
        names.append(tensor.name)
        values.append(ort.OrtValue.ortvalue_from_numpy(numpy_helper.to_array(tensor)))
    options.add_external_initializers(names, values)
    # Prepacked weight copies would double the memory of a model this size.
    options.add_session_config_entry("session.disable_prepacking", "1")
    return skeleton.SerializeToString(), values


def run(session: ort.InferenceSession, feed: dict[str, np.ndarray], names: Sequence[str] | None = None, *, what: str = "model") -> list[np.ndarray]:
    """One run, with onnxruntime's failures turned into our DataError."""
    try:
        return session.run(list(names) if names else None, feed)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise DataError(f"{what}: onnxruntime failed on the given inputs ({first})") from None


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs the intermediate values ``names``."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    for name in names:
        if name not in present:
            exposed.graph.output.add().name = name
            present.add(name)
    return exposed


def capture(
    model: onnx.ModelProto,
    names: Sequence[str],
    batches: Iterable[Batch],
    *,
    threads: int | None = None,
) -> Iterator[tuple[Batch, dict[str, np.ndarray]]]:
    """Run ``model`` over ``batches`` in one session, yielding each batch with the
    values of ``names`` (intermediate tensors included). Callers reduce each
    batch to statistics, so memory does not grow with the number of batches."""
    names = list(dict.fromkeys(names))
    exposed = with_outputs(model, names)
    session = create_session(exposed, threads=threads or os.cpu_count() or 1)
    for batch in batches:
        values = run(session, batch.inputs, names, what="calibration")
        yield batch, dict(zip(names, values))


def median_latency_ms(session: ort.InferenceSession, feed: dict[str, np.ndarray], runs: int = 30, warmup: int = 5) -> float:
    """Median wall time of one ``session.run`` on ``feed``, in milliseconds."""
    for _ in range(warmup):
        run(session, feed, what="latency run")
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def first_sample(batch: Batch, specs: Sequence[InputSpec] = ()) -> dict[str, np.ndarray]:
    """The batch's first sample, keeping the batch axis (for latency runs).

    Inputs whose declared first dim is fixed (a batch of 2, or a weight fed
    as an input) and scalars are kept whole: one row of them is not a valid
    input.
    """
    fixed = {s.name for s in specs if not s.shape or s.shape[0] is not None}
    return {k: v if k in fixed or np.ndim(v) == 0 else v[:1] for k, v in batch.inputs.items()}


def model_size_bytes(path: str | os.PathLike) -> int:
    """A model file's size, external data files beside it included."""
    path = Path(path)
    size = path.stat().st_size
    data = path.with_name(path.name + ".data")
    return size + (data.stat().st_size if data.exists() else 0)

