"""Embedding tables in int8 for static and dynamic quantization: gather the codes, then dequantize.

A table is a 2-D float32 constant read only by Gather nodes (axis 0) as
their data: a transformer's word and position embeddings, most of its bytes
(47 MB of all-MiniLM-L6-v2's 90 MB). Each such Gather becomes::

    ids -> Gather(codes int8 [V, H]) -> DequantizeLinear(scale [H], zero 0, axis=-1) -> rows

Dequantizing after the Gather touches only the gathered rows. The
weight-only form (DequantizeLinear in front of the Gather, which a native
GatherBlockQuantized rewrite maps) would dequantize the whole table on every
run, which onnxruntime does not fold away: 18.5 ms per run for MiniLM's
30522x384 table with per-row scales, 74 ms with blocks of 32, against
0.02 ms for this form (one thread, AMD EPYC Zen 4). Scales are one per
column (embedding dimension), the granularity a DequantizeLinear after the
Gather can apply: on MiniLM the sentence-embedding cosine with only the
word table quantized is 0.99999 (per row also 0.99999, per tensor 0.9998).
Codes use the full symmetric int8 range: no integer matmul reads them, so
the AVX2 pair-sum limit on weight codes does not apply.

Tables in subgraphs are handled too (no activation ranges are needed);
a table also read by another op (tied input/output embeddings) is left to
that op's rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxshrink.lowbit.dequantize import UniqueNames
from onnxshrink.model import iter_graphs
from onnxshrink.quantization.params import quantize_weight, weight_scales
from onnxshrink.quantization.prepare import node_attribute
from onnxshrink.roles import embedding_uses

FULL_INT8_LEVELS = 127
KERNEL = "Gather (int8 table, dequantized after)"


def _readers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Every node (any graph) reading each name; shadowing is rare enough to be
    treated as sharing, which only makes a table look shared and stay float."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for graph, _ in iter_graphs(model.graph):
        for node in graph.node:
            for name in node.input:
                if name:
                    readers.setdefault(name, []).append(node)
    return readers


def table_problem(readers: list[onnx.NodeProto], tensor: onnx.TensorProto, graph_outputs: set[str],
                  graph_inputs: set[str], name: str) -> str | None:
    """Why a Gather's table cannot take the int8 gather-then-dequantize form, or None."""
    if tensor.data_type != onnx.TensorProto.FLOAT:
        return f"table '{name}' is not float32"
    if name in graph_outputs:
        return f"table '{name}' is also a graph output"
    if name in graph_inputs:
        return f"table '{name}' is also a graph input (a caller may override it)"
    for node in readers:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or node.input[0] != name:
            return f"table '{name}' is also read by {node.op_type} '{node.name}'"
        if int(node_attribute(node, "axis", 0)) not in (0, -2):
            return f"Gather '{node.name}' gathers along axis 1 of its table"
    return None


def quantize_embeddings(model: onnx.ModelProto, *, exclude_nodes: frozenset[str] = frozenset(),
                        exclude_ops: frozenset[str] = frozenset()) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Rewrite every embedding Gather of ``model`` in place (see the module
    docstring). Returns report records of the rewritten Gathers (the
    quantize report's node format) and the Gathers left float with why."""
    uses = embedding_uses(model)
    if not uses:
        return [], {}
    readers = _readers(model)
    graph_outputs = {o.name for g, _ in iter_graphs(model.graph) for o in g.output}
    graph_inputs = {i.name for i in model.graph.input}
    names = UniqueNames(model)
    owner = {n.output[0]: g for g, _ in iter_graphs(model.graph) for n in g.node if n.output}
    by_table: dict[int, list] = {}
    for use in uses:  # one WeightRef object per table (embedding_uses shares them)
        by_table.setdefault(id(use.weight), []).append(use)
    records: list[dict[str, Any]] = []
    left: dict[str, str] = {}
    pending: list[tuple[onnx.GraphProto, onnx.NodeProto]] = []
    for group in by_table.values():
        ref = group[0].weight
        label = lambda u: u.node.name or u.node.output[0]  # noqa: E731
        if "Gather" in exclude_ops or any(u.node.name in exclude_nodes for u in group):
            left.update({label(u): "excluded by the options" for u in group})
            continue
        why = table_problem(readers.get(ref.name, []), ref.tensor, graph_outputs, graph_inputs, ref.name)
        if why:
            left.update({label(u): why for u in group})
            continue
        table = ref.array().astype(np.float32)
        scale = weight_scales(table, 1, FULL_INT8_LEVELS)
        q = quantize_weight(table, scale, 1, FULL_INT8_LEVELS)
        codes = numpy_helper.from_array(q.values, names.value(f"{ref.name}_quantized"))
        s_name, z_name = names.value(f"{ref.name}_scale"), names.value(f"{ref.name}_zero_point")
        ref.graph.initializer.extend([numpy_helper.from_array(q.scale, s_name),
                                      numpy_helper.from_array(np.zeros(q.scale.shape, np.int8), z_name)])
        if ref.kind == "initializer":
            ref.graph.initializer.append(codes)
        else:  # the Constant node now holds the codes, under their own name
            ref.tensor.CopyFrom(codes)
            ref.node.output[0] = codes.name
        for use in group:
            graph = owner[use.node.output[0]]
            pending.append((graph, _gather_codes(use.node, codes.name, s_name, z_name, names)))
            records.append({"name": label(use), "op_type": "Gather", "kernel": KERNEL, "inputs": {}, "output": None,
                            "weight": {"type": "int8", "symmetric": True, "axis": 1, "channels": int(scale.size),
                                       "scale_min": float(scale.min()), "scale_max": float(scale.max())},
                            "fused": None})
    _insert_after_producers(pending)
    return records, left


def _gather_codes(node: onnx.NodeProto, codes: str, scale: str, zero: str, names: UniqueNames) -> onnx.NodeProto:
    """Make ``node`` gather ``codes``; returns the DequantizeLinear that writes its old output."""
    out = node.output[0]
    gathered = names.value(f"{out}_quantized")
    node.input[0] = codes
    node.output[0] = gathered
    return helper.make_node("DequantizeLinear", [gathered, scale, zero], [out], axis=-1,
                            name=names.node(f"{node.name or out}_DequantizeLinear"))


def _insert_after_producers(pending: list[tuple[onnx.GraphProto, onnx.NodeProto]]) -> None:
    """Insert each node right after the node writing its first input (looked up by
    name at insertion time, so earlier insertions cannot misplace later ones)."""
    for graph, dq in pending:
        at = next(i for i, n in enumerate(graph.node) if dq.input[0] in n.output)
        graph.node.insert(at + 1, dq)
