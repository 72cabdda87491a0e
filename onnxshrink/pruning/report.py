"""What a prune run did: per-tensor sparsity, removed channels, parameters and
FLOPs before and after, the search steps and the validation metrics."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx

from onnxshrink.model import iter_weights


def parameter_counts(model: onnx.ModelProto) -> tuple[int, int]:
    """(elements, non-zero elements) over every float constant tensor of ``model``."""
    total = nonzero = 0
    for ref in iter_weights(model):
        if ref.tensor.data_type in _FLOAT_TYPES:
            array = ref.array()
            total += array.size
            nonzero += int(np.count_nonzero(array))
    return total, nonzero


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def inferred_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Inferred shapes of the main graph's values, symbolic dims taken as 1."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.value_info[:]
    inits = {t.name for t in copy.graph.initializer}
    for vi in copy.graph.input:
        if vi.name in inits:
            continue
        for d in vi.type.tensor_type.shape.dim:
            if not d.HasField("dim_value") or d.dim_value < 0:  # symbolic (or -1, as some exporters write)
                d.dim_value = 1
    try:
        inferred = onnx.shape_inference.infer_shapes(copy, data_prop=True)
    except Exception:  # shape inference is best effort; FLOPs of unknown shapes are not counted
        inferred = copy
    shapes: dict[str, list[int | None]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None
                               for d in vi.type.tensor_type.shape.dim]
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    return shapes


def count_flops(model: onnx.ModelProto) -> int:
    """Floating-point operations (2 per multiply-add) of one sample through the
    main graph's Conv, ConvTranspose, Gemm and MatMul nodes; nodes whose
    shapes cannot be inferred are not counted."""
    shapes = inferred_shapes(model)
    macs = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        out = shapes.get(node.output[0])
        w = shapes.get(node.input[1])
        a = shapes.get(node.input[0])
        if not out or not w or any(d is None for d in out) or any(d is None for d in w):
            continue
        if node.op_type == "Conv":
            macs += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type == "ConvTranspose":
            if a and all(d is not None for d in a):
                macs += int(np.prod(a)) * int(np.prod(w[1:]))
        else:
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            k = (a[-2] if trans_a else a[-1]) if a else None
            if k is not None:
                macs += int(np.prod(out)) * int(k)
    return 2 * macs


@dataclasses.dataclass
class PruneReport:
    """The record of one prune run; ``to_dict()`` is what ``--json`` writes."""

    pattern: str
    method: str
    scope: str
    requested_sparsity: float | None
    tensors: list[Any]  # TensorPruning records
    channel_groups: list[dict[str, Any]]
    skipped: dict[str, str]
    params_before: int
    params_after: int
    nonzero_before: int
    nonzero_after: int
    flops_before: int
    flops_after: int
    search: list[dict[str, Any]]
    validation: Any | None  # ValidationReport
    notes: list[str]
    latency: Any | None = None  # onnxshrink.latency.Latency: the pruned model against its input

    @property
    def weight_sparsity(self) -> float:
        """Zeros over all elements of the pruned-eligible weight tensors."""
        total = sum(t.params for t in self.tensors)
        return sum(t.zeros_after for t in self.tensors) / total if total else 0.0

    @property
    def removed_channels(self) -> int:
        return sum(g["channels_before"] - g["channels_after"] for g in self.channel_groups)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pattern": self.pattern,
            "method": self.method,
            "scope": self.scope,
            "requested_sparsity": self.requested_sparsity,
            "weight_sparsity": round(self.weight_sparsity, 6),
            "params": {"before": self.params_before, "after": self.params_after,
                       "nonzero_before": self.nonzero_before, "nonzero_after": self.nonzero_after},
            "flops": {"before": self.flops_before, "after": self.flops_after},
            "removed_channels": self.removed_channels,
            "tensors": [t.to_dict() for t in self.tensors],
            "channel_groups": self.channel_groups,
            "skipped": self.skipped,
            "search": self.search,
            "validation": self.validation.to_dict() if self.validation is not None else None,
            "notes": self.notes,
            "latency": self.latency.to_dict() if self.latency is not None else None,
        }
