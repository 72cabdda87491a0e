"""Folding the weight plumbing inside If/Loop/Scan bodies, so layer weights there become constants.

Exporters rearrange weights at run time inside subgraphs: torch's LSTM
export slices ``weight_ih``/``weight_hh`` into gates, concatenates them in
ONNX's gate order and unsqueezes the result into LSTM's ``W``/``R``/``B``,
all inside an ``If`` branch (silero-vad holds its whole network so). The
LSTM then reads a computed value, not a weight, and no weight pass sees it;
onnxsim does not fold inside subgraphs.

:func:`fold_branch_constants` evaluates, with onnx's reference runtime,
every data-movement node (Slice, Concat, Unsqueeze, Reshape, ...) inside a
subgraph whose inputs are all constants, and writes its result as a
Constant node in the innermost graph that holds all of those inputs (not
in each branch that computes it): two sibling branches computing the same
tensor from an outer weight share one folded copy, found by content. The
weights it was computed from are then dropped when nothing else reads
them. The main graph is left to onnxsim. A fold that would make the model's
tensors larger in total is not kept (the input comes back unchanged).
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxshrink.cleanup import remove_unused
from onnxshrink.graphs import all_tensors, iter_graphs
from onnxshrink.model import opset_version, tensor_array

# Ops that move or reshape data without computing new values: folding them
# never invents bytes beyond what their inputs hold (checked per node too).
FOLDABLE_OPS = frozenset({"Slice", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Transpose", "Identity",
                          "Flatten", "Split", "Gather", "Cast"})
_PARAMETER_ELEMENTS = 64  # an integer vector up to this long is a parameter (starts, axes, shape), not data
_SLACK_BYTES = 64  # a node may write this much more than it reads (shape vectors, a Cast to a wider type)


@dataclasses.dataclass
class BranchFoldResult:
    """The model (a new proto, or the input when nothing was folded), whether it
    changed, how many nodes were folded and how many folded tensors were shared."""

    model: onnx.ModelProto
    modified: bool
    nodes_folded: int = 0
    shared: int = 0
    note: str | None = None


@dataclasses.dataclass
class _Scope:
    graph: onnx.GraphProto
    # Constants by name: TensorProtos read into arrays only when a foldable node reads them
    # (a large model's other weights are never copied).
    values: dict[str, onnx.TensorProto | np.ndarray]
    # Values this pass wrote, by content: only those, as they precede every later reader
    # (a constant the exporter placed further down the graph would not).
    by_content: dict[tuple, str] = dataclasses.field(default_factory=dict)
    hoisted: list[onnx.NodeProto] = dataclasses.field(default_factory=list)


def fold_branch_constants(model: onnx.ModelProto) -> BranchFoldResult:
    """Fold constant data movement inside ``model``'s subgraphs (see the module
    docstring); ``model`` itself is not changed."""
    if not any(depth for _, depth in iter_graphs(model.graph)):
        return BranchFoldResult(model, False)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    folder = _Folder(work)
    main_inputs = {vi.name for vi in work.graph.input}
    root = _Scope(work.graph, {t.name: t for t in work.graph.initializer if t.name not in main_inputs})
    root.values.update(_constant_nodes(work.graph))
    folder.walk_children(work.graph, [root])
    for offset, constant in enumerate(root.hoisted):
        work.graph.node.insert(offset, constant)
    if not folder.folded:
        return BranchFoldResult(model, False)
    remove_unused(work)
    before, after = _tensor_bytes(model), _tensor_bytes(work)
    if after > before:
        return BranchFoldResult(model, False, note=f"folding inside subgraphs would grow the tensors from {before:,} "
                                                   f"to {after:,} bytes; left as it was")
    return BranchFoldResult(work, True, folder.folded, folder.shared)


def _tensor_bytes(model: onnx.ModelProto) -> int:
    return sum(t.ByteSize() for t, _ in all_tensors(model))


def _constant_nodes(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto | np.ndarray]:
    values = {}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
            value = _constant_value(node)
            if value is not None:
                values[node.output[0]] = value
    return values


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
            return attr.t
        if attr.name == "value_float":
            return np.array(attr.f, np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), np.int64)
    return None  # sparse_value, strings: not folded through


def _is_parameter(array: np.ndarray) -> bool:
    return array.dtype.kind in "iu" and array.ndim <= 1 and array.size <= _PARAMETER_ELEMENTS


def _content_key(array: np.ndarray) -> tuple:
    return array.dtype.str, array.shape, hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


class _Folder:
    def __init__(self, model: onnx.ModelProto):
        from onnxshrink.lowbit.dequantize import UniqueNames  # here: onnxshrink.lowbit imports this module

        self.model = model
        self.opset = opset_version(model)
        self.names = UniqueNames(model)
        self.folded = 0
        self.shared = 0
        self.source: dict[str, str] = {}  # hoisted value -> the weight it was computed from

    def _source_of(self, node: onnx.NodeProto, found: list) -> str:
        """The name of the largest input of ``node`` (through earlier folds, the
        exporter's weight), which names what is folded from it: reports then say
        'decoder.rnn.weight_ih_folded', not 'Unsqueeze_6_output_0'."""
        sizes = [(a.nbytes if a is not None else -1, i) for i, (_, a) in enumerate(found)]
        name = node.input[max(sizes)[1] if sizes else 0]
        return self.source.get(name, name)

    def walk_children(self, graph: onnx.GraphProto, scopes: list[_Scope]) -> None:
        for node in graph.node:
            for attr in node.attribute:
                subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
                for sub in subs:
                    self.walk(sub, scopes)

    def walk(self, graph: onnx.GraphProto, outer: list[_Scope]) -> None:
        scope = _Scope(graph, {t.name: t for t in graph.initializer})
        scope.values.update(_constant_nodes(graph))
        scopes = [*outer, scope]
        index = 0
        while index < len(graph.node):
            node = graph.node[index]
            replacement = self._try_fold(node, scopes, graph)
            if replacement is None:
                for attr in node.attribute:
                    subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
                    for sub in subs:
                        self.walk(sub, scopes)
                index += 1
                continue
            del graph.node[index]
            for offset, constant in enumerate(replacement):
                graph.node.insert(index + offset, constant)
            index += len(replacement)
        # Constants hoisted here from deeper graphs: first, so they precede every reader.
        for offset, constant in enumerate(scope.hoisted):
            graph.node.insert(offset, constant)

    def _lookup(self, name: str, scopes: list[_Scope]) -> tuple[int, np.ndarray] | None:
        for level in range(len(scopes) - 1, -1, -1):
            values = scopes[level].values
            if name in values:
                if isinstance(values[name], onnx.TensorProto):
                    values[name] = tensor_array(values[name])
                return level, values[name]
        return None

    def _try_fold(self, node: onnx.NodeProto, scopes: list[_Scope],
                  graph: onnx.GraphProto) -> list[onnx.NodeProto] | None:
        if node.op_type not in FOLDABLE_OPS or node.domain not in ("", "ai.onnx") or not node.input:
            return None
        found = [self._lookup(name, scopes) if name else (-1, None) for name in node.input]
        if any(f is None for f in found) or not node.input[0]:
            return None
        outputs = self._evaluate(node, [array for _, array in found])
        if outputs is None:
            return None
        read = sum(a.nbytes for _, a in found if a is not None)
        if sum(o.nbytes for o in outputs) > read + _SLACK_BYTES:
            return None
        # Written where its data inputs (the weights) live, so sibling branches share it;
        # parameters (slice starts, axes, shapes) are spent in the value and need not be visible there.
        data = [lvl for lvl, a in found if a is not None and not _is_parameter(a)]
        level = max(data) if data else len(scopes) - 1
        local = []
        graph_outputs = {o.name for o in graph.output}
        for name, array in zip(node.output, outputs):
            if not name:
                continue
            target = scopes[level] if name not in graph_outputs else scopes[-1]
            key = _content_key(array)
            existing = target.by_content.get(key)
            if existing is not None and existing != name:
                self.shared += 1
                self._rename_reads(graph, node, name, existing)
                continue
            if target is scopes[-1]:
                local.append(_constant(name, array, self.names.node(f"{name}_folded")))
                target.values[name] = array
                target.by_content.setdefault(key, name)
                continue
            new = self.names.value(f"{self._source_of(node, found)}_folded")
            self.source[new] = self._source_of(node, found)
            target.hoisted.append(_constant(new, array, self.names.node(f"{new}_folded")))
            target.values[new] = array
            target.by_content[key] = new
            self._rename_reads(graph, node, name, new)
        self.folded += 1
        return local

    def _evaluate(self, node: onnx.NodeProto, arrays: list[np.ndarray | None]) -> list[np.ndarray] | None:
        from onnx.reference import ReferenceEvaluator

        names = [f"in{i}" if n else "" for i, n in enumerate(node.input)]
        single = onnx.NodeProto()
        single.CopyFrom(node)
        del single.input[:]
        single.input.extend(names)
        del single.output[:]
        single.output.extend(f"out{i}" for i in range(len(node.output)))
        inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                  for n, a in zip(names, arrays) if n]
        outputs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in single.output]
        tiny = helper.make_model(helper.make_graph([single], "fold", inputs, outputs),
                                 opset_imports=[helper.make_opsetid("", self.opset)])
        try:
            results = ReferenceEvaluator(tiny).run(None, {n: a for n, a in zip(names, arrays) if n})
        except Exception:  # an op the reference runtime rejects here stays as it was
            return None
        return [np.asarray(r) for r in results]

    @staticmethod
    def _rename_reads(graph: onnx.GraphProto, writer: onnx.NodeProto, old: str, new: str) -> None:
        """Point every reader of ``old`` in ``graph`` (after ``writer``) and in its
        nodes' subgraphs at ``new``."""
        for g, _ in iter_graphs(graph):
            for node in g.node:
                if node is writer:
                    continue
                for i, name in enumerate(node.input):
                    if name == old:
                        node.input[i] = new


def _constant(name: str, array: np.ndarray, node_name: str) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=node_name, value=numpy_helper.from_array(array, name))
