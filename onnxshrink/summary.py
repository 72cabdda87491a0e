"""What a model holds: opsets, inputs and outputs, parameters, bytes by op and tensor."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import numpy as np
import onnx

from onnxshrink.model import consumers, iter_graphs, iter_weights


@dataclasses.dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: list[int]
    elements: int
    bytes: int
    sparsity: float
    used_by: str
    location: str


@dataclasses.dataclass
class ModelInfo:
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    nodes: int
    op_counts: dict[str, int]
    subgraphs: int
    parameters: int
    weight_bytes: int
    bytes_by_op: dict[str, int]
    dtype_mix: dict[str, int]
    tensors: list[TensorInfo]
    metadata: dict[str, str]

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if top is not None:
            d["tensors"] = d["tensors"][:top]
        return d


def _shape(vi: onnx.ValueInfoProto) -> list[int | str]:
    dims = vi.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def _io(vi: onnx.ValueInfoProto) -> dict[str, Any]:
    tt = vi.type.tensor_type
    dtype = onnx.TensorProto.DataType.Name(tt.elem_type).lower() if tt.elem_type else "unknown"
    return {"name": vi.name, "dtype": dtype, "shape": _shape(vi)}


def inspect_model(model: onnx.ModelProto) -> ModelInfo:
    """Summarise ``model`` without changing it. Tensors are sorted by bytes, largest first."""
    inits = {t.name for t in model.graph.initializer}
    op_counts: collections.Counter[str] = collections.Counter()
    subgraphs = -1
    users: dict[str, str] = {}
    for graph, _ in iter_graphs(model.graph):
        subgraphs += 1
        for node in graph.node:
            op_counts[node.op_type] += 1
        for name, uses in consumers(graph).items():
            users.setdefault(name, uses[0][0].op_type)
    tensors = []
    bytes_by_op: collections.Counter[str] = collections.Counter()
    dtype_mix: collections.Counter[str] = collections.Counter()
    for ref in iter_weights(model):
        t = ref.tensor
        dtype = onnx.TensorProto.DataType.Name(t.data_type).lower()
        elements = ref.size
        if t.data_type == onnx.TensorProto.STRING:
            nbytes = sum(len(s) for s in t.string_data)
            sparsity = 0.0
        else:
            array = ref.array()
            nbytes = int(array.nbytes)
            sparsity = float(np.count_nonzero(array == 0)) / array.size if array.size else 0.0
        used_by = users.get(ref.name, "(unused)")
        tensors.append(TensorInfo(ref.name, dtype, list(t.dims), elements, nbytes, round(sparsity, 6), used_by,
                                  ref.kind if ref.depth == 0 else f"{ref.kind} in subgraph"))
        bytes_by_op[used_by] += nbytes
        dtype_mix[dtype] += elements
    tensors.sort(key=lambda x: (-x.bytes, x.name))
    return ModelInfo(
        ir_version=model.ir_version,
        opsets={(imp.domain or "ai.onnx"): int(imp.version) for imp in model.opset_import},
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=[_io(vi) for vi in model.graph.input if vi.name not in inits],
        outputs=[_io(vi) for vi in model.graph.output],
        nodes=sum(op_counts.values()),
        op_counts=dict(op_counts.most_common()),
        subgraphs=subgraphs,
        parameters=sum(t.elements for t in tensors),
        weight_bytes=sum(t.bytes for t in tensors),
        bytes_by_op=dict(bytes_by_op.most_common()),
        dtype_mix=dict(dtype_mix.most_common()),
        tensors=tensors,
        metadata={p.key: p.value for p in model.metadata_props},
    )
