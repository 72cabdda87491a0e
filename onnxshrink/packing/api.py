"""Packing a model into an .onnxz container and reading it back.

``pack_model`` leaves the caller's model alone: it works on a copy, encodes
each large tensor with the codec that measures smallest, strips the data from
the copy and returns the container bytes. ``load_packed`` checks and restores
every tensor bit for bit. ``pack_file`` and ``unpack_file`` stream instead:
one tensor's bytes and its payload in memory at a time (pack reads each
external tensor when it encodes it; unpack decodes each large tensor into
the output's data file), so a model of any size packs and unpacks in about
one copy of its weights or less. The read side imports only numpy, onnx and
the standard library (onnxruntime only to build a session).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx

from onnxshrink import external_data
from onnxshrink.errors import OnnxShrinkError, PackError, UsageError
from onnxshrink.external_data import DeferredData, ExternalReference
from onnxshrink.fileio import atomic_output, copy_rest, read_at
from onnxshrink.model import data_bytes, serialized_size
from onnxshrink.packing import container, splice, tensors
from onnxshrink.packing.container import Limits
from onnxshrink.packing.decoder import Job, PackedSource
from onnxshrink.packing.encoder import DEFAULT_CODECS, PackOptions, encode_tensors, quantization_parameters
from onnxshrink.packing.forms import changes, check_mode
from onnxshrink.packing.forms import materialize as put_in_form  # the parameter is named materialize
from onnxshrink.packing.native import LayerForm
from onnxshrink.packing.report import PackReport

# unpack_file writes tensors this large straight from the decoder into the output
# file instead of into the model (whose serialization would be a second copy).
STREAM_MIN_BYTES = 1 << 20

__all__ = ["DEFAULT_CODECS", "PackOptions", "PackResult", "load_packed", "pack_file", "pack_model",
           "quantization_parameters", "unpack_file", "write_packed"]


@dataclasses.dataclass(frozen=True)
class PackResult:
    """The container bytes and what went into them."""

    data: bytes
    report: PackReport

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return self.report.to_dict()


def pack_model(model: onnx.ModelProto, options: PackOptions = PackOptions()) -> PackResult:
    """Pack ``model`` (all tensor data in memory) into container bytes.

    The model is not modified. Deterministic: the same model and options give
    byte-identical output. Mapped tensors (``load_model(...,
    map_external_data=True)``) are read from their files one at a time.
    Raises PackError for a tensor that still refers to other external data
    (load models with :func:`onnxshrink.model.load_model`, or pack files with
    :func:`pack_file`, which reads it tensor by tensor).
    """
    model_bytes = _model_bytes(model)
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    payloads = io.BytesIO()
    entries, rows = encode_tensors(skeleton, options, payloads)
    head = container.head(skeleton.SerializeToString(deterministic=True), entries)
    with payloads.getbuffer() as body:
        blob = b"".join([head, body])
    return PackResult(blob, PackReport(rows, model_bytes, len(blob), len(head)))


def _model_bytes(model: onnx.ModelProto) -> int:
    """The report's model size: as a plain .onnx with all data inline (mapped tensors' too)."""
    from onnxshrink.model import is_mapped

    mapped = {s.ordinal: int({e.key: e.value for e in s.tensor.external_data}["length"])
              for s in tensors.tensor_slots(model) if is_mapped(s.tensor)}
    return _loaded_size(model, mapped) if mapped else serialized_size(model)


def write_packed(result: PackResult, path: str | os.PathLike) -> None:
    """Write the container atomically: ``path`` is whole or untouched."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(result.data)


def pack_file(src: str | os.PathLike, dst: str | os.PathLike, options: PackOptions = PackOptions()) -> PackReport:
    """Pack the model at ``src`` into ``dst`` (atomic; ``src`` is only read).

    Streams: external data is read one tensor at a time as it is encoded and
    each payload goes to a scratch file beside ``dst`` (deleted whatever
    happens) as soon as it is made; then ``dst`` gets the header and the
    payloads. Memory: the model as stored in ``src`` (no external data) plus
    about one tensor. The bytes written are those of :func:`pack_model` on
    the loaded model.

    Raises ModelLoadError/UnsafeModelError for a bad input, UsageError when
    ``dst`` is ``src``.
    """
    from onnxshrink.model import load_model

    _refuse_same_file(src, dst)
    if _starts_with_magic(src):
        raise UsageError(f"{src}: already packed (an .onnxz container); unpack it first: "
                         f"onnxshrink unpack {src} -o MODEL.onnx")
    model = load_model(src, load_external_data=False)
    external = _external_slots(model, Path(src))
    model_bytes = _loaded_size(model, {k: ref.length for k, ref in external.items()})
    with atomic_output(dst) as tmp, open(tmp, "wb") as out, tempfile.TemporaryFile(dir=tmp.parent) as payloads:
        entries, rows = encode_tensors(model, options, payloads, external)
        head = container.head(model.SerializeToString(deterministic=True), entries)
        out.write(head)
        payloads.seek(0)
        copy_rest(payloads, out)
        size = out.tell()
    return PackReport(rows, model_bytes, size, len(head))


def _external_slots(model: onnx.ModelProto, path: Path) -> dict[int, ExternalReference]:
    """The checked external-data reference of each tensor slot still stored in
    a file, by ordinal. Other external tensors (sparse initializers, which
    are not packed) are read into the model now, as ``load_model`` would."""
    from onnxshrink.model import iter_graphs

    refs = external_data.resolve_references(model, path.parent, model_name=str(path))
    by_key = {_reference_key(ref.tensor): ref for ref in refs}
    found = {slot.ordinal: by_key[key] for slot in tensors.tensor_slots(model)
             if slot.tensor.data_location == onnx.TensorProto.EXTERNAL
             and (key := _reference_key(slot.tensor)) in by_key}
    for graph, _ in iter_graphs(model.graph):
        for sparse in graph.sparse_initializer:
            for t in (sparse.values, sparse.indices):
                if t.data_location == onnx.TensorProto.EXTERNAL and _reference_key(t) in by_key:
                    external_data.load_into([dataclasses.replace(by_key[_reference_key(t)], tensor=t)])
    return found


def _reference_key(t: onnx.TensorProto) -> tuple:
    """What a checked reference depends on: tensors that share it read the same bytes."""
    return tuple((e.key, e.value) for e in t.external_data), t.data_type, tuple(t.dims)


def _loaded_size(model: onnx.ModelProto, lengths: dict[int, int]) -> int:
    """``serialized_size`` of ``model`` once its external data is loaded."""
    size = tensors.loaded_byte_size(model, lengths)
    # Over protobuf's 2 GiB limit serialized_size falls back on the data bytes.
    return size if size < 1 << 31 else data_bytes(model)


def load_packed(source: str | os.PathLike | bytes | bytearray | memoryview, limits: Limits = Limits(),
                materialize: str = "qdq", forms: list[LayerForm] | None = None) -> onnx.ModelProto:
    """Read a packed model (a path or the container bytes) into a ModelProto
    whose tensors are bit-identical to those packed.

    Every size is checked against ``limits`` and the real bytes before it is
    allocated, and every tensor against its CRC32. Anything wrong raises
    PackError, never another exception. A file is read one payload at a time.

    ``materialize`` (:mod:`onnxshrink.packing.forms`): ``"qdq"``
    (default) gives the model as packed, bit for bit; ``"native"`` runs
    weight-only quantized MatMul/Gemm/Gather layers on onnxruntime's low-bit
    kernels (``com.microsoft.MatMulNBits``, ``GatherBlockQuantized``; the
    weights stay 4/8-bit in memory); ``"float"`` replaces each quantized
    weight's DequantizeLinear node by a float32 initializer of exactly the
    values the node computes; ``"auto"`` is native for layers large enough to
    gain, float for the other weight-only weights (Conv, small layers), and
    keeps static QDQ, which onnxruntime runs in integer kernels, as packed.
    ``forms``, when given, gets the form each quantized weight got.
    """
    check_mode(materialize)
    with _open_packed(source, limits) as (packed, name):
        _decode_into_model(packed, packed.jobs, name)
    model = packed.model
    if materialize != "qdq" or forms is not None:  # "qdq" leaves the model as packed
        chosen = put_in_form(model, materialize)
        if forms is not None:
            forms.extend(chosen)
    return model


@contextlib.contextmanager
def _open_packed(source: str | os.PathLike | bytes | bytearray | memoryview, limits: Limits
                 ) -> Iterator[tuple[PackedSource, str]]:
    """The checked container at ``source`` (bytes or a path, kept open while in use) and its name."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source).cast("B")
        with _corrupt_as_pack_error("packed model"):
            packed = PackedSource(lambda offset, n: view[offset : offset + n], len(view), limits)
        yield packed, "packed model"
        return
    path = Path(source)
    if not path.is_file():
        raise PackError(f"{path}: no such file")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise PackError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        with _corrupt_as_pack_error(str(path)):
            packed = PackedSource(lambda offset, n: _read_or_refuse(f, offset, n, path), os.fstat(f.fileno()).st_size,
                                  limits)
        yield packed, str(path)


def _read_or_refuse(f, offset: int, n: int, path: Path) -> bytearray:
    try:
        return read_at(f, offset, n)
    except OSError as e:
        raise PackError(f"cannot read ({e.strerror})") from None


@contextlib.contextmanager
def _corrupt_as_pack_error(name: str) -> Iterator[None]:
    """Errors while reading a container become one PackError naming it."""
    try:
        yield
    except OnnxShrinkError as e:
        raise PackError(f"{name}: {e}") from None
    except Exception as e:  # anything else a corrupt file provokes is still a corrupt file
        raise PackError(f"{name}: corrupt container ({type(e).__name__} while decoding)") from None


def unpack_file(src: str | os.PathLike, dst: str | os.PathLike, limits: Limits = Limits(),
                materialize: str = "qdq", forms: list[LayerForm] | None = None) -> onnx.ModelProto:
    """Restore the packed model at ``src`` as a plain .onnx at ``dst``
    (atomic), bit-exact with ``materialize="qdq"``; ``materialize`` and
    ``forms`` as for :func:`load_packed`.

    The file is byte for byte what ``save_model`` writes for the restored
    model, but tensors are decoded and written one at a time, never all held
    in memory (unless another ``materialize`` changes the model: then the
    whole model is restored in memory first). A
    model too large for one protobuf gets its main-graph initializers in
    ``<dst name>.data``; in one under that limit, tensors of
    ``STREAM_MIN_BYTES`` or more are spliced into the protobuf as they
    decode. Returns the model as written, except for that data: tensors
    in the data file refer to it, and spliced ones come back without data.
    """
    from onnxshrink.model import INLINE_LIMIT_BYTES, all_tensors, save_model

    _refuse_same_file(src, dst)
    check_mode(materialize)
    with _open_packed(src, limits) as (packed, name):
        model, jobs = packed.model, packed.jobs
        if changes(model, materialize):  # the skeleton's nodes and dtypes say so
            _decode_into_model(packed, jobs, name)
            chosen = put_in_form(model, materialize)
            if forms is not None:
                forms.extend(chosen)
            save_model(model, dst)
            return model
        if forms is not None:
            forms.extend(put_in_form(model, "qdq"))  # names the quantized weights; changes nothing
        restored = sum(t.ByteSize() for t, _ in all_tensors(model)) + sum(
            external_data.raw_data_size(j.entry.decoded_length) for j in jobs)
        # Too large for one protobuf: main-graph initializers (slots 0 .. n-1, so
        # their ordinals are their indices) go to the data file as they decode.
        main = len(model.graph.initializer) if restored > INLINE_LIMIT_BYTES else 0
        later = [j for j in jobs if j.entry.ordinal < main]
        now = [j for j in jobs if j.entry.ordinal >= main]
        if not later:
            return _write_inline(packed, now, model, Path(dst), name)
        _decode_into_model(packed, now, name)
        decoded = packed.decoded(later)

        def read_next(job) -> Any:
            with _corrupt_as_pack_error(name):
                done, out = next(decoded)
            if done is not job:  # the writer asks in initializer order, which is the entries' order
                raise RuntimeError(f"tensor '{job.entry.name}' asked for out of order")
            return out

        deferred = {j.entry.ordinal: DeferredData(j.entry.decoded_length, lambda j=j: read_next(j)) for j in later}
        return external_data.save_with_external_data(model, Path(dst), deferred)


def _decode_into_model(packed: PackedSource, jobs: list[Job], name: str) -> None:
    """Decode ``jobs`` (checked) into their skeleton tensors' ``raw_data``, one at a time."""
    with _corrupt_as_pack_error(name):
        for job, out in packed.decoded(jobs):
            job.tensor.raw_data = _as_bytes(out)
            del out


def _as_bytes(out: np.ndarray) -> bytes:
    """The bytes of ``out`` (uint8, 1-D): the bytes object it views when it
    views all of one (what inflate returns), else a copy."""
    base = out.base
    if isinstance(base, bytes) and len(base) == out.size and out.flags.c_contiguous:
        return base
    return out.tobytes()


def _write_inline(packed: PackedSource, jobs: list[Job], model: onnx.ModelProto, dst: Path, name: str
                  ) -> onnx.ModelProto:
    """Write the restored model as one protobuf at ``dst``: tensors of
    ``STREAM_MIN_BYTES`` or more are decoded one at a time straight into the
    file (:mod:`onnxshrink.packing.splice`), the rest into ``model``. The
    returned model has the small tensors' data; the streamed ones are only in
    the file."""
    from onnxshrink.model import refuse_external_references, save_model

    large = [j for j in jobs if j.entry.decoded_length >= STREAM_MIN_BYTES]
    _decode_into_model(packed, [j for j in jobs if j.entry.decoded_length < STREAM_MIN_BYTES], name)
    refuse_external_references(model)
    segments = None
    if large:
        try:
            segments = splice.spliced_segments(model, [j.tensor for j in large],
                                               [j.entry.decoded_length for j in large])
        except splice.SpliceError:
            pass  # serialize the whole model instead, as before splicing
    if segments is None:
        _decode_into_model(packed, large, name)
        save_model(model, dst)
        return model
    order = splice.hole_order(segments)
    decoded = packed.decoded([large[i] for i in order])

    def data_for(index: int) -> np.ndarray:
        with _corrupt_as_pack_error(name):
            job, out = next(decoded)
        if job is not large[index]:  # holes come in file order, and were asked for in that order
            raise RuntimeError(f"tensor '{job.entry.name}' decoded out of order")
        return out

    with atomic_output(dst) as tmp, open(tmp, "wb") as f:
        splice.write_segments(f, segments, data_for)
    return model


def _starts_with_magic(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(container.MAGIC)) == container.MAGIC
    except OSError:
        return False


def _refuse_same_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    if Path(dst).exists() and Path(src).exists() and Path(dst).resolve() == Path(src).resolve():
        raise UsageError(f"{dst}: the output would overwrite the input; choose another -o")
