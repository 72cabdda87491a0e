"""Counting quantized and float layers in a written model, subgraphs included.

Reports say what the model holds, not what a pass meant to do: shrink once
reported "int8 ... 0 nodes left in float" for silero-vad, whose weights all
sit inside If branches that static int8 does not enter, and the output held no
quantized node. A layer is a node reading a weight (Conv, ConvTranspose,
Gemm, MatMul, LSTM/GRU/RNN) or an embedding table (Gather). It counts as
quantized when that input comes out of a DequantizeLinear of an integer
constant, when it reads integer codes itself (a Gather on an int8 table), or
when it is an integer kernel (MatMulInteger, ConvInteger, QLinear*,
MatMulNBits, GatherBlockQuantized); as float when it reads a float constant.
"""

from __future__ import annotations

import dataclasses

import onnx

from onnxshrink.model import iter_graphs, iter_weights
from onnxshrink.roles import embedding_uses, weight_uses

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
INTEGER_KERNELS = ("MatMulInteger", "ConvInteger", "MatMulNBits", "GatherBlockQuantized", "DynamicQuantizeMatMul",
                   "MatMulIntegerToFloat", "QGemm")
LAYER_INPUTS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, "LSTM": 1, "GRU": 1, "RNN": 1, "Gather": 0}


@dataclasses.dataclass(frozen=True)
class Census:
    """Layers of a model by how their weights are stored."""

    quantized: int
    float_layers: int
    quantized_in_subgraphs: int
    float_in_subgraphs: int

    def text(self) -> str:
        where = f" ({self.float_in_subgraphs} of them inside If/Loop/Scan bodies)" if self.float_in_subgraphs else ""
        return f"{self.quantized} layers quantized, {self.float_layers} left float{where}"


def count_layers(model: onnx.ModelProto) -> Census:
    """How many layers of ``model`` read quantized and float weights (see the module docstring)."""
    inside = {_key(n) for g, depth in iter_graphs(model.graph) if depth for n in g.node if _key(n)}
    integer_constants = {ref.name for ref in iter_weights(model) if ref.tensor.data_type not in FLOAT_TYPES}
    dequantized: set[str] = set()
    for graph, _ in iter_graphs(model.graph):
        for node in graph.node:
            if node.op_type == "DequantizeLinear" and node.input and node.input[0] in integer_constants:
                dequantized.add(node.output[0])
    quantized = quantized_inside = 0
    for graph, _ in iter_graphs(model.graph):
        for node in graph.node:
            index = LAYER_INPUTS.get(node.op_type)
            reads = index is not None and len(node.input) > index and node.domain in ("", "ai.onnx") and \
                (node.input[index] in dequantized or node.input[index] in integer_constants)
            if reads or node.op_type in INTEGER_KERNELS or (node.op_type.startswith("QLinear")
                                                            and node.op_type[7:] in LAYER_INPUTS):
                quantized += 1
                quantized_inside += _key(node) in inside
    floats = {_key(u.node) for u in [*weight_uses(model, include_recurrent=True), *embedding_uses(model)]
              if _key(u.node) and u.weight.tensor.data_type in FLOAT_TYPES}
    return Census(quantized, len(floats), quantized_inside, len(floats & inside))


def _key(node: onnx.NodeProto) -> str:
    """A node's first named output: an LSTM may leave Y unnamed and write only Y_h."""
    return next((o for o in node.output if o), "")
