"""Putting integer weights behind DequantizeLinear in the graph, and the opset
that takes.

The float weight ``W`` becomes an integer tensor ``W_quantized`` (in the same
place: a graph initializer, or the value of the same Constant node), its
scales and zero point become initializers of the same graph, and a new
DequantizeLinear node writes the float result under the old name ``W``. So
every consumer, in the graph or in subgraphs below it, reads the
dequantized weight without being touched, and a shared weight is quantized
once. New node and value names are unique across the whole model (nameless
nodes included).
"""

from __future__ import annotations

import onnx
import onnx.version_converter
from onnx import helper, numpy_helper

import numpy as np

from onnxshrink.errors import UnsupportedModelError
from onnxshrink.lowbit.grid import Grid, as_code_array, storage_bits
from onnxshrink.model import WeightRef, iter_graphs, opset_version

# DequantizeLinear with an ``axis`` (per-channel scales) needs opset 13; int4
# codes and ``block_size`` need opset 21, which needs IR version 10.
PER_CHANNEL_OPSET = 13
LOW_BIT_OPSET = 21
LOW_BIT_IR_VERSION = 10


def required_opset(bits: int, block: int | None) -> int:
    return LOW_BIT_OPSET if storage_bits(bits) < 8 or block is not None else PER_CHANNEL_OPSET


class UniqueNames:
    """Hands out node and value names not yet used anywhere in a model."""

    def __init__(self, model: onnx.ModelProto):
        self.nodes: set[str] = set()
        self.values: set[str] = set()
        for graph, _ in iter_graphs(model.graph):
            self.values.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))
            self.values.update(t.name for t in graph.initializer)
            self.values.update(s.values.name for s in graph.sparse_initializer)
            for node in graph.node:
                self.nodes.add(node.name)
                self.values.update(node.input)
                self.values.update(node.output)

    @staticmethod
    def _fresh(base: str, taken: set[str]) -> str:
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        return name

    def node(self, base: str) -> str:
        return self._fresh(base, self.nodes)

    def value(self, base: str) -> str:
        return self._fresh(base, self.values)


def ensure_opset(model: onnx.ModelProto, need: int, name: str = "model") -> onnx.ModelProto:
    """``model`` itself when its default-domain opset is at least ``need``,
    else a converted copy (onnx's version converter) with the model's
    metadata kept. Raises UnsupportedModelError naming why conversion failed."""
    have = opset_version(model)
    if have >= need:
        return model
    try:
        converted = onnx.version_converter.convert_version(model, need)
        onnx.checker.check_model(converted)
    except Exception as e:  # the converter raises bare RuntimeErrors and C++ errors
        why = " ".join(str(e).split())[:200] or type(e).__name__
        raise UnsupportedModelError(
            f"{name}: this quantization needs opset {need} (int4 or blocked scales need 21, per-channel int8 13) "
            f"and converting from opset {have} failed ({why}); try --bits 8 --granularity channel, or export the "
            f"model at opset {need}") from None
    # The converter rebuilds the model; what it does not carry over is put back.
    del converted.metadata_props[:]
    converted.metadata_props.extend(model.metadata_props)
    for field in ("doc_string", "producer_name", "producer_version", "domain", "model_version"):
        setattr(converted, field, getattr(model, field))
    return converted


def dequantize_in_graph(ref: WeightRef, codes: np.ndarray, scales: np.ndarray, grid: Grid,
                        names: UniqueNames) -> str:
    """Replace the float weight ``ref`` by integer ``codes`` (already on the
    grid) behind a DequantizeLinear writing ``ref.name``; returns the new
    node's name. ``ref``'s graph is changed in place."""
    graph = ref.graph
    code_name = names.value(f"{ref.name}_quantized")
    scale_name = names.value(f"{ref.name}_scale")
    zero_name = names.value(f"{ref.name}_zero_point")
    code_tensor = numpy_helper.from_array(as_code_array(codes, grid.bits), code_name)
    zero = as_code_array(np.zeros(scales.shape, np.int8), grid.bits)
    graph.initializer.extend([numpy_helper.from_array(scales.astype(np.float32), scale_name),
                              numpy_helper.from_array(zero, zero_name)])
    attrs = {"axis": grid.axis}
    if grid.block is not None:
        attrs["block_size"] = grid.block
    node_name = names.node(f"{ref.name}_DequantizeLinear")
    dq = helper.make_node("DequantizeLinear", [code_name, scale_name, zero_name], [ref.name], name=node_name, **attrs)
    if ref.kind == "initializer":
        ref.tensor.CopyFrom(code_tensor)
        graph.node.insert(0, dq)
        return node_name
    # A Constant node keeps holding the weight, now as codes, under a new output name.
    ref.tensor.CopyFrom(code_tensor)
    ref.node.output[0] = code_name
    at = next(i for i, n in enumerate(graph.node) if n.op_type == "Constant" and n.output and n.output[0] == code_name)
    graph.node.insert(at + 1, dq)
    return node_name


def set_ir_version_for(model: onnx.ModelProto) -> None:
    """Opset 21 (int4 tensors) needs IR version 10; older IR versions are raised."""
    if opset_version(model) >= LOW_BIT_OPSET and model.ir_version < LOW_BIT_IR_VERSION:
        model.ir_version = LOW_BIT_IR_VERSION
