"""onnxruntime sessions on CPU, and capturing intermediate tensors.

Every check onnxshrink makes runs the model for real with onnxruntime's
CPUExecutionProvider; this module is the only place that creates sessions.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import tempfile
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
    model: ModelSource, *, threads: int = 1, optimize: bool | str = True, name: str = "model",
    extra_outputs: Sequence[str] = (), optimized_model_path: str | os.PathLike | None = None,
) -> ort.InferenceSession:
    """A CPU session for ``model`` (a proto, serialized bytes or a path).

    ``threads`` sets intra-op threads (1 makes latency comparable across
    runs); ``optimize=False`` disables graph optimizations, so what runs is the
    graph as written, and ``"extended"`` stops at the extended level.
    ``extra_outputs`` (a proto only) also outputs those intermediate values,
    without copying the model. ``optimized_model_path`` is where onnxruntime
    writes the graph it optimized (its large initializers in a ``.data`` file
    beside it). A large model's weights reach onnxruntime through files it
    memory-maps (see ``_serialized``), never as a serialized copy. Raises
    UnsupportedModelError when onnxruntime refuses it.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # errors come back as exceptions; we print them as one line
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    elif optimize == "extended":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         Path(optimized_model_path).name + ".data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    keep_alive: list = []
    if isinstance(model, onnx.ModelProto):
        model, keep_alive = _serialized(model, options, extra_outputs)
    elif extra_outputs:
        raise TypeError("extra_outputs needs the model as an onnx.ModelProto")
    try:
        session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                       providers=["CPUExecutionProvider"])
    except Exception as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise UnsupportedModelError(f"{name}: onnxruntime cannot load it ({first})") from None
    # The temporary weights file and any OrtValues live as long as the session.
    session._onnxshrink_initializers = keep_alive
    return session


# How a large model reaches onnxruntime without a second copy of its weights in memory:
# a skeleton whose large tensors refer to a file onnxruntime memory-maps (the mapped
# tensors' own files; otherwise, from this many bytes of initializers, a temporary file).
FILE_SESSION_BYTES = 256 << 20
# With mapped tensors, in-memory initializers past the protobuf limit (2 GiB) go as OrtValues.
INLINE_SESSION_BYTES = 1_800_000_000
_EXTERNAL_MIN_BYTES = 1 << 20
_PAGE = 4096  # onnxruntime maps external data only at page-aligned offsets


def _serialized(model: onnx.ModelProto, options: ort.SessionOptions, extra_outputs: Sequence[str] = ()) -> tuple[bytes, list]:
    """``model`` (with ``extra_outputs``) as bytes for onnxruntime, and what must
    outlive the session; ``model`` is not changed.

    A large model goes as a skeleton whose large tensors onnxruntime
    memory-maps (file pages, read as the session runs, dropped with it):
    mapped tensors from their own files, other large initializers from a
    temporary file written one tensor at a time. With mapped tensors, other
    initializers past the protobuf limit go as OrtValues in ``options``
    (onnxruntime copies those).
    """
    from onnxshrink.external_data import _bytes_needed, _copy_fields_except
    from onnxshrink.model import all_tensors, has_mapped, is_mapped, mapped_file

    sizes = [_bytes_needed(t) or 0 for t in model.graph.initializer]
    mapped = has_mapped(model)
    inline = sum(size for t, size in zip(model.graph.initializer, sizes) if not is_mapped(t))
    if not mapped and inline < FILE_SESSION_BYTES:
        return (with_outputs(model, extra_outputs) if extra_outputs else model).SerializeToString(), []
    skeleton = onnx.ModelProto()
    _copy_fields_except(model, skeleton, "graph")
    _copy_fields_except(model.graph, skeleton.graph, "initializer")
    _add_outputs(skeleton, extra_outputs)
    keep_alive: list = []
    folder = None
    data = None
    names, values = [], []
    if not mapped:
        temporary = tempfile.TemporaryDirectory(prefix="onnxshrink-session-")
        keep_alive.append(temporary)  # removed with the session
        folder = Path(temporary.name)
        data = open(folder / "weights.bin", "wb")
    with data or contextlib.nullcontext():
        for tensor, size in zip(model.graph.initializer, sizes):
            stub = skeleton.graph.initializer.add()
            movable = (size >= _EXTERNAL_MIN_BYTES and tensor.data_type != onnx.TensorProto.STRING
                       and tensor.data_location != onnx.TensorProto.EXTERNAL)
            if not movable or (data is None and inline < INLINE_SESSION_BYTES):
                stub.CopyFrom(tensor)
                continue
            _copy_fields_except(tensor, stub, "raw_data", "float_data", "int32_data", "int64_data", "double_data",
                                "uint64_data", "external_data", "data_location")
            stub.data_location = onnx.TensorProto.EXTERNAL
            location, offset = "onnxshrink-in-memory", 0
            if data is not None:
                data.write(b"\0" * (-data.tell() % _PAGE))
                location, offset = "weights.bin", data.tell()
                data.write(tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes())
            else:
                names.append(tensor.name)
                values.append(ort.OrtValue.ortvalue_from_numpy(numpy_helper.to_array(tensor)))
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(size))):
                entry = stub.external_data.add()
                entry.key, entry.value = key, value
    if mapped:
        tensors = [t for t, _ in all_tensors(skeleton) if is_mapped(t)]
        files = [mapped_file(t) for t in tensors]
        folder = Path(os.path.commonpath([str(f.parent) for f in files]))
        for tensor, file in zip(tensors, files):
            info = {e.key: e.value for e in tensor.external_data}
            info["location"] = os.path.relpath(file, folder)
            del tensor.external_data[:]
            for key in ("location", "offset", "length"):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, info[key]
    # onnxruntime reads the external data of a model given as bytes from this folder.
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
    if names:
        options.add_external_initializers(names, values)
    # Prepacked weight copies would double the memory of a model this size.
    options.add_session_config_entry("session.disable_prepacking", "1")
    return skeleton.SerializeToString(), keep_alive + values


def _libc_malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_malloc_trim = _libc_malloc_trim()
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc malloc.h)


def fix_mmap_threshold(threshold: int = 4 << 20) -> None:
    """Have glibc serve every allocation of ``threshold`` bytes or more from a
    mapping of its own, returned to the system when freed. By default glibc
    slides that threshold up to the largest block freed so far (up to 32 MB);
    weight-sized buffers then come from the heap and stay there, so a process's
    peak RSS depends on the order of its earlier allocations (dynamic int8 of
    123 MB of external weights: 2.7x or 2.95x them as imports moved, 2.34x with
    the threshold fixed). For the command-line process: a library does not set
    the allocator policy of the program that imports it. No-op without glibc."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, int(threshold))
    except (OSError, AttributeError):
        pass


def release_memory() -> None:
    """Hand memory freed since (a dropped session, serialized copies, per-weight
    temporaries) back to the system. glibc keeps freed heap memory for reuse, and
    a large model's passes free hundreds of MB at a time: without this the
    process's peak RSS grows by what the previous step left behind."""
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)


def run(session: ort.InferenceSession, feed: dict[str, np.ndarray], names: Sequence[str] | None = None, *, what: str = "model") -> list[np.ndarray]:
    """One run, with onnxruntime's failures turned into our DataError."""
    try:
        return session.run(list(names) if names else None, feed)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise DataError(f"{what}: onnxruntime failed on the given inputs ({first})") from None


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs the intermediate values ``names``
    (for a session, ``create_session(model, extra_outputs=names)`` needs no copy)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    _add_outputs(exposed, names)
    return exposed


def _add_outputs(model: onnx.ModelProto, names: Iterable[str]) -> None:
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.add().name = name
            present.add(name)


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
    session = create_session(model, threads=threads or os.cpu_count() or 1, extra_outputs=names)
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

