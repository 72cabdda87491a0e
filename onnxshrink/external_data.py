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
from typing import Iterable

import onnx

from onnxshrink.errors import ModelLoadError, UnsafeModelError
from onnxshrink.fileio import atomic_output

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
    from onnxshrink.model import all_tensors  # late: model imports this module

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


def load_into(references: Iterable[ExternalReference]) -> None:
    """Read each checked reference into its tensor's ``raw_data``; the tensors
    no longer refer to any file afterwards."""
    for ref in references:
        with open(ref.file, "rb") as f:
            f.seek(ref.offset)
            data = f.read(ref.length)
        if len(data) != ref.length:
            raise ModelLoadError(f"tensor '{ref.tensor.name}': external data file {ref.file.name} is shorter than declared")
        if ref.checksum is not None and hashlib.sha1(data).hexdigest() != ref.checksum.lower():
            raise ModelLoadError(f"tensor '{ref.tensor.name}': external data checksum mismatch in {ref.file.name}")
        ref.tensor.ClearField("external_data")
        ref.tensor.ClearField("data_location")
        ref.tensor.raw_data = data
        del data


def save_with_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Write ``model`` to ``path`` with its larger main-graph initializers in
    ``<path name>.data``; ``model`` is not changed.

    Memory stays near one copy of the weights: the .onnx written is a skeleton
    built field by field (big tensors replaced by references), and each
    tensor's bytes are written straight from the model, one at a time.
    (Clearing a field would not help: protobuf keeps the memory in its arena.)
    """
    data_path = path.with_name(path.name + ".data")
    skeleton = onnx.ModelProto()
    _copy_fields_except(model, skeleton, "graph")
    _copy_fields_except(model.graph, skeleton.graph, "initializer")
    # Model renamed last: a reader never sees a model whose data is missing.
    with atomic_output(path) as tmp_model, atomic_output(data_path) as tmp_data:
        with open(tmp_data, "wb") as f:
            for tensor in model.graph.initializer:
                stub = skeleton.graph.initializer.add()
                if tensor.ByteSize() < EXTERNAL_MIN_BYTES or tensor.data_type == onnx.TensorProto.STRING:
                    stub.CopyFrom(tensor)
                    continue
                f.write(b"\0" * ((-f.tell()) % ALIGNMENT))
                offset = f.tell()
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
