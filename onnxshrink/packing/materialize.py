"""Quantized weights expanded to float at load time (``materialize="float"``,
and the float part of ``"auto"``: :mod:`onnxshrink.packing.forms`), and the
graph queries the load forms share (which constants are quantized weights,
who reads what).

A *quantized weight* is an integer tensor (an initializer, or the value of a
Constant node) read only by DequantizeLinear nodes of the same graph whose
scale, and zero point if any, are initializers of that graph. With
``materialize="float"`` each such DequantizeLinear node is replaced by a
float32 initializer under the node's output name, holding exactly what the
node computes, the way onnxruntime computes it: ``float32(q - zero_point) *
scale`` in float32 (one rounding), per tensor, per axis or per block. So
every consumer reads the same values under the same name, nothing is
renamed, no node is added (names stay unique), ``metadata_props`` are left
alone, and the integer weights, scales and zero points nothing reads any more
are removed with the nodes.

Left as they are: DequantizeLinear nodes of other inputs (activations),
outputs that are graph outputs, float16/bfloat16 outputs, float8 inputs,
weights that something else reads too, and shapes the operator would refuse.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

# materialize="auto" keeps a model as packed when its expanded float weights would
# exceed this: then the integer weights' memory saving matters more than speed.
AUTO_MAX_FLOAT_BYTES = 1 << 30
_INTEGER_TYPES = {TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16, TensorProto.INT32,
                  *(getattr(TensorProto, t) for t in ("INT4", "UINT4", "INT2", "UINT2") if hasattr(TensorProto, t))}
_DEFAULT_DOMAINS = ("", "ai.onnx")


def float_bytes(model: onnx.ModelProto, weight_only: bool = False) -> int:
    """float32 bytes the quantized weights :func:`materialize_float` would expand
    take (an upper bound: a few may turn out not expandable)."""
    reads = name_reads(model)
    return sum(4 * int(np.prod(q.dims, dtype=np.int64)) * len(nodes)
               for graph in graphs(model.graph) for q, nodes in quantized_weights(graph, reads, weight_only))


def materialize_float(model: onnx.ModelProto, weight_only: bool = False, max_float_bytes: int | None = None
                      ) -> list[str]:
    """Replace the DequantizeLinear nodes of quantized weights in ``model``
    (in place, every graph and subgraph) by float32 initializers; returns the
    names of the initializers made (the nodes' output names).

    With ``weight_only`` (``materialize="auto"``) a weight is expanded only
    where its consumers compute in float: a node that also reads a
    dequantized *activation* is a static QDQ pattern onnxruntime runs in
    integer kernels, so its weights stay integer + DequantizeLinear. When
    the float weights would take more than ``max_float_bytes``, nothing is
    expanded."""
    opset = next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), 0)
    made: list[str] = []
    candidates: set[str] = set()
    if max_float_bytes is not None and float_bytes(model, weight_only) > max_float_bytes:
        return made
    for graph in graphs(model.graph):
        made += _expand_graph(graph, opset, name_reads(model), candidates, weight_only)
    if made:
        remove_unread(model, candidates)
    return made


def graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("g"):
                yield from graphs(a.g)
            for g in a.graphs:
                yield from graphs(g)


def name_reads(model: onnx.ModelProto) -> Counter:
    """How often each name is read anywhere in the model: node inputs (all
    graphs and functions) and graph outputs."""
    reads: Counter = Counter()
    for g in graphs(model.graph):
        reads.update(n for node in g.node for n in node.input if n)
        reads.update(o.name for o in g.output)
    for f in model.functions:
        reads.update(n for node in f.node for n in node.input if n)
    return reads


def integer_kernel_inputs(graph: onnx.GraphProto, constant: set[str]) -> set[str]:
    """Names read by nodes that also read a DequantizeLinear of a non-constant
    (an activation): the weights of static QDQ patterns."""
    activation_dq = {node.output[0] for node in graph.node
                     if node.op_type == "DequantizeLinear" and node.domain in _DEFAULT_DOMAINS and node.input
                     and node.output and node.input[0] not in constant}
    return {name for node in graph.node if activation_dq.intersection(node.input) for name in node.input}


def constant_values(graph: onnx.GraphProto) -> dict[str, TensorProto]:
    return {node.output[0]: a.t for node in graph.node
            if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS and len(node.output) == 1
            for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR}


def quantized_weights(graph: onnx.GraphProto, reads: Counter, weight_only: bool
                       ) -> list[tuple[TensorProto, list[onnx.NodeProto]]]:
    """The integer constants of ``graph`` read only by its DequantizeLinear
    nodes (with ``weight_only``: none of which feeds an integer-kernel
    pattern), each with those nodes."""
    inits = {t.name: t for t in graph.initializer}
    consts = constant_values(graph)
    inputs = {i.name for i in graph.input}
    by_source: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.domain in _DEFAULT_DOMAINS and node.input:
            by_source.setdefault(node.input[0], []).append(node)
    in_integer_kernels = integer_kernel_inputs(graph, set(inits) | set(consts)) if weight_only else set()
    found = []
    for source, nodes in by_source.items():
        q = inits.get(source, consts.get(source))
        if q is None or source in inputs or q.data_type not in _INTEGER_TYPES or reads[source] != len(nodes):
            continue
        if not any(node.output[0] in in_integer_kernels for node in nodes):
            found.append((q, nodes))
    return found


def _expand_graph(graph: onnx.GraphProto, opset: int, reads: Counter, candidates: set[str],
                  weight_only: bool = False) -> list[str]:
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    # Keyed by output name (unique in a graph): ids of protobuf wrappers are not stable.
    expanded: dict[str, TensorProto] = {}
    for q, nodes in quantized_weights(graph, reads, weight_only):
        values = {}
        for node in nodes:
            v = _dequantized(node, q, inits, opset)
            if v is None or node.output[0] in outputs:
                break
            values[node.output[0]] = numpy_helper.from_array(v, node.output[0])
        else:
            expanded.update(values)
            candidates.update(n for node in nodes for n in node.input if n)
    if not expanded:
        return []

    def replaced(node: onnx.NodeProto) -> bool:
        return node.op_type == "DequantizeLinear" and node.domain in _DEFAULT_DOMAINS and bool(node.output) \
            and node.output[0] in expanded

    kept = [node for node in graph.node if not replaced(node)]
    made = [expanded[node.output[0]] for node in graph.node if replaced(node)]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(made)
    return [t.name for t in made]


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _dequantized(node: onnx.NodeProto, q_tensor: TensorProto, inits: dict[str, TensorProto], opset: int
                 ) -> np.ndarray | None:
    """What ``node`` computes from ``q_tensor``, or None when it cannot be
    computed here (non-constant or non-float32 scale, unsupported shapes)."""
    scale_t = inits.get(node.input[1]) if len(node.input) > 1 else None
    zp_name = node.input[2] if len(node.input) > 2 else ""
    zp_t = inits.get(zp_name) if zp_name else None
    if scale_t is None or scale_t.data_type != TensorProto.FLOAT or (zp_name and zp_t is None):
        return None
    if zp_t is not None and zp_t.data_type != q_tensor.data_type:
        return None
    if any(a.name not in ("axis", "block_size") for a in node.attribute):
        return None  # output_dtype and anything newer: leave it to the runtime
    wide = np.int64 if q_tensor.data_type == TensorProto.INT32 else np.int32  # exact differences, less memory
    q = numpy_helper.to_array(q_tensor).astype(wide)
    scale = numpy_helper.to_array(scale_t)
    zp = numpy_helper.to_array(zp_t).astype(wide) if zp_t is not None else np.zeros(scale.shape, wide)
    if zp.shape != scale.shape:
        return None
    block = _attribute(node, "block_size", 0) if opset >= 21 else 0
    axis = _attribute(node, "axis", 1) if opset >= 13 else 1
    if scale.ndim == 0 or (scale.ndim == 1 and scale.size == 1 and block == 0):
        scale, zp = scale.reshape(()), zp.reshape(())
    else:
        if not -q.ndim <= axis < q.ndim:
            return None
        axis %= q.ndim
        if block == 0:
            if scale.ndim != 1 or scale.size != q.shape[axis]:
                return None
            shape = [1] * q.ndim
            shape[axis] = scale.size
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        else:
            expected = list(q.shape)
            expected[axis] = -(-q.shape[axis] // block)
            if block < 0 or list(scale.shape) != expected:
                return None
            scale = np.repeat(scale, block, axis=axis).take(range(q.shape[axis]), axis=axis)
            zp = np.repeat(zp, block, axis=axis).take(range(q.shape[axis]), axis=axis)
    diff = q - zp
    if q_tensor.data_type == TensorProto.INT32 and (diff.min(initial=0) < -(2**31) or diff.max(initial=0) >= 2**31):
        return None  # the runtime's int32 subtraction would wrap
    # One float32 rounding of an exact difference times the scale, as the runtime does.
    return np.multiply(diff.astype(np.float32), scale.astype(np.float32), dtype=np.float32)


def remove_unread(model: onnx.ModelProto, candidates: set[str]) -> None:
    """Drop initializers and Constant nodes among ``candidates`` that nothing reads now."""
    reads = name_reads(model)
    unread = {n for n in candidates if not reads[n]}
    for g in graphs(model.graph):
        keep = [t for t in g.initializer if t.name not in unread]
        if len(keep) != len(g.initializer):
            del g.initializer[:]
            g.initializer.extend(keep)
        nodes = [n for n in g.node if not (n.op_type == "Constant" and n.domain in _DEFAULT_DOMAINS
                                            and len(n.output) == 1 and n.output[0] in unread)]
        if len(nodes) != len(g.node):
            del g.node[:]
            g.node.extend(nodes)
        info = [v for v in g.value_info if v.name not in unread]
        if len(info) != len(g.value_info):
            del g.value_info[:]
            g.value_info.extend(info)
