"""Where the Q/DQ nodes go: which nodes run in int8 and which tensors are quantized.

The plan is made from the graph alone (no statistics), so the tensors to
calibrate are known before calibration runs. Decisions, in graph order:

1. a node is a *candidate* when its op has a rule, it is not excluded, its
   activation inputs are float tensors computed at run time, its weight is a
   constant and its bias (if any) a constant vector;
2. a tensor is *wanted* in int8 when a candidate reads it as an activation
   (looking through pass-through ops and fusible Relu/Clip);
3. going forward, candidates are quantized; an ``optional`` output is
   quantized only when wanted; a Relu/Clip that alone reads a quantized
   output folds into its Q; a pass-through op is quantized when its output
   is wanted, and then shares its input's scale (a float input gets its Q
   before the op).

The main graph only: nodes inside subgraphs stay as they are (their
activation ranges would be needed, and onnxruntime outputs no subgraph
tensor), and the plan lists each one with a weight under ``left_float``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx

from onnxshrink.model import consumers, iter_graphs
from onnxshrink.quantization.prepare import node_attribute, constant_value, subgraph_reads
from onnxshrink.quantization.rules import ALL_INPUTS, OpRule, rule_for
from onnxshrink.roles import WeightUse, weight_uses

FLOAT = onnx.TensorProto.FLOAT
IN_SUBGRAPH = ("inside an If/Loop/Scan body: static int8 needs activation ranges there, which onnxruntime does "
               "not output, and its weight stays float (excluded, under 256 elements, or also read in the main "
               "graph)")


def subgraph_layers(model: onnx.ModelProto, why: str = IN_SUBGRAPH) -> dict[str, str]:
    """Nodes inside If/Loop/Scan bodies that read a layer weight (recurrent ones
    included), by name (or op and output, for nameless ones), each with ``why``."""
    inside = {o for sub, depth in iter_graphs(model.graph) if depth for n in sub.node for o in n.output if o}
    named = [(u, next((o for o in u.node.output if o), "")) for u in weight_uses(model, include_recurrent=True)]
    return {(u.node.name or f"{u.node.op_type} writing '{out}'"): why for u, out in named if out in inside}


@dataclasses.dataclass
class NodePlan:
    """A node that will run in int8."""

    node: onnx.NodeProto
    rule: OpRule
    activations: list[str]  # activation input names to read through DQ
    weight: WeightUse | None = None
    bias: str | None = None
    output_quantized: bool = False
    output_name: str | None = None  # the value its Q/DQ stands for (a fused Relu's output)
    fused: onnx.NodeProto | None = None  # the Relu/Clip folded into its Q


@dataclasses.dataclass
class Plan:
    """Quantized nodes, the activation tensors to quantize, and the nodes left in float with why."""

    nodes: dict[str, NodePlan]
    # value name -> the value whose statistics give its scale (itself, or a pass-through's source)
    params_source: dict[str, str]
    # constant inputs of Add/Mul/Concat/MatMul quantized like activations
    constant_activations: set[str]
    left_float: dict[str, str]

    @property
    def calibrated(self) -> list[str]:
        """Values whose statistics the quantized model needs."""
        return sorted({src for src in self.params_source.values() if src not in self.constant_activations})


def _activation_inputs(node: onnx.NodeProto, rule: OpRule) -> list[int]:
    if rule.activations == (ALL_INPUTS,):
        return list(range(len(node.input)))
    return [i for i in rule.activations if i < len(node.input) and node.input[i]]


def _clip_bounds(graph: onnx.GraphProto, node: onnx.NodeProto) -> tuple[float, float] | None:
    if node.op_type == "Relu":
        return 0.0, np.inf
    lo = node_attribute(node, "min", -np.inf)
    hi = node_attribute(node, "max", np.inf)
    for index, default in ((1, -np.inf), (2, np.inf)):
        if len(node.input) > index and node.input[index]:
            value = constant_value(graph, node.input[index])
            if value is None:
                return None
            if index == 1:
                lo = float(value)
            else:
                hi = float(value)
    return float(lo), float(hi)


def make_plan(
    model: onnx.ModelProto,
    types: dict[str, int],
    *,
    exclude_nodes: frozenset[str] = frozenset(),
    exclude_ops: frozenset[str] = frozenset(),
    keep_float: frozenset[str] = frozenset(),
) -> Plan:
    """Decide the placement for ``model`` (main graph, nodes named, opset >= 13)."""
    graph = model.graph
    users = consumers(graph)
    graph_outputs = {o.name for o in graph.output} | subgraph_reads(graph)  # values that must keep their name
    constants = {t.name for t in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    uses = {(id(u.node), u.input_index): u for u in weight_uses(model) if u.weight.graph is graph}
    left_float: dict[str, str] = {}

    def is_float_activation(name: str) -> bool:
        return bool(name) and name not in constants and types.get(name) == FLOAT

    # 1. candidates; int8_capable: values an integer kernel with its own output scale writes
    candidates: dict[str, NodePlan] = {}
    shared: dict[str, OpRule] = {}
    fusible: dict[str, OpRule] = {}
    int8_capable: set[str] = set()
    for node in graph.node:
        rule = rule_for(node.op_type, node.domain)
        if rule is None:
            continue
        if node.name in exclude_nodes or node.op_type in exclude_ops:
            left_float[node.name] = "excluded by the options"
            continue
        if node.name in keep_float:
            left_float[node.name] = "kept in float by the accuracy-aware search"
            continue
        if rule.output in ("shared", "fused"):
            if not is_float_activation(node.input[0]) or any(types.get(o) != FLOAT for o in node.output if o):
                continue  # e.g. MaxPool's int64 Indices output
            (shared if rule.output == "shared" else fusible)[node.name] = rule
            sole_reader = len(users.get(node.input[0], [])) == 1
            if node.input[0] in int8_capable and (rule.output == "shared" or sole_reader):
                int8_capable.update(o for o in node.output if o)
            continue
        if rule.int8_inputs_only and not all(i in int8_capable for i in node.input if i):
            left_float[node.name] = "its inputs are float: an int8 kernel here would only add Q/DQ"
            continue
        weight = uses.get((id(node), rule.weight)) if rule.weight is not None else None
        reason = _candidate_problem(graph, node, rule, weight, constants, is_float_activation)
        if reason:
            left_float[node.name] = reason
            continue
        plan = NodePlan(node, rule, [], weight=weight)
        for i in _activation_inputs(node, rule):
            if weight is None or i != rule.weight:
                plan.activations.append(node.input[i])
        if rule.bias is not None and len(node.input) > rule.bias and node.input[rule.bias]:
            plan.bias = node.input[rule.bias]
        candidates[node.name] = plan
        if rule.output == "own":
            int8_capable.add(node.output[0])

    # 2. wanted values, backwards
    wanted: set[str] = set()
    for node in reversed(graph.node):
        if node.name in candidates:
            wanted.update(candidates[node.name].activations)
        elif node.name in shared or node.name in fusible:
            if any(o in wanted for o in node.output):
                wanted.add(node.input[0])

    # 3. forward decisions
    int8_values: set[str] = set()  # values that will be DQ outputs
    params_source: dict[str, str] = {}
    nodes: dict[str, NodePlan] = {}
    fused_away: set[str] = set()
    for node in graph.node:
        if node.name in fused_away:
            continue
        if node.name in candidates:
            plan = candidates[node.name]
            nodes[node.name] = plan
            out = node.output[0]
            readers = users.get(out, [])
            relu = readers[0][0] if len(readers) == 1 and out not in graph_outputs else None
            relu_ok = (relu is not None and relu.name in fusible and relu.input[0] == out)
            if relu_ok:
                bounds = _clip_bounds(graph, relu)
                relu_ok = bounds is not None and bounds[0] <= 0.0 <= bounds[1]
            if plan.rule.output == "own" or out in wanted or (relu_ok and relu.output[0] in wanted):
                plan.output_quantized = True
                if relu_ok:
                    plan.fused = relu
                    fused_away.add(relu.name)
                    out = relu.output[0]
                plan.output_name = out
                int8_values.add(out)
                params_source[out] = out
            continue
        if node.name in shared:
            source = node.input[0]
            if any(o in wanted for o in node.output):
                # a float input is quantized here rather than after the op: same scale, and the
                # op (Transpose of an NHWC input, Resize of a small image) then moves 8-bit data
                params_source.setdefault(source, source)
                nodes[node.name] = NodePlan(node, shared[node.name], [source])
                for o in node.output:
                    if o:
                        int8_values.add(o)
                        params_source[o] = params_source[source]
            else:
                left_float[node.name] = "pass-through op whose output no int8 kernel reads: nothing to gain"
            continue
        if node.name in fusible:
            left_float[node.name] = "not right after a quantized op: runs in float"

    for label, why in subgraph_layers(model).items():
        left_float.setdefault(label, why)

    # 4. activation inputs not yet int8: Q/DQ on them (graph inputs, float producers, constants)
    constant_activations: set[str] = set()
    for plan in nodes.values():
        for name in plan.activations:
            if name in int8_values:
                continue
            params_source.setdefault(name, name)
            if name in constants:
                constant_activations.add(name)
    return Plan(nodes, params_source, constant_activations, left_float)


def _candidate_problem(graph, node, rule: OpRule, weight: WeightUse | None, constants, is_float_activation) -> str | None:
    """Why ``node`` cannot run in int8, or None."""
    if rule.weight is not None and weight is None and rule.weight not in rule.activations:
        name = node.input[rule.weight] if len(node.input) > rule.weight else ""
        return f"weight '{name}' is not a constant tensor"
    for i in _activation_inputs(node, rule):
        if weight is not None and i == rule.weight:
            continue
        name = node.input[i]
        if name in constants:
            value = constant_value(graph, name)
            if value is None or value.dtype != np.float32 or value.size == 0:
                return f"input '{name}' is not a float tensor"
            continue
        if not is_float_activation(name):
            return f"input '{name}' is not a float32 tensor"
    if weight is not None and weight.weight.tensor.data_type != FLOAT:
        return f"weight '{weight.weight.name}' is not float32"
    if rule.bias is not None and len(node.input) > rule.bias and node.input[rule.bias]:
        bias = constant_value(graph, node.input[rule.bias])
        if bias is None or bias.dtype != np.float32:
            return f"bias '{node.input[rule.bias]}' is not a float32 constant"
        if weight is None:
            return "no constant weight for the bias"
        channels = weight.weight.tensor.dims[weight.out_axis]
        if bias.size not in (1, channels) or bias.ndim > 2 or (bias.ndim == 2 and bias.shape[0] != 1):
            return f"bias '{node.input[rule.bias]}' is not one value per output channel"
    if node.op_type == "Gemm" and float(node_attribute(node, "alpha", 1.0)) <= 0.0:
        return "Gemm with alpha <= 0"
    if node.op_type == "Gemm" and float(node_attribute(node, "beta", 1.0)) <= 0.0:
        return "Gemm with beta <= 0"
    if len([o for o in node.output if o]) != 1:
        return "more than one output"
    return None
