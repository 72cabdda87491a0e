"""Writing a plan into the graph: int8 weights, int32 biases, Q/DQ pairs.

For a quantized node's output ``y``: the node now writes ``y_prequant``, a
QuantizeLinear makes ``y_quantized`` and a DequantizeLinear writes ``y``
again, so every reader (graph outputs included) sees the dequantized value
and onnxruntime finds the DQ -> op -> Q groups its integer kernels replace.
A float value read by a quantized node gets a Q/DQ pair whose output only
the quantized readers use. Weights are stored as int8 (zero point 0) behind
a DequantizeLinear with their per-channel axis; biases as int32 with scale
input scale x weight scale.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxshrink.model import producers
from onnxshrink.quantization import bias_correction
from onnxshrink.quantization.params import (
    QuantParams,
    QuantizedWeight,
    activation_params,
    fit_bias,
    quantize_bias,
    quantize_weight,
    weight_scales,
)
from onnxshrink.quantization.plan import NodePlan, Plan
from onnxshrink.quantization.prepare import node_attribute, constant_value, remove_unused_initializers
from onnxshrink.quantization.ranges import activation_range
from onnxshrink.quantization.stats import CalibrationStats
from onnxshrink.quantization.weight_rounding import WeightRounder


@dataclasses.dataclass
class NodeRecord:
    """What the report says about one quantized node."""

    name: str
    op_type: str
    kernel: str
    inputs: dict[str, dict]
    output: dict | None
    weight: dict | None
    fused: str | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Names:
    """Fresh value and node names that collide with nothing in the graph."""

    def __init__(self, graph: onnx.GraphProto):
        self.taken = {t.name for t in graph.initializer} | {i.name for i in graph.input}
        self.taken |= {o for n in graph.node for o in n.output} | {n.name for n in graph.node}

    def __call__(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name


def compute_params(plan: Plan, stats: CalibrationStats, graph: onnx.GraphProto, method: str, dtype: str,
                   percentile: float) -> dict[str, QuantParams]:
    """Scale and zero point of every quantized activation value, by value name."""
    by_source: dict[str, QuantParams] = {}
    for source in set(plan.params_source.values()):
        if source in plan.constant_activations:
            value = constant_value(graph, source).astype(np.float64)
            lo, hi = float(value.min()), float(value.max())
        elif source in stats.tensors:
            lo, hi = activation_range(stats.tensors[source], method, 256, percentile)
        else:
            raise KeyError(source)
        by_source[source] = activation_params(lo, hi, dtype)
    return {value: by_source[source] for value, source in plan.params_source.items()}


def apply_plan(model: onnx.ModelProto, plan: Plan, params: dict[str, QuantParams], *,
               per_channel_for: Callable[[str], bool], weight_levels: int,
               bias_input_means: dict[str, np.ndarray] | None = None,
               rounder: WeightRounder | None = None) -> tuple[onnx.ModelProto, list[NodeRecord]]:
    """A new model with ``plan`` written in; ``model`` is not changed. Weight codes
    lie in [-``weight_levels``, ``weight_levels``] (64 keeps x86 CPUs without VNNI
    exact, fewer levels pack smaller: :func:`params.weight_levels`), a scale per
    output channel for the op types ``per_channel_for`` says, else one per weight;
    ``bias_input_means`` (node name -> per-channel mean of its input) turns on bias
    correction for those nodes (:mod:`onnxshrink.quantization.bias_correction`), which
    sees the final codes; ``rounder`` rounds weights by GPTQ where it has their
    layer's Hessian (:mod:`onnxshrink.quantization.weight_rounding`), else to nearest."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    names = _Names(graph)
    by_name = {n.name: n for n in graph.node}
    plans = {name: dataclasses.replace(p, node=by_name[p.node.name],
                                       fused=by_name[p.fused.name] if p.fused is not None else None)
             for name, p in plan.nodes.items()}
    fused_names = {p.fused.name for p in plans.values() if p.fused is not None}
    head: list[onnx.NodeProto] = []  # DQ of constants, Q/DQ of graph inputs
    after: dict[str, list[onnx.NodeProto]] = {}  # node name -> Q/DQ nodes to place after it
    made_by = producers(graph)
    scale_names: dict[tuple[float, int, str], tuple[str, str]] = {}
    records: list[NodeRecord] = []

    def qparams_inits(p: QuantParams, base: str) -> tuple[str, str]:
        key = (p.scale, p.zero_point, p.dtype)
        if key not in scale_names:
            s, z = names(f"{base}_scale"), names(f"{base}_zero_point")
            graph.initializer.append(numpy_helper.from_array(np.array(p.scale, np.float32), s))
            graph.initializer.append(numpy_helper.from_array(np.array(p.zero_point, p.np_dtype), z))
            scale_names[key] = (s, z)
        return scale_names[key]

    def qdq(value: str, p: QuantParams, dq_output: str, q_input: str) -> list[onnx.NodeProto]:
        s, z = qparams_inits(p, value)
        quantized = names(f"{value}_quantized")
        return [helper.make_node("QuantizeLinear", [q_input, s, z], [quantized], name=names(f"{value}_QuantizeLinear")),
                helper.make_node("DequantizeLinear", [quantized, s, z], [dq_output], name=names(f"{value}_DequantizeLinear"))]

    def place(value: str, nodes: list[onnx.NodeProto]) -> None:
        producer = made_by.get(value)
        if producer is None or producer.op_type == "Constant":
            head.extend(nodes)
        else:
            after.setdefault(producer.name, []).extend(nodes)

    # activation inputs that are not int8 yet: one Q/DQ per value, read by quantized nodes only
    int8_outputs = {p.output_name for p in plans.values() if p.output_quantized and p.output_name}
    for p in plans.values():
        if p.rule.output == "shared":
            int8_outputs.update(o for o in p.node.output if o)
    dequantized: dict[str, str] = {}
    for p in plans.values():
        for value in p.activations:
            if value in int8_outputs or value in dequantized:
                continue
            dq_out = names(f"{value}_dequantized")
            dequantized[value] = dq_out
            if value in plan.constant_activations:
                qp = params[value]
                data = constant_value(graph, value).astype(np.float64)
                info = np.iinfo(qp.np_dtype)
                q = np.clip(np.rint(data / qp.scale) + qp.zero_point, info.min, info.max).astype(qp.np_dtype)
                q_name = names(f"{value}_quantized")
                graph.initializer.append(numpy_helper.from_array(q, q_name))
                s, z = qparams_inits(qp, value)
                head.append(helper.make_node("DequantizeLinear", [q_name, s, z], [dq_out],
                                             name=names(f"{value}_DequantizeLinear")))
            else:
                place(value, qdq(value, params[value], dq_out, value))

    weight_cache: dict[tuple, tuple[str, np.ndarray]] = {}
    for p in plans.values():
        node = p.node
        inputs = {}
        for i, value in enumerate(node.input):
            if value in p.activations:
                if value in dequantized:
                    node.input[i] = dequantized[value]
                inputs[value] = params[value].to_dict()
        weight_record = None
        if p.weight is not None:
            weight_record = _quantize_weight_input(graph, p, params, names, head, weight_cache,
                                                   per_channel_for(node.op_type),
                                                   weight_levels, (bias_input_means or {}).get(node.name), rounder)
        output_record = None
        if p.output_quantized:
            target = p.output_name
            if p.fused is not None:
                fused_out = p.fused.output[0]
                node.output[0] = names(f"{fused_out}_prequant")
            else:
                node.output[0] = names(f"{target}_prequant")
            after.setdefault(node.name, []).extend(qdq(target, params[target], target, node.output[0]))
            output_record = params[target].to_dict()
        elif p.rule.output == "shared":
            output_record = params[node.output[0]].to_dict()
            for k, o in enumerate(node.output):
                if o:
                    node.output[k] = names(f"{o}_prequant")
                    after.setdefault(node.name, []).extend(qdq(o, params[o], o, node.output[k]))
        records.append(NodeRecord(node.name, node.op_type, p.rule.kernel, inputs, output_record, weight_record,
                                  p.fused.name if p.fused is not None else None))

    nodes = list(head)
    for node in graph.node:
        if node.name in fused_names:
            continue
        nodes.append(node)
        nodes.extend(after.get(node.name, []))
    del graph.node[:]
    graph.node.extend(nodes)
    existing = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    kept_info = [vi for vi in graph.value_info if vi.name in existing]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    remove_unused_initializers(out)
    return out, records


def _quantize_weight_input(graph, p: NodePlan, params, names, head, cache, per_channel: bool, levels: int,
                           input_mean: np.ndarray | None = None, rounder: WeightRounder | None = None) -> dict:
    """Replace the node's weight (and bias) by int8 (int32) initializers behind DequantizeLinear;
    with ``input_mean`` the bias is lowered by the mean output shift of the weight's rounding."""
    node, use = p.node, p.weight
    weight = use.weight.array().astype(np.float32)
    alpha = float(node_attribute(node, "alpha", 1.0)) if node.op_type == "Gemm" else 1.0
    if alpha != 1.0:
        weight = weight * np.float32(alpha)
    axis = use.out_axis if per_channel and (node.op_type != "MatMul" or weight.ndim == 2) else None
    input_scale = params[p.activations[0]].scale
    bias = None
    if p.bias is not None:
        bias = constant_value(graph, p.bias).astype(np.float32).reshape(-1)
        beta = float(node_attribute(node, "beta", 1.0)) if node.op_type == "Gemm" else 1.0
        channels = weight.shape[use.out_axis]
        bias = np.broadcast_to(bias * np.float32(beta), (channels,)).astype(np.float32)
    key = (use.weight.name, axis, alpha)
    if key not in cache:
        scale = weight_scales(weight, axis, levels)
        if bias is not None:
            fitted = fit_bias(np.broadcast_to(scale, bias.shape), bias, input_scale)
            scale = fitted if axis is not None else np.float32(fitted.max()).reshape(())
        q = quantize_weight(weight, scale, axis, levels)
        rounding = "nearest"
        if rounder is not None:
            codes, rounding = rounder.codes(use, weight, q.scale, axis, levels, q.values)
            q = QuantizedWeight(codes, q.scale, axis)
        q_name = names(f"{use.weight.name}_quantized")
        s_name, z_name = names(f"{use.weight.name}_scale"), names(f"{use.weight.name}_zero_point")
        graph.initializer.append(numpy_helper.from_array(q.values, q_name))
        graph.initializer.append(numpy_helper.from_array(q.scale, s_name))
        graph.initializer.append(numpy_helper.from_array(np.zeros(q.scale.shape, np.int8), z_name))
        dq_out = names(f"{use.weight.name}_dequantized")
        attrs = {"axis": axis} if axis is not None else {}
        head.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq_out],
                                     name=names(f"{use.weight.name}_DequantizeLinear"), **attrs))
        cache[key] = (dq_out, q.scale, q.values, rounding)
    dq_out, scale, codes, rounding = cache[key]
    node.input[use.input_index] = dq_out
    if node.op_type == "Gemm":
        _set_attr(node, "alpha", 1.0)
    record = {"type": "int8", "symmetric": True, "axis": axis, "channels": int(scale.size),
              "scale_min": float(scale.min()), "scale_max": float(scale.max()), "rounding": rounding}
    shift = None
    if bias is not None and input_mean is not None:
        view = scale if axis is None else scale.reshape([-1 if d == axis else 1 for d in range(weight.ndim)])
        delta = codes.astype(np.float64) * view.astype(np.float64) - weight.astype(np.float64)
        shift = bias_correction.output_shift(p, delta, input_mean)
        if shift is not None:
            bias = (bias.astype(np.float64) - shift).astype(np.float32)
    if bias is not None:
        q_bias, b_scale = quantize_bias(bias, input_scale, scale)
        qb, sb, zb = names(f"{p.bias}_quantized"), names(f"{p.bias}_scale"), names(f"{p.bias}_zero_point")
        graph.initializer.append(numpy_helper.from_array(q_bias, qb))
        graph.initializer.append(numpy_helper.from_array(b_scale, sb))
        graph.initializer.append(numpy_helper.from_array(np.zeros(b_scale.shape, np.int32), zb))
        bias_out = names(f"{p.bias}_dequantized")
        attrs = {"axis": 0} if b_scale.ndim == 1 else {}
        head.append(helper.make_node("DequantizeLinear", [qb, sb, zb], [bias_out],
                                     name=names(f"{p.bias}_DequantizeLinear"), **attrs))
        node.input[p.rule.bias] = bias_out
        if node.op_type == "Gemm":
            _set_attr(node, "beta", 1.0)
        record["bias"] = "int32, corrected" if shift is not None else "int32"
    return record


def _set_attr(node: onnx.NodeProto, name: str, value: float) -> None:
    for a in node.attribute:
        if a.name == name:
            a.f = value
            return
    node.attribute.append(helper.make_attribute(name, value))
