"""The input model's names given back to a model onnxsim rewrote.

onnxsim names what it makes ``_v_39`` (a Conv weight with its BatchNorm
folded in) or ``Gemm_1`` (a MatMul and an Add fused), so every report after
simplification spoke of tensors and nodes the user never saw. This module
matches the simplified graph against the input by structure and content and
renames what it can back to the input's names:

- a node keeps its input name when its name and op type are the input's, or
  when it writes the same outputs with the same op type (a node the input left
  unnamed gets its empty name back);
- a tensor takes the name of what sat at the same place in the input: the
  same input of a matched node, the same output of a matched node, or a
  constant with identical values;
- a weight onnxsim concatenated from several (the q/k/v MatMuls merged into
  one) is named after its parts, ``onnx::MatMul_{142,143,144}``;
- a node onnxsim made is named after the input nodes it replaced (a fused
  Gemm reading ``/embed/MatMul``'s weight is ``/embed/MatMul``), or, for a
  node that replaced none (a Reshape around that Gemm), ``ANCHOR/OpType``
  after its nearest named neighbour;
- what is left is named ``NODE:role`` after the node and schema role it
  feeds or comes from (``Conv.0:B``, the bias a folded BatchNorm gave a Conv):
  never a name the input used for something else.

Where a tensor or node is new or its values changed, :attr:`NameMap.origins`
says what it came from ("conv1.weight with BatchNormalization /bn1/... folded
in"). Names of graph inputs and outputs never change (onnxsim keeps them).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable

import numpy as np
import onnx

from onnxshrink.graphs import rename_values, value_names
from onnxshrink.model import tensor_array

# The input that holds a layer's weight, per op (as counted in onnxshrink.census).
WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, "LSTM": 1, "GRU": 1, "RNN": 1, "Gather": 0}


@dataclasses.dataclass
class NameMap:
    """What :func:`restore_names` renamed, and where new things came from.

    ``values`` maps onnxsim's tensor names to the names given back, ``nodes``
    its node names ('' for a node the input left unnamed); ``origins`` says,
    for a tensor or node (by its new name) that is new or whose values
    changed, what it was made from.
    """

    values: dict[str, str] = dataclasses.field(default_factory=dict)
    nodes: dict[str, str] = dataclasses.field(default_factory=dict)
    origins: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"values_renamed": len(self.values), "nodes_renamed": len(self.nodes), "origins": dict(self.origins)}


class _Index:
    """One graph's producers, consumers and constants."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer: dict[str, tuple[onnx.NodeProto, int]] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        self.constants: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, i))
            for i, name in enumerate(node.output):
                if name:
                    self.producer[name] = (node, i)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
                for attr in node.attribute:
                    if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                        self.constants[node.output[0]] = attr.t
        self._arrays: dict[str, np.ndarray | None] = {}

    def array(self, name: str) -> np.ndarray | None:
        if name not in self._arrays:
            tensor = self.constants.get(name)
            try:
                self._arrays[name] = None if tensor is None else np.ascontiguousarray(tensor_array(tensor))
            except Exception:  # a tensor numpy cannot read (e.g. strings) is matched by place only
                self._arrays[name] = None
        return self._arrays[name]


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return a is not None and b is not None and a.dtype == b.dtype and a.shape == b.shape and \
        a.tobytes() == b.tobytes()


def braced(names: list[str]) -> str:
    """Several names as one: ``/blocks.0/attn/{q,k,v}/MatMul`` for the q, k and v
    MatMuls (common head and tail kept, cut at a separator)."""
    if len(names) == 1:
        return names[0]
    head = names[0]
    for n in names[1:]:
        while not n.startswith(head):
            head = head[:-1]
    head = head[: max((i + 1 for i, c in enumerate(head) if not c.isalnum()), default=0)]
    rests = [n[len(head):] for n in names]
    tail = rests[0]
    for r in rests[1:]:
        while not r.endswith(tail):
            tail = tail[1:]
    cut = next((i for i, c in enumerate(tail) if not c.isalnum()), len(tail))
    tail = tail[cut:]
    middles = [r[: len(r) - len(tail)] for r in rests]
    return f"{head}{{{','.join(middles)}}}{tail}"


def _role(node: onnx.NodeProto, index: int, output: bool, opset: int) -> str:
    """The schema's name for an input or output of ``node`` (``B`` of a Conv), else ``input2``."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
        params = schema.outputs if output else schema.inputs
        param = params[min(index, len(params) - 1)]
        variadic = param.option == onnx.defs.OpSchema.FormalParameterOption.Variadic
        return f"{param.name}{index}" if variadic else param.name
    except Exception:  # an op onnx has no schema for
        return f"{'output' if output else 'input'}{index}"


def _concatenation(array: np.ndarray, parts: dict[str, np.ndarray]) -> tuple[list[str], int] | None:
    """The ``parts`` whose concatenation along one axis is ``array``, in order, and that axis."""
    for axis in range(array.ndim):
        others = array.shape[:axis] + array.shape[axis + 1:]
        fitting = {n: a for n, a in parts.items() if a.ndim == array.ndim and a.dtype == array.dtype
                   and a.shape[:axis] + a.shape[axis + 1:] == others and a.shape[axis] < array.shape[axis]}
        found, offset = [], 0
        while fitting and offset < array.shape[axis]:
            piece = next((n for n, a in fitting.items() if offset + a.shape[axis] <= array.shape[axis] and
                          _same(np.ascontiguousarray(np.take(array, range(offset, offset + a.shape[axis]), axis)), a)),
                         None)
            if piece is None:
                break
            found.append(piece)
            offset += fitting.pop(piece).shape[axis]
        if len(found) > 1 and offset == array.shape[axis]:
            return found, axis
    return None


def _described(nodes: Iterable[onnx.NodeProto]) -> str:
    return ", ".join(f"{n.op_type} {n.name or n.output[0]}" for n in nodes)


class _Restorer:
    """One run of :func:`restore_names`; see the module docstring for the rules, in order."""

    def __init__(self, original: onnx.ModelProto, simplified: onnx.ModelProto) -> None:
        self.orig, self.simp = _Index(original.graph), _Index(simplified.graph)
        self.opset = next((i.version for i in simplified.opset_import if i.domain in ("", "ai.onnx")), 0)
        self.original_names = value_names(original)
        self.taken = value_names(simplified)
        self.result = NameMap()
        self.value_name: dict[str, str] = {}  # onnxsim value -> given name
        self.node_name: dict[int, str] = {}  # id(simplified node) -> given name
        self.match: dict[int, onnx.NodeProto] = {}  # id(simplified node) -> input node it is
        by_name = {n.name: n for n in original.graph.node if n.name}
        by_output = {n.output[0]: n for n in original.graph.node if n.output and n.output[0]}
        for node in simplified.graph.node:
            o = by_name.get(node.name) if node.name else None
            if o is None or o.op_type != node.op_type:
                o = by_output.get(node.output[0]) if node.output else None
            if o is not None and o.op_type == node.op_type:
                self.match[id(node)] = o
        kept = {id(o) for o in self.match.values()}
        self.removed = {id(n) for n in original.graph.node if id(n) not in kept}
        self.by_shape: dict[tuple, list[str]] = {}  # (element type, dims) -> input constants, to find twins
        for name, t in self.orig.constants.items():
            self.by_shape.setdefault((t.data_type, tuple(t.dims)), []).append(name)

    def new_values(self) -> list[str]:
        order: list[str] = list(self.simp.constants)
        for node in self.simp.graph.node:
            order.extend(node.input)
            order.extend(node.output)
        return list(dict.fromkeys(v for v in order if v and v not in self.original_names))

    def give(self, value: str, name: str, origin: str | None = None) -> None:
        self.taken.add(name)
        self.value_name[value] = name
        if origin:
            self.result.origins[name] = origin

    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        return name

    def places(self, value: str) -> list[str]:
        """Input names at this value's place: the same input or output of the matched nodes."""
        found = []
        for node, i in self.simp.consumers.get(value, []):
            o = self.match.get(id(node))
            if o is not None and i < len(o.input) and o.input[i]:
                found.append(o.input[i])
        if value in self.simp.producer:
            node, i = self.simp.producer[value]
            o = self.match.get(id(node))
            if o is not None and i < len(o.output) and o.output[i]:
                found.append(o.output[i])
        return [n for n in dict.fromkeys(found) if n not in self.taken]

    def folded_near(self, value: str) -> list[onnx.NodeProto]:
        """Input nodes onnxsim removed next to the matched nodes reading ``value``."""
        near = []
        for node, i in self.simp.consumers.get(value, []):
            o = self.match.get(id(node))
            if o is None:
                continue
            for out in o.output:  # a BatchNorm after a Conv
                near.extend(c for c, _ in self.orig.consumers.get(out, []) if id(c) in self.removed)
            if i < len(o.input) and o.input[i] in self.orig.producer:  # an Unsqueeze that made this input
                near.append(self.orig.producer[o.input[i]][0])
        # A Constant node only held a value: it is what was folded, not what it was folded with.
        return list({id(n): n for n in near if id(n) in self.removed and n.op_type != "Constant"}.values())

    def name_constant(self, value: str) -> None:
        array = self.simp.array(value)
        places = self.places(value)
        same = [p for p in places if _same(self.orig.array(p), array)]
        if same:
            merged = [p for p in places if p != same[0] and p in self.orig.constants]
            self.give(value, same[0], f"also stands for {', '.join(merged)} (identical constants merged by onnxsim)"
                      if merged else None)
            return
        tensor = self.simp.constants[value]
        twin = next((n for n in self.by_shape.get((tensor.data_type, tuple(tensor.dims)), [])
                     if n not in self.taken and _same(self.orig.array(n), array)), None)
        if twin is not None:
            self.give(value, twin)
            return
        folded = self.folded_near(value)
        if places:
            first = places[0]
            if first in self.orig.constants:
                how = f" folded in" if not folded else f" with {_described(folded)} folded in"
                self.give(value, first, f"{first}{how} by onnxsim")
            else:
                maker = self.orig.producer.get(first)
                what = f"{maker[0].op_type} {maker[0].name or first}" if maker else first
                self.give(value, first,
                          f"computed at run time by {what} in the input model; folded to a constant by onnxsim")
            return
        if array is not None and array.ndim >= 1:
            gone = {n: a for n, t in self.orig.constants.items() if n not in self.taken and len(t.dims) == array.ndim
                    and t.data_type == tensor.data_type and (a := self.orig.array(n)) is not None}
            parts = _concatenation(array, gone)
            if parts is not None:
                names, axis = parts
                readers = [c for n in names for c, _ in self.orig.consumers.get(n, [])]
                self.give(value, self.unique(braced(names)),
                          f"{', '.join(names)} concatenated along axis {axis} by onnxsim"
                          + (f" (read by {_described(readers)})" if readers else ""))
                return
        if folded:
            self.result.origins[value] = f"made by onnxsim from {_described(folded)}"

    def name_nodes(self) -> None:
        graph = self.simp.graph
        for node in graph.node:
            o = self.match.get(id(node))
            if o is not None:
                self.node_name[id(node)] = o.name
        taken_nodes = set(self.node_name.values())
        for node in graph.node:  # a node onnxsim made in place of input nodes reading its weight
            if id(node) in self.node_name:
                continue
            index = WEIGHT_INPUT.get(node.op_type)
            if index is None or index >= len(node.input):
                continue
            weight = self.value_name.get(node.input[index], node.input[index])
            parts = self.parts_of(weight)
            replaced = [c for p in parts for c, _ in self.orig.consumers.get(p, []) if id(c) in self.removed]
            named = [c.name for c in replaced if c.name]
            if not named:
                continue
            name = braced(list(dict.fromkeys(named)))
            if name in taken_nodes:
                continue
            absorbed = {id(c): c for inp in node.input for c, _ in
                        self.orig.consumers.get(self.value_name.get(inp, inp), []) if id(c) in self.removed}
            self.node_name[id(node)] = name
            taken_nodes.add(name)
            self.result.origins.setdefault(name, f"{node.op_type} made by onnxsim from "
                                                 f"{_described(absorbed.values() or replaced)}")
        for node in graph.node:  # a node writing what a removed input node of its op type wrote
            if id(node) in self.node_name:
                continue
            out = self.value_name.get(node.output[0], node.output[0]) if node.output else ""
            maker = self.orig.producer.get(out)
            if maker and id(maker[0]) in self.removed and maker[0].op_type == node.op_type and maker[0].name \
                    and maker[0].name not in taken_nodes:
                self.node_name[id(node)] = maker[0].name
                taken_nodes.add(maker[0].name)
        pending = [n for n in graph.node if id(n) not in self.node_name]
        while pending:  # the rest after their nearest named neighbour
            left = []
            for node in pending:
                anchor = self.neighbour(node)
                if anchor is None:
                    left.append(node)
                    continue
                name = f"{anchor}/{node.op_type}"
                name, k = name, 1
                while name in taken_nodes:
                    name, k = f"{anchor}/{node.op_type}_{k}", k + 1
                self.node_name[id(node)] = name
                taken_nodes.add(name)
                self.result.origins[name] = f"{node.op_type} added by onnxsim next to {anchor}"
            if len(left) == len(pending):
                for node in left:  # nothing named around it: keep onnxsim's name
                    self.node_name[id(node)] = node.name
                break
            pending = left

    def parts_of(self, weight: str) -> list[str]:
        """The input tensors a (possibly concatenated) weight was made of."""
        if weight in self.original_names:
            return [weight]
        m = re.fullmatch(r"(.*)\{(.*)\}(.*)", weight)
        if m:
            return [f"{m.group(1)}{mid}{m.group(3)}" for mid in m.group(2).split(",")]
        return []

    def neighbour(self, node: onnx.NodeProto) -> str | None:
        for out in node.output:
            for c, _ in self.simp.consumers.get(out, []):
                if self.node_name.get(id(c)):
                    return self.node_name[id(c)]
        for inp in node.input:
            if inp in self.simp.producer:
                p = self.simp.producer[inp][0]
                if self.node_name.get(id(p)):
                    return self.node_name[id(p)]
        return None

    def name_leftovers(self, leftovers: list[str]) -> None:
        """``NODE:role`` for what no rule named: after the first node reading it, else the node writing it."""
        for value in leftovers:
            reader = self.simp.consumers.get(value)
            if reader:
                node, i = reader[0]
                base = f"{self.node_name.get(id(node)) or node.op_type}:{_role(node, i, False, self.opset)}"
            elif value in self.simp.producer:
                node, i = self.simp.producer[value]
                base = f"{self.node_name.get(id(node)) or node.op_type}:{_role(node, i, True, self.opset)}"
            else:
                base = "unused"
            origin = self.result.origins.pop(value, None) or "made by onnxsim"
            self.give(value, self.unique(base), origin)


def restore_names(original: onnx.ModelProto, simplified: onnx.ModelProto) -> NameMap:
    """Rename, in place, ``simplified`` (onnxsim's output for ``original``) back
    to ``original``'s names where they can be matched; returns what was renamed
    and where new tensors and nodes came from. ``original`` is not changed."""
    r = _Restorer(original, simplified)
    new = r.new_values()
    for value in new:
        if value in r.simp.constants:
            r.name_constant(value)
        else:
            places = r.places(value)
            if places:
                r.give(value, places[0])
    r.name_nodes()
    r.name_leftovers([v for v in new if v not in r.value_name])
    rename_values(simplified, r.value_name)
    for node in simplified.graph.node:
        name = r.node_name.get(id(node), node.name)
        if name != node.name:
            r.result.nodes[node.name] = name
            node.name = name
    r.result.values = {old: new for old, new in r.value_name.items() if old != new}
    return r.result
