"""Walking a model: its graphs and subgraphs, and every tensor they hold.

Below both :mod:`onnxshrink.model` (loading, saving, weights) and
:mod:`onnxshrink.external_data` (the external-data rules), which both need
to visit every tensor; it imports neither.
"""

from __future__ import annotations

from typing import Iterator

import onnx


def iter_graphs(graph: onnx.GraphProto, depth: int = 0) -> Iterator[tuple[onnx.GraphProto, int]]:
    """The graph and every subgraph below it (If branches, Loop/Scan bodies), depth-first."""
    yield graph, depth
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_graphs(attr.g, depth + 1)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_graphs(sub, depth + 1)


def all_tensors(model: onnx.ModelProto) -> Iterator[tuple[onnx.TensorProto, str]]:
    """Every TensorProto that can hold data (initializers, sparse initializers, node
    attribute tensors, in every subgraph), with a short description of where."""
    for graph, _ in iter_graphs(model.graph):
        for tensor in graph.initializer:
            yield tensor, f"graph '{graph.name}'"
        for sparse in graph.sparse_initializer:
            yield sparse.values, f"graph '{graph.name}'"
            yield sparse.indices, f"graph '{graph.name}'"
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t, f"node '{node.name or node.op_type}'"
                elif attr.type == onnx.AttributeProto.TENSORS:
                    for t in attr.tensors:
                        yield t, f"node '{node.name or node.op_type}'"
