"""Loading and saving ONNX models safely, and reaching every weight tensor.

``load_model`` refuses anything that is not a well-formed ONNX model and
resolves external data through :mod:`onnxshrink.external_data`, which refuses
every reference that could read outside the model's folder. ``save_model``
writes atomically and puts external data under names of our own choosing next
to the output, never at a location taken from the input model.
"""

from __future__ import annotations

import dataclasses
import os
import weakref
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from onnxshrink import external_data
from onnxshrink.errors import ModelLoadError, UnsafeModelError
from onnxshrink.fileio import atomic_output
from onnxshrink.graphs import all_tensors, iter_graphs  # iter_graphs also for the modules that import it from here

# Protobuf cannot serialise a message of 2 GiB or more; beyond this many bytes of
# tensor data a model is saved with its tensors in an external file.
INLINE_LIMIT_BYTES = 1_800_000_000


def load_model(path: str | os.PathLike, *, load_external_data: bool = True,
               map_external_data: bool = False) -> onnx.ModelProto:
    """Read an ONNX model from ``path``.

    Raises :class:`ModelLoadError` for a missing, empty, truncated or corrupt
    file and :class:`UnsafeModelError` for external data that escapes the
    model's folder or declares sizes beyond the real file. With
    ``load_external_data`` the tensors stored beside the model are read into
    the returned proto, so it no longer refers to any file. With
    ``map_external_data`` the large ones (numeric, 1 MiB or more, no checksum)
    are left in their files as *mapped* tensors instead: references to checked
    byte ranges that :func:`tensor_array` reads as memory-mapped arrays,
    onnxruntime sessions use in place and :func:`save_model` copies, so a
    model of several GB is held in memory about once however many passes and
    sessions read it.
    """
    path = Path(path)
    blob = _read_model_bytes(path)
    model = parse_model(blob, str(path))
    del blob
    references = external_data.resolve_references(model, path.parent, model_name=str(path))
    _check_model(model, path, has_external=bool(references))
    # External tensors had their length checked against shape and dtype when resolved.
    check_tensors(model, str(path))
    if map_external_data:
        external_data.load_into(_map_references(references))
    elif load_external_data:
        external_data.load_into(references)
    return model


def parse_model(blob: bytes, name: str = "model") -> onnx.ModelProto:
    """Parse serialized bytes into a ModelProto, refusing what is not ONNX."""
    if not blob:
        raise ModelLoadError(f"{name}: the file is empty, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(blob)
    except Exception:  # protobuf raises DecodeError or RuntimeError by backend
        raise ModelLoadError(
            f"{name}: not an ONNX model (the protobuf does not parse; the file is corrupt, truncated or another format)"
        ) from None
    if not model.HasField("graph") or model.ir_version <= 0:
        raise ModelLoadError(f"{name}: not an ONNX model (no graph or IR version in the file)")
    return model


def _read_model_bytes(path: Path) -> bytes:
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a regular file")
    try:
        return path.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read ({e.strerror})") from None


def _shapeless_values(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs/outputs/value_infos typed as tensors but with no shape at all
    (unknown rank): valid for onnxruntime, refused by onnx's checker."""
    found = []
    for graph, _ in iter_graphs(model.graph):
        for vi in (*graph.input, *graph.output, *graph.value_info):
            if vi.type.HasField("tensor_type") and not vi.type.tensor_type.HasField("shape"):
                found.append(vi)
    return found


def _check_model(model: onnx.ModelProto, path: Path, *, has_external: bool) -> None:
    """Run onnx's checker; a model it rejects is corrupt or truncated."""
    shapeless = _shapeless_values(model)
    # An empty shape would mean a scalar, so it is set only while the checker runs.
    for vi in shapeless:
        vi.type.tensor_type.shape.SetInParent()
    try:
        if has_external:
            # The checker resolves external files relative to the model file;
            # our own resolver has already refused anything unsafe.
            onnx.checker.check_model(str(path))
        else:
            onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid"
        if has_external and shapeless and "'shape'" in first and "required" in first:
            # The file-based check reads the file, not our fix-up; external data was
            # already checked by our own resolver, and tensors by check_tensors.
            return
        raise ModelLoadError(f"{path}: not a valid ONNX model ({first})") from None
    except Exception as e:  # the checker can also fail on inputs it cannot parse
        raise ModelLoadError(f"{path}: not a valid ONNX model ({type(e).__name__})") from None
    finally:
        for vi in shapeless:
            vi.type.tensor_type.ClearField("shape")


# Typed-field storage of the dtypes whose field holds more than one element per entry.
_ELEMENTS_PER_ENTRY = {onnx.TensorProto.COMPLEX64: 0.5, onnx.TensorProto.COMPLEX128: 0.5}
_SUB_BYTE_BITS = {name: bits for name, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2))
                  if hasattr(onnx.TensorProto, name)}


def check_tensors(model: onnx.ModelProto, name: str = "model") -> None:
    """Refuse tensors whose data cannot be what their dtype and shape say, and
    graph inputs or outputs of an unknown element type.

    onnx's checker lets through a known ``data_type`` with negative or absurd
    dims, ``raw_data`` shorter or longer than the shape needs, and unknown
    dtypes; numpy and onnxruntime then fail deep inside a pass. Each such
    tensor is a ModelLoadError naming it. Nothing is allocated from the
    declared shape. Tensors still stored externally are skipped (their length
    is checked when resolved).
    """
    known = set(onnx.TensorProto.DataType.values())
    for graph, _ in iter_graphs(model.graph):
        for vi in (*graph.input, *graph.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type not in known:
                raise ModelLoadError(f"{name}: graph '{graph.name}' value '{vi.name[:80]}' has unknown element type "
                                     f"{vi.type.tensor_type.elem_type}; the file is corrupt")
    for tensor, where in all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue
        problem = _tensor_size_problem(tensor)
        if problem:
            raise ModelLoadError(f"{name}: tensor '{tensor.name[:80]}' in {where}: {problem}; the file is corrupt")


def _tensor_size_problem(tensor: onnx.TensorProto) -> str | None:
    dtype = tensor.data_type
    if dtype not in onnx.TensorProto.DataType.values() or dtype == onnx.TensorProto.UNDEFINED:
        return f"unknown data_type {dtype}"
    if any(d < 0 for d in tensor.dims):
        return f"negative dimension in shape {list(tensor.dims)}"
    count = 1
    for d in tensor.dims:
        count *= int(d)
    type_name = onnx.TensorProto.DataType.Name(dtype)
    bits = _SUB_BYTE_BITS.get(type_name)
    if dtype == onnx.TensorProto.STRING:
        have, want, unit = len(tensor.string_data), count, "strings"
    elif tensor.HasField("raw_data"):
        if bits is not None:
            want = (count * bits + 7) // 8
        else:
            try:
                want = count * onnx.helper.tensor_dtype_to_np_dtype(dtype).itemsize
            except Exception:
                return None  # a dtype numpy cannot hold; onnxruntime judges it
        have, unit = len(tensor.raw_data), "bytes of raw_data"
    else:
        field = onnx.helper.tensor_dtype_to_field(dtype)
        have = len(getattr(tensor, field))
        if bits is not None:
            want = (count * bits + 7) // 8  # one packed byte per int32_data entry
        else:
            want = int(count / _ELEMENTS_PER_ENTRY.get(dtype, 1))
        unit = f"values in {field}"
    if have != want:
        return f"{type_name.lower()} shape {list(tensor.dims)[:8]} needs {want} {unit}, the file holds {have}"
    return None


def data_bytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data the model declares (from dtypes and shapes, so cheap,
    and defined above 2 GB, where protobuf's ``ByteSize()`` raises)."""
    from onnxshrink.external_data import _bytes_needed

    return sum(max(_bytes_needed(t) or 0, 0) for t, _ in all_tensors(model))


def serialized_size(model: onnx.ModelProto) -> int:
    """``model.ByteSize()`` plus the bytes of its mapped tensors, or over
    protobuf's 2 GB limit (where that raises EncodeError) the bytes of its
    tensor data, which is nearly all of it."""
    try:
        size = model.ByteSize()
    except Exception:
        return data_bytes(model)
    return size + sum(int(_mapped_info(t)["length"]) for t, _ in all_tensors(model) if is_mapped(t))


# Mapped tensors (see load_model): large numeric external tensors left in their
# checked files. The reference keeps the checked absolute path, so it survives
# CopyFrom; the marker key tells it from a reference taken from a file, which
# the resolver never lets through with such a key.
MAPPED_MIN_BYTES = 1 << 20
_MAPPED_KEY = "onnxshrink_mapped"
_MAPPABLE_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BOOL,
                   onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
                   onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64}
# One mapping per file while any array reads it: pages mapped twice would count twice in RSS.
_mappings: "weakref.WeakValueDictionary[str, np.memmap]" = weakref.WeakValueDictionary()


def _map_references(references: list[external_data.ExternalReference]) -> list[external_data.ExternalReference]:
    """Make the large numeric tensors among checked ``references`` mapped; return
    the others (small, checksummed, other dtypes), which are to be read now."""
    eager = []
    for ref in references:
        if ref.checksum is not None or ref.length < MAPPED_MIN_BYTES or ref.tensor.data_type not in _MAPPABLE_TYPES:
            eager.append(ref)
            continue
        ref.tensor.ClearField("external_data")
        for key, value in (("location", str(ref.file)), ("offset", str(ref.offset)), ("length", str(ref.length)),
                           (_MAPPED_KEY, "1")):
            entry = ref.tensor.external_data.add()
            entry.key, entry.value = key, value
    return eager


def is_mapped(tensor: onnx.TensorProto) -> bool:
    """True for a tensor whose data ``load_model(map_external_data=True)`` left in its file."""
    return tensor.data_location == onnx.TensorProto.EXTERNAL and any(e.key == _MAPPED_KEY for e in tensor.external_data)


def has_mapped(model: onnx.ModelProto) -> bool:
    return any(is_mapped(t) for t, _ in all_tensors(model))


def _mapped_info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def mapped_file(tensor: onnx.TensorProto) -> Path:
    """The checked file a mapped tensor's data lives in."""
    return Path(_mapped_info(tensor)["location"])


def tensor_array(tensor: onnx.TensorProto) -> np.ndarray:
    """The tensor's values: ``numpy_helper.to_array`` for data in the proto; for a
    mapped tensor a copy-on-write view of its file (no copy until written; the
    file is never written)."""
    if not is_mapped(tensor):
        return numpy_helper.to_array(tensor)
    info = _mapped_info(tensor)
    mapping = _mappings.get(info["location"])
    if mapping is None:
        mapping = np.memmap(info["location"], dtype=np.uint8, mode="c")
        _mappings[info["location"]] = mapping
    offset, length = int(info["offset"]), int(info["length"])
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    return np.asarray(mapping[offset:offset + length]).view(dtype).reshape(tuple(tensor.dims))


def materialized(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every mapped tensor's data read into ``raw_data``
    (``model`` itself when it has none)."""
    if not has_mapped(model):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor, _ in all_tensors(copy):
        if is_mapped(tensor):
            data = tensor_array(tensor).tobytes()
            tensor.ClearField("external_data")
            tensor.ClearField("data_location")
            tensor.raw_data = data
            del data
    return copy


def refuse_external_references(model: onnx.ModelProto) -> None:
    """Raise UnsafeModelError if a tensor of ``model`` still refers to external
    data: writing it back could target a path chosen by whoever made the input."""
    for tensor, where in all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise UnsafeModelError(
                f"tensor '{tensor.name}' in {where} still refers to external data; load the model with "
                "onnxshrink.load_model so its data is read (and checked) before saving"
            )


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, external_data_file: bool | None = None) -> None:
    """Write ``model`` to ``path`` atomically; ``model`` itself is left as it was.

    Tensor data goes to ``<name>.data`` beside ``path`` when the model is too
    large for one protobuf (or ``external_data_file=True``). Mapped tensors are
    read from their files (so they are held in memory while writing). Locations are ours:
    a tensor that still refers to an external file is refused, since writing
    it back could target a path chosen by whoever made the input.
    """
    path = Path(path)
    model = materialized(model)
    refuse_external_references(model)
    total = sum(t.ByteSize() for t, _ in all_tensors(model))
    if external_data_file is None:
        external_data_file = total > INLINE_LIMIT_BYTES
    if not external_data_file:
        with atomic_output(path) as tmp:
            tmp.write_bytes(model.SerializeToString())
        return
    external_data.save_with_external_data(model, path)


@dataclasses.dataclass
class WeightRef:
    """One constant tensor of a model, wherever it is stored.

    ``tensor`` is the live TensorProto inside the model: changing it changes
    the model. ``kind`` is "initializer" (a graph or subgraph initializer) or
    "constant" (the ``value`` of a Constant node, whose output is ``name``).
    """

    name: str
    tensor: onnx.TensorProto
    kind: str
    graph: onnx.GraphProto
    node: onnx.NodeProto | None = None
    depth: int = 0

    def array(self) -> np.ndarray:
        return tensor_array(self.tensor)

    def set_array(self, array: np.ndarray) -> None:
        """Replace the tensor's data (and dtype/shape) with ``array``, keeping its name."""
        self.tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), self.tensor.name))

    @property
    def size(self) -> int:
        return int(np.prod(self.tensor.dims, dtype=np.int64)) if self.tensor.dims else 1


def iter_weights(model: onnx.ModelProto) -> Iterator[WeightRef]:
    """Every constant tensor: initializers and Constant ``value`` tensors, in the
    main graph and in subgraphs, in a stable order. Each tensor appears once,
    however many nodes share it."""
    for graph, depth in iter_graphs(model.graph):
        for tensor in graph.initializer:
            yield WeightRef(tensor.name, tensor, "initializer", graph, None, depth)
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                        yield WeightRef(node.output[0], attr.t, "constant", graph, node, depth)


def consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    """For each value name, the (node, input index) pairs of ``graph`` that read it."""
    users: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name:
                users.setdefault(name, []).append((node, i))
    return users


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """For each value name, the node of ``graph`` that writes it."""
    return {out: node for node in graph.node for out in node.output if out}


def opset_version(model: onnx.ModelProto, domain: str = "") -> int:
    """The model's opset for ``domain`` ("" is the default ONNX domain); 0 if absent."""
    for imp in model.opset_import:
        if imp.domain in (domain, "ai.onnx" if domain == "" else domain):
            return int(imp.version)
    return 0
