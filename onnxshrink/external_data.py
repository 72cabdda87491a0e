"""The one place that resolves, reads and writes ONNX external tensor data.

Rules on read (each refusal is an :class:`UnsafeModelError`, naming the
tensor and the location):

- only the keys ``location``, ``offset``, ``length`` and ``checksum``;
- ``location`` is a relative path that, after resolving ``..`` and symlinks,
  stays inside the model's folder, and names a regular file;
- ``offset`` and ``length`` are non-negative decimal integers, lie within the
  file's real size, and ``length`` matches what the tensor's shape needs;
- nothing is allocated from a declared size before these checks pass.

On write, external data goes to a file named after the output, in the
output's folder; no location from the input model is ever used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

import onnx

if TYPE_CHECKING:
    import numpy as np

from onnxshrink.errors import ModelLoadError, UnsafeModelError
from onnxshrink.fileio import atomic_output
from onnxshrink.graphs import all_tensors

ALLOWED_KEYS = frozenset({"location", "offset", "length", "checksum"})
# Tensors smaller than this stay inside the .onnx file when we write external data.
EXTERNAL_MIN_BYTES = 1024
ALIGNMENT = 64


@dataclasses.dataclass
class ExternalReference:
    """A checked reference: ``length`` bytes at ``offset`` of ``file``."""

    tensor: onnx.TensorProto
    file: Path
    offset: int
    length: int
    checksum: str | None


def _bytes_needed(tensor: onnx.TensorProto) -> int | None:
    """Bytes the tensor's shape and dtype need, or None for variable-size dtypes."""
    if any(d < 0 for d in tensor.dims):
        return -1
    count = 1
    for d in tensor.dims:
        count *= int(d)
    dtype = tensor.data_type
    if dtype in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4) or dtype == getattr(onnx.TensorProto, "FLOAT4E2M1", -1):
        return (count + 1) // 2
    if dtype in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    try:
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(dtype)
    except Exception:
        return None
    return count * np_dtype.itemsize


def _parse_size(value: str, key: str, tensor: str, location: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 19:
        raise UnsafeModelError(
            f"tensor '{tensor}': external-data {key} '{value[:40]}' for '{location[:80]}' is not a non-negative integer"
        )
    return int(value)


def _inside(folder: Path, location: str, tensor: str) -> Path:
    if not location or "\x00" in location:
        raise UnsafeModelError(f"tensor '{tensor}': external-data location is empty or contains NUL")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        raise UnsafeModelError(
            f"tensor '{tensor}': external-data location '{location[:120]}' is an absolute path; "
            "only paths inside the model's folder are allowed"
        )
    root = folder.resolve()
    target = (root / location).resolve()
    if target != root and root not in target.parents:
        raise UnsafeModelError(
            f"tensor '{tensor}': external-data location '{location[:120]}' resolves outside the model's folder "
            f"(to {target}); refused"
        )
    return target


def resolve_references(model: onnx.ModelProto, folder: Path, *, model_name: str) -> list[ExternalReference]:
    """Check every external-data reference of ``model`` against ``folder``.

    Returns the checked references; reads no tensor data. Raises
    UnsafeModelError for any reference that breaks the rules above and
    ModelLoadError for a missing data file.
    """
    refs: list[ExternalReference] = []
    sizes: dict[Path, int] = {}
    for tensor, _where in all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {}
        for entry in tensor.external_data:
            if entry.key not in ALLOWED_KEYS:
                raise UnsafeModelError(
                    f"tensor '{tensor.name}': unknown external-data key '{entry.key[:40]}' "
                    f"(allowed: {', '.join(sorted(ALLOWED_KEYS))}); refused"
                )
            if entry.key in entries:
                raise UnsafeModelError(f"tensor '{tensor.name}': external-data key '{entry.key}' given twice")
            entries[entry.key] = entry.value
        location = entries.get("location", "")
        target = _inside(folder, location, tensor.name)
        if not target.exists():
            raise ModelLoadError(
                f"tensor '{tensor.name}': external-data file '{location}' not found next to {model_name}"
            )
        if not target.is_file():
            raise UnsafeModelError(f"tensor '{tensor.name}': external-data location '{location}' is not a regular file")
        if target not in sizes:
            sizes[target] = target.stat().st_size
        file_size = sizes[target]
        offset = _parse_size(entries.get("offset", "0"), "offset", tensor.name, location)
        needed = _bytes_needed(tensor)
        if needed is None:
            raise UnsafeModelError(
                f"tensor '{tensor.name}': external data for dtype "
                f"{onnx.TensorProto.DataType.Name(tensor.data_type)} is not supported"
            )
        if needed < 0:
            raise UnsafeModelError(f"tensor '{tensor.name}': negative dimension in an external tensor")
        if "length" in entries:
            length = _parse_size(entries["length"], "length", tensor.name, location)
        else:
            length = max(file_size - offset, 0)
        if offset > file_size or length > file_size - offset:
            raise UnsafeModelError(
                f"tensor '{tensor.name}': external data '{location}' declares offset {offset} + length {length} "
                f"beyond the file's {file_size} bytes; refused"
            )
        if length != needed:
            raise UnsafeModelError(
                f"tensor '{tensor.name}': external data '{location}' declares {length} bytes but its shape "
                f"and dtype need {needed}"
            )
        refs.append(ExternalReference(tensor, target, offset, length, entries.get("checksum")))
    return refs


def refuse_references(model: onnx.ModelProto) -> None:
    """Raise UnsafeModelError if a tensor of ``model`` still refers to external
    data: writing it back could target a path chosen by whoever made the input."""
    for tensor, where in [*all_tensors(model), *_function_tensors(model)]:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise UnsafeModelError(
                f"tensor '{tensor.name}' in {where} still refers to external data; load the model with "
                "onnxshrink.load_model so its data is read (and checked) before saving"
            )


def _function_tensors(model: onnx.ModelProto) -> Iterable[tuple[onnx.TensorProto, str]]:
    """The tensors of model functions' nodes and their subgraphs (``all_tensors`` covers the graphs)."""
    for function in model.functions:
        yield from ((t, f"function '{function.name}'") for t in _node_tensors(function.node))


def _node_tensors(nodes) -> Iterable[onnx.TensorProto]:
    for node in nodes:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from g.initializer
                yield from _node_tensors(g.node)


def read_reference(ref: ExternalReference) -> bytes:
    """The ``length`` bytes a checked reference points at, after checking
    that they are all there and match its checksum (if it declares one)."""
    with open(ref.file, "rb") as f:
        f.seek(ref.offset)
        data = f.read(ref.length)
    if len(data) != ref.length:
        raise ModelLoadError(f"tensor '{ref.tensor.name}': external data file {ref.file.name} is shorter than declared")
    if ref.checksum is not None and hashlib.sha1(data).hexdigest() != ref.checksum.lower():
        raise ModelLoadError(f"tensor '{ref.tensor.name}': external data checksum mismatch in {ref.file.name}")
    return data


def detach(tensor: onnx.TensorProto) -> None:
    """Make ``tensor`` no longer refer to an external file (its data is read
    elsewhere); everything else about it stays."""
    tensor.ClearField("external_data")
    tensor.ClearField("data_location")


def load_into(references: Iterable[ExternalReference]) -> None:
    """Read each checked reference into its tensor's ``raw_data``; the tensors
    no longer refer to any file afterwards."""
    for ref in references:
        data = read_reference(ref)
        detach(ref.tensor)
        ref.tensor.raw_data = data
        del data


@dataclasses.dataclass(frozen=True)
class DeferredData:
    """Data of a tensor that is not in the proto yet: ``length`` bytes that
    ``read()`` produces (reads or decodes them) when they are written."""

    length: int
    read: Callable[[], "bytes | bytearray | memoryview | np.ndarray"]


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def raw_data_size(length: int) -> int:
    """Bytes a ``raw_data`` field of ``length`` bytes adds to a TensorProto
    (tag, length prefix, data)."""
    return 1 + _varint_size(length) + length


def save_with_external_data(model: onnx.ModelProto, path: Path,
                            deferred: Mapping[int, DeferredData] | None = None) -> onnx.ModelProto:
    """Write ``model`` to ``path`` with its larger main-graph initializers in
    ``<path name>.data``; ``model`` is not changed. Returns the model as
    written (those initializers refer to the data file).

    ``deferred``: main-graph initializers (by index) whose data is not in
    ``model``; each is written as if its ``raw_data`` held the bytes its
    :class:`DeferredData` produces, which are asked for only when that
    tensor is written and dropped right after.

    Memory stays near one copy of the weights (or one tensor, for deferred
    data): the .onnx written is a skeleton built field by field (big tensors
    replaced by references), and each tensor's bytes are written straight
    from the model, one at a time. (Clearing a field would not help:
    protobuf keeps the memory in its arena.)
    """
    refuse_references(model)
    deferred = deferred or {}
    data_path = path.with_name(path.name + ".data")
    skeleton = onnx.ModelProto()
    _copy_fields_except(model, skeleton, "graph")
    _copy_fields_except(model.graph, skeleton.graph, "initializer")
    # Model renamed last: a reader never sees a model whose data is missing.
    with atomic_output(path) as tmp_model, atomic_output(data_path) as tmp_data:
        with open(tmp_data, "wb") as f:
            for i, tensor in enumerate(model.graph.initializer):
                stub = skeleton.graph.initializer.add()
                later = deferred.get(i)
                size = tensor.ByteSize() + (raw_data_size(later.length) if later else 0)
                data = _deferred_bytes(tensor, later) if later else None
                if size < EXTERNAL_MIN_BYTES or tensor.data_type == onnx.TensorProto.STRING:
                    stub.CopyFrom(tensor)
                    if data is not None:
                        stub.raw_data = bytes(data)
                    continue
                f.write(b"\0" * ((-f.tell()) % ALIGNMENT))
                offset = f.tell()
                if data is None:
                    data = tensor.raw_data if tensor.HasField("raw_data") else onnx.numpy_helper.to_array(tensor).tobytes()
                f.write(data)
                length = len(data)
                del data
                _copy_fields_except(tensor, stub, *_DATA_FIELDS)
                stub.data_location = onnx.TensorProto.EXTERNAL
                for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(length))):
                    entry = stub.external_data.add()
                    entry.key, entry.value = key, value
        tmp_model.write_bytes(skeleton.SerializeToString())
    return skeleton


def _deferred_bytes(tensor: onnx.TensorProto, later: DeferredData):
    data = later.read()
    if len(data) != later.length:
        raise ValueError(f"tensor '{tensor.name}': {len(data)} bytes of deferred data, {later.length} announced")
    return data


_DATA_FIELDS = ("raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data",
                "external_data", "data_location")


def _copy_fields_except(src, dst, *skip: str) -> None:
    """Copy every set field of protobuf message ``src`` into ``dst`` but those named in ``skip``."""
    for field, value in src.ListFields():
        if field.name in skip:
            continue
        if field.is_repeated:
            target = getattr(dst, field.name)
            if field.type == field.TYPE_MESSAGE:
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)
