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


def value_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor name used anywhere in ``model``, subgraphs included."""
    names: set[str] = set()
    for graph, _ in iter_graphs(model.graph):
        names.update(t.name for t in graph.initializer)
        names.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))
        for node in graph.node:
            names.update(node.input)
            names.update(node.output)
    names.discard("")
    return names


def rename_values(model: onnx.ModelProto, renames: dict[str, str]) -> None:
    """Rename, in place, the tensors named in ``renames`` (old -> new) wherever
    ``model`` refers to them: node inputs and outputs, initializers, graph
    inputs, outputs and value_info, in every subgraph."""
    if not renames:
        return
    for graph, _ in iter_graphs(model.graph):
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in renames:
                    node.input[i] = renames[name]
            for i, name in enumerate(node.output):
                if name in renames:
                    node.output[i] = renames[name]
        for t in graph.initializer:
            t.name = renames.get(t.name, t.name)
        for sparse in graph.sparse_initializer:
            sparse.values.name = renames.get(sparse.values.name, sparse.values.name)
        for v in (*graph.input, *graph.output, *graph.value_info):
            v.name = renames.get(v.name, v.name)
