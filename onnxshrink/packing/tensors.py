"""Where a model's tensors live, and their bytes, as the container sees them.

:func:`tensor_slots` visits every TensorProto of a model in one fixed order
(the container refers to tensors by their position in it, so this order is
part of the format, docs/FORMAT.md): for the main graph, then each model
function, the graph's initializers in order, then each node's attributes in
order: the attribute's tensor ``t``, its ``tensors``, then the graphs in
``g`` and ``graphs`` recursively (same order inside them).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Mapping

import onnx
from onnx import TensorProto, numpy_helper

from onnxshrink.errors import PackError

INITIALIZER, ATTRIBUTE = 0, 1
KIND_NAMES = {INITIALIZER: "initializer", ATTRIBUTE: "attribute"}


@dataclasses.dataclass(frozen=True)
class DtypeLayout:
    """Bits per element, and the byte-plane width codecs split values into."""

    bits: int
    word: int


def _layouts() -> dict[int, DtypeLayout]:
    table = {
        "FLOAT": (32, 4), "UINT8": (8, 1), "INT8": (8, 1), "UINT16": (16, 2), "INT16": (16, 2),
        "INT32": (32, 4), "INT64": (64, 8), "BOOL": (8, 1), "FLOAT16": (16, 2), "DOUBLE": (64, 8),
        "UINT32": (32, 4), "UINT64": (64, 8), "COMPLEX64": (64, 4), "COMPLEX128": (128, 8),
        "BFLOAT16": (16, 2), "FLOAT8E4M3FN": (8, 1), "FLOAT8E4M3FNUZ": (8, 1), "FLOAT8E5M2": (8, 1),
        "FLOAT8E5M2FNUZ": (8, 1), "FLOAT8E8M0": (8, 1), "UINT4": (4, 1), "INT4": (4, 1),
        "FLOAT4E2M1": (4, 1), "UINT2": (2, 1), "INT2": (2, 1),
    }
    # Names missing from an older onnx simply are not packed (kept inline).
    return {
        getattr(TensorProto, k): DtypeLayout(*v) for k, v in table.items() if hasattr(TensorProto, k)
    }


DTYPE_LAYOUTS = _layouts()
_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


@dataclasses.dataclass
class TensorSlot:
    """One tensor of a model: ``tensor`` is the live proto, ``where`` says where it is."""

    ordinal: int
    tensor: TensorProto
    kind: int
    where: str


def tensor_slots(model: onnx.ModelProto) -> list[TensorSlot]:
    """Every tensor of ``model`` in the container's fixed order."""
    slots: list[TensorSlot] = []

    def add(t: TensorProto, kind: int, where: str) -> None:
        slots.append(TensorSlot(len(slots), t, kind, where))

    def walk_nodes(nodes, where: str) -> None:
        for i, node in enumerate(nodes):
            for a in node.attribute:
                if not (a.HasField("t") or a.tensors or a.HasField("g") or a.graphs):
                    continue  # most attributes hold no tensor: skip naming the node
                at = f"{where}/node '{node.name or f'{node.op_type}_{i}'}'"
                if a.HasField("t"):
                    add(a.t, ATTRIBUTE, f"{at} attribute '{a.name}'")
                for t in a.tensors:
                    add(t, ATTRIBUTE, f"{at} attribute '{a.name}'")
                if a.HasField("g"):
                    walk_graph(a.g, f"{at}/{a.name}")
                for j, g in enumerate(a.graphs):
                    walk_graph(g, f"{at}/{a.name}[{j}]")

    def walk_graph(g: onnx.GraphProto, where: str) -> None:
        for t in g.initializer:
            add(t, INITIALIZER, f"{where} initializer")
        walk_nodes(g.node, where)

    walk_graph(model.graph, "graph")
    for f in model.functions:
        walk_nodes(f.node, f"function '{f.name}'")
    return slots


def expected_nbytes(data_type: int, dims) -> int | None:
    """Bytes of ``raw_data`` for this type and shape, None for types not packed."""
    layout = DTYPE_LAYOUTS.get(data_type)
    if layout is None:
        return None
    n = 1
    for d in dims:
        if d < 0:
            return None
        n *= d
    return (n * layout.bits + 7) // 8


def tensor_bytes(tensor: TensorProto, external: bytes | None = None) -> bytes | None:
    """The tensor's little-endian ``raw_data`` bytes, or None for a tensor that
    stays inline in the graph (strings, unknown types, segments, odd sizes).

    Tensors with typed fields (float_data, int32_data, ...) are converted with
    numpy_helper, so ``to_array`` of the restored raw_data is identical.
    ``external``: the bytes of a tensor whose data is not in the proto (read
    from its external file), judged as if they were its ``raw_data``.
    Raises PackError for a tensor that still refers to external data whose
    bytes are not given.
    """
    if external is None and tensor.data_location == TensorProto.EXTERNAL:
        raise PackError(
            f"tensor '{tensor.name}' still refers to external data; load the model with "
            "onnxshrink.load_model so its data is read before packing"
        )
    expected = expected_nbytes(tensor.data_type, tensor.dims)
    if expected is None or tensor.HasField("segment"):
        return None
    if external is not None:
        data = external
    elif tensor.HasField("raw_data"):
        data = tensor.raw_data
    else:
        try:
            data = numpy_helper.from_array(numpy_helper.to_array(tensor)).raw_data
        except Exception:  # a type numpy_helper cannot convert: leave the tensor as it is
            return None
    return data if len(data) == expected else None


def strip_data(tensor: TensorProto) -> None:
    """Remove the tensor's data, keeping its name, type, shape and metadata."""
    tensor.ClearField("raw_data")
    for f in _TYPED_FIELDS:
        tensor.ClearField(f)


def has_data(tensor: TensorProto) -> bool:
    """Whether any data field of ``tensor`` is set."""
    # The fields of _TYPED_FIELDS spelled out: twice as fast as getattr in a loop,
    # which counts when a load checks every packed tensor's skeleton.
    t = tensor
    return t.HasField("raw_data") or (len(t.float_data) or len(t.int32_data) or len(t.string_data)
                                      or len(t.int64_data) or len(t.double_data) or len(t.uint64_data)) != 0


def loaded_byte_size(model: onnx.ModelProto, lengths: Mapping[int, int]) -> int:
    """What ``model.ByteSize()`` would be if the tensor of each slot ordinal in
    ``lengths`` held that many bytes of ``raw_data`` in place of its
    external-data reference (as ``load_model`` leaves a model), computed
    without the bytes: the tensors' sizes, then each enclosing message's.
    """
    if not lengths:
        return model.ByteSize()
    ordinals = itertools.count()

    def framed(old: int, new: int) -> int:
        """Growth of a message field whose value grows from ``old`` to ``new`` bytes."""
        return new - old + _varint_size(new) - _varint_size(old)

    def tensor_delta(t: TensorProto) -> int:
        length = lengths.get(next(ordinals))
        if length is None:
            return 0
        loaded = TensorProto()
        loaded.CopyFrom(t)
        loaded.ClearField("external_data")
        loaded.ClearField("data_location")
        old = t.ByteSize()
        return framed(old, loaded.ByteSize() + 1 + _varint_size(length) + length)

    def graph_delta(g: onnx.GraphProto) -> int:
        old = g.ByteSize()
        inner = sum(tensor_delta(t) for t in g.initializer) + nodes_delta(g.node)
        return framed(old, old + inner)

    def nodes_delta(nodes) -> int:
        total = 0
        for node in nodes:
            old = node.ByteSize()
            total += framed(old, old + sum(attribute_delta(a) for a in node.attribute))
        return total

    def attribute_delta(a: onnx.AttributeProto) -> int:
        old = a.ByteSize()
        inner = tensor_delta(a.t) if a.HasField("t") else 0
        inner += sum(tensor_delta(t) for t in a.tensors)
        inner += graph_delta(a.g) if a.HasField("g") else 0
        inner += sum(graph_delta(g) for g in a.graphs)
        return framed(old, old + inner)

    total = model.ByteSize() + graph_delta(model.graph)
    for f in model.functions:
        old = f.ByteSize()
        total += framed(old, old + nodes_delta(f.node))
    return total


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)
