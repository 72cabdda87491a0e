"""Which quantized nodes onnxruntime really runs as integer kernels.

onnxruntime's graph optimizer replaces each DQ -> op -> Q group it supports
by one integer kernel that keeps the op's name (QLinearConv, QGemm, ...). A
quantized node still present under its own op type after optimization runs
in float between DequantizeLinear and QuantizeLinear: slower than the float
model, and only worth its quantization error when a neighbour needs it.
"""

from __future__ import annotations

import os
import tempfile

import onnx

from onnxshrink import runtime

# Ops whose QDQ form is meant to run in float or as 8-bit data movement: never "unfused".
NOT_KERNELS = {"HardSwish", "HardSigmoid", "Relu", "Clip"}


def optimized_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` as onnxruntime's CPU provider rewrites it (extended optimizations);
    its large initializers are left out (only the graph is read)."""
    with tempfile.TemporaryDirectory(prefix="onnxshrink-") as folder:
        path = os.path.join(folder, "optimized.onnx")
        session = runtime.create_session(model, threads=1, optimize="extended", name="quantized model",
                                         optimized_model_path=path)
        del session
        runtime.release_memory()
        return onnx.load(path, load_external_data=False)


def unfused_nodes(model: onnx.ModelProto, quantized: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """Names among ``quantized`` (name -> op type) that onnxruntime left as float ops
    fed by DequantizeLinear, and what onnxruntime runs each named node as."""
    optimized = optimized_graph(model)
    made_by = {o: n for n in optimized.graph.node for o in n.output}
    left = []
    runs_as = {}
    for node in optimized.graph.node:
        runs_as.setdefault(node.name, node.op_type)
        op = quantized.get(node.name)
        if op is None or op in NOT_KERNELS or node.op_type != op:
            continue
        if any(made_by.get(i) is not None and made_by[i].op_type == "DequantizeLinear" for i in node.input):
            left.append(node.name)
    return left, runs_as


def kernel_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type onnxruntime runs (for the report)."""
    counts: dict[str, int] = {}
    for node in optimized_graph(model).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
