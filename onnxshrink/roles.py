"""Which constant tensors are layer weights, found by graph role, not by name.

A weight is a constant tensor read as the weight input of Conv,
ConvTranspose, Gemm or MatMul (and, when asked, LSTM/GRU/RNN); an embedding
table is a 2-D constant read as Gather's data (:func:`embedding_uses`). For each use
we record which axis holds the layer's output channels and which its input
(reduction) channels, which is what pruning and per-channel quantization
need. Biases, normalisation parameters, shape tensors and anything else are
not weights.
"""

from __future__ import annotations

import dataclasses
import onnx

from onnxshrink.model import WeightRef, iter_graphs, iter_weights

RECURRENT_OPS = ("LSTM", "GRU", "RNN")


@dataclasses.dataclass(frozen=True)
class WeightUse:
    """One node reading ``weight`` as its layer weight.

    ``out_axis`` is the weight axis of output channels, ``in_axis`` that of
    input channels (the reduction axis); both are non-negative.
    """

    weight: WeightRef
    node: onnx.NodeProto
    input_index: int
    out_axis: int
    in_axis: int

    @property
    def op_type(self) -> str:
        return self.node.op_type


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _axes(node: onnx.NodeProto, index: int, rank: int) -> tuple[int, int] | None:
    """(out_axis, in_axis) of the weight read at input ``index`` of ``node``, or None
    when that input is not a layer weight."""
    op = node.op_type
    if op == "Conv" and index == 1 and rank >= 3:
        return 0, 1
    if op == "ConvTranspose" and index == 1 and rank >= 3:
        return 1, 0
    if op == "Gemm" and index == 1 and rank == 2:
        return (0, 1) if _attr(node, "transB", 0) else (1, 0)
    if op == "MatMul" and index == 1 and rank >= 2:
        return rank - 1, rank - 2
    if op in RECURRENT_OPS and index in (1, 2) and rank == 3:
        return 1, 2  # [num_directions, gates*hidden, input or hidden]
    return None


def weight_uses(model: onnx.ModelProto, *, include_recurrent: bool = False) -> list[WeightUse]:
    """Every (weight, node) use in the model, main graph and subgraphs, in graph order."""
    weights = {(id(ref.graph), ref.name): ref for ref in iter_weights(model)}
    uses: list[WeightUse] = []
    for graph, _ in iter_graphs(model.graph):
        visible = _visible_weights(model, graph, weights)
        for node in graph.node:
            if node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type in RECURRENT_OPS and not include_recurrent:
                continue
            for index, name in enumerate(node.input):
                ref = visible.get(name)
                if ref is None:
                    continue
                axes = _axes(node, index, len(ref.tensor.dims))
                if axes is not None:
                    uses.append(WeightUse(ref, node, index, *axes))
    return uses


def embedding_uses(model: onnx.ModelProto) -> list[WeightUse]:
    """Gather nodes reading a 2-D constant table as their data (embeddings), main
    graph and subgraphs, in graph order. ``out_axis`` is 0 (a row per token) and
    ``in_axis`` 1 (the embedding dimension, along which weight-only blocks run)."""
    by_graph: dict[int, list[WeightRef]] = {}
    for ref in iter_weights(model):
        by_graph.setdefault(id(ref.graph), []).append(ref)
    uses: list[WeightUse] = []

    def walk(graph: onnx.GraphProto, outer: dict[str, WeightRef]) -> None:
        visible = {**outer, **{r.name: r for r in by_graph.get(id(graph), [])}}
        for node in graph.node:
            if node.op_type == "Gather" and node.domain in ("", "ai.onnx") and node.input:
                ref = visible.get(node.input[0])
                if ref is not None and len(ref.tensor.dims) == 2:
                    uses.append(WeightUse(ref, node, 0, 0, 1))
            for attr in node.attribute:
                for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                    walk(sub, visible)

    walk(model.graph, {})
    return uses


def _visible_weights(model: onnx.ModelProto, graph: onnx.GraphProto, weights: dict) -> dict[str, WeightRef]:
    """Weights a node in ``graph`` can read: its own, and (for subgraphs) those of
    enclosing graphs, the nearest shadowing the outer ones."""
    chain = _enclosing(model.graph, graph) or [graph]
    visible: dict[str, WeightRef] = {}
    for g in chain:
        for (gid, name), ref in weights.items():
            if gid == id(g):
                visible[name] = ref
    return visible


def _enclosing(root: onnx.GraphProto, target: onnx.GraphProto) -> list[onnx.GraphProto] | None:
    """The graphs from ``root`` down to ``target``, outermost first."""
    if root is target:
        return [root]
    for node in root.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                path = _enclosing(sub, target)
                if path:
                    return [root] + path
    return None


def weights_by_name(uses: list[WeightUse]) -> dict[str, list[WeightUse]]:
    """Group uses by weight tensor, so a shared weight is handled once."""
    grouped: dict[str, list[WeightUse]] = {}
    for use in uses:
        grouped.setdefault(use.weight.name, []).append(use)
    return grouped

