"""Removing what nothing reads: dead nodes, Constant nodes and initializers, in every graph.

Passes replace tensors and nodes and leave the old ones behind: a quantized
weight held in a ``Constant`` node (as Paddle and tf2onnx export them), a
BatchNormalization's parameters once folded into its Conv, the float table
of a quantized embedding. Unread, they still fill the file (a PaddleOCR
recogniser came out of int8 quantization 1.27x the size of its fp32 file).
:func:`remove_unused` runs at the end of every pass that writes a model.

A node is kept when one of its outputs is a graph output or is read by a
kept node, including reads from inside a kept node's If/Loop/Scan bodies
(outer-scope references, with inner names shadowing outer ones). Subgraphs
are cleaned the same way from their own outputs. Left alone: every graph's
inputs (a model's interface, a Loop body's signature), kept nodes' unused
optional outputs, nodes of domains other than ONNX's and onnxruntime's
(their side effects are unknown) and model-local functions.
"""

from __future__ import annotations

import dataclasses

import onnx

PURE_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


@dataclasses.dataclass
class CleanupResult:
    """The model (changed in place), whether anything was removed, and how much."""

    model: onnx.ModelProto
    modified: bool
    nodes_removed: int = 0
    initializers_removed: int = 0


def remove_unused(model: onnx.ModelProto) -> CleanupResult:
    """Remove, in place, every node and initializer of ``model`` (main graph
    and subgraphs) that no graph output depends on; see the module docstring."""
    counts = [0, 0]
    _clean_graph(model.graph, counts, is_main=True)
    return CleanupResult(model, bool(counts[0] or counts[1]), counts[0], counts[1])


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    subs: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            subs.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            subs.extend(attr.graphs)
    return subs


def _clean_graph(graph: onnx.GraphProto, counts: list[int], *, is_main: bool) -> set[str]:
    """Clean ``graph`` in place; return the names it reads from enclosing graphs."""
    producer: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for out in node.output:
            if out:
                producer[out] = index
    outer_reads: dict[int, set[str]] = {}  # node index -> names its (cleaned) subgraphs read from outside

    def reads(index: int) -> list[str]:
        node = graph.node[index]
        names = [i for i in node.input if i]
        subs = _subgraphs(node)
        if subs:
            if index not in outer_reads:
                outer_reads[index] = set().union(*(_clean_graph(s, counts, is_main=False) for s in subs))
            names.extend(sorted(outer_reads[index]))
        return names

    needed = {o.name for o in graph.output if o.name}
    live: set[int] = set()
    # Nodes whose effects we cannot judge are roots too.
    for index, node in enumerate(graph.node):
        if node.domain not in PURE_DOMAINS or not any(node.output):
            live.add(index)
    stack = [i for n in sorted(live) for i in reads(n)] + list(needed)
    needed.update(stack)
    while stack:
        index = producer.get(stack.pop())
        if index is None or index in live:
            continue
        live.add(index)
        for name in reads(index):
            if name not in needed:
                needed.add(name)
                stack.append(name)

    dead = [i for i in range(len(graph.node)) if i not in live]
    for index in reversed(dead):  # in place: re-adding kept nodes would copy their tensors
        del graph.node[index]
    counts[0] += len(dead)
    dropped = [i for i, t in enumerate(graph.initializer) if t.name not in needed]
    dropped_names = {graph.initializer[i].name for i in dropped}
    for index in reversed(dropped):
        del graph.initializer[index]
    sparse = [i for i, s in enumerate(graph.sparse_initializer) if s.values.name not in needed]
    for index in reversed(sparse):
        dropped_names.add(graph.sparse_initializer[index].values.name)
        del graph.sparse_initializer[index]
    counts[1] += len(dropped) + len(sparse)
    if is_main and dropped_names:
        # Models before IR 4 list initializers as graph inputs too; a real input stays.
        for index in reversed(range(len(graph.input))):
            if graph.input[index].name in dropped_names:
                del graph.input[index]
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {s.values.name for s in graph.sparse_initializer}
    defined |= {o for n in graph.node for o in n.output if o}
    if dead or dropped_names:
        for index in reversed(range(len(graph.value_info))):
            if graph.value_info[index].name not in defined:
                del graph.value_info[index]
    return needed - defined


def growth_warning(input_bytes: int, output_bytes: int, what: str = "the output") -> str | None:
    """A warning line when ``what`` is larger than the input model, else None."""
    if output_bytes <= input_bytes:
        return None
    return (f"{what} is larger than the input model ({output_bytes:,} bytes vs {input_bytes:,}, "
            f"{output_bytes / max(input_bytes, 1):.2f}x)")


def drop_inferred_value_info(model: onnx.ModelProto, original: onnx.ModelProto) -> int:
    """Remove, in place, the main graph's value_info entries ``original`` did not
    have: what shape inference and the opset converter add (566 entries, 24 KB of
    a 570 KB PaddleOCR classifier, which made its weight-only model unpacked as
    float larger than the original). onnxruntime infers them again at load."""
    theirs = {vi.name for vi in original.graph.value_info}
    dropped = [i for i, vi in enumerate(model.graph.value_info) if vi.name not in theirs]
    for index in reversed(dropped):
        del model.graph.value_info[index]
    return len(dropped)
