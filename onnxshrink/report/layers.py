"""The shrink report's per-layer rows: every layer weight of the model shrink
started from, what pruning and quantization did to it, read from the model
that came out.

A row names the weight and the node(s) reading it as the input model named
them (after :func:`onnxshrink.simplify.simplify` gave onnxsim's renames back),
and says what it was made from when onnxsim made it (a BatchNorm folded in,
q/k/v weights concatenated). Whether a layer is quantized or kept in float is
read from the output model, not from what a pass meant to do.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from onnxshrink.model import iter_weights
from onnxshrink.provenance import braced
from onnxshrink.roles import embedding_uses, weight_uses

_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
_STORAGE_BITS = {onnx.TensorProto.INT8: 8, onnx.TensorProto.UINT8: 8, onnx.TensorProto.INT4: 4,
                 onnx.TensorProto.UINT4: 4, onnx.TensorProto.INT16: 16, onnx.TensorProto.UINT16: 16}


def _weight_forms(model: onnx.ModelProto) -> dict[tuple[str, int], tuple[str, int | None]]:
    """How each (node name, weight input) of ``model`` reads its weight:
    ("quantized", storage bits) behind a DequantizeLinear of integer codes or
    as integer codes, ("float", None) as a float constant."""
    constants = {ref.name: ref.tensor for ref in iter_weights(model)}
    dequantized = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input and node.input[0] in constants:
            dequantized[node.output[0]] = constants[node.input[0]].data_type
    forms: dict[tuple[str, int], tuple[str, int | None]] = {}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            if name in dequantized:
                forms[(node.name, index)] = ("quantized", _STORAGE_BITS.get(dequantized[name]))
            elif name in constants:
                dtype = constants[name].data_type
                forms[(node.name, index)] = ("float", None) if dtype in _FLOAT else ("quantized", _STORAGE_BITS.get(dtype))
    return forms


def _precision(form: tuple[str, int | None] | None, record: Mapping[str, Any], range_bits: int | None,
               float16: bool) -> str:
    if form is None:
        return "not in the output"
    kind, storage = form
    if kind == "float":
        return "float16 in the container" if float16 else "float"
    bits = record.get("bits")
    if bits and storage and bits < storage:
        return f"{bits}-bit codes in int{storage} storage"
    if bits:
        return f"int{bits}"
    if range_bits and storage and range_bits < storage:
        return f"int{storage}, codes in a {range_bits}-bit range"
    return f"int{storage}" if storage else "integer"


def layer_rows(base: onnx.ModelProto, final: onnx.ModelProto, records: Sequence[Mapping[str, Any]], *,
               origins: Mapping[str, str] | None = None, quantized: bool = True,
               weight_range_bits: int | None = None, float16: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One row per layer weight of ``base`` (the model the search started
    from), in graph order: ``name`` (the weight), ``nodes`` (the nodes reading
    it), ``op``, ``shape``, ``params``, ``sparsity`` (pruning's record, else
    the zeros in ``base``), ``precision`` and ``kept_float`` (read from
    ``final``; ``kept_float`` only when quantization ran), ``quant_error``
    (relative weight error), ``origin`` (what onnxsim made it from, if it did).
    ``records`` are the passes' per-weight dicts (``name``, ``sparsity``,
    ``quant_error``, ``bits``); ``float16`` names the tensors the container
    stores as float16."""
    by_name = {r["name"]: r for r in records}
    origins = origins or {}
    forms = _weight_forms(final)
    uses: dict[str, list] = {}
    for use in [*weight_uses(base, include_recurrent=True), *embedding_uses(base)]:
        if use.weight.depth == 0:
            uses.setdefault(use.weight.name, []).append(use)
    rows = []
    for name, group in uses.items():
        record = by_name.get(name, {})
        weight = group[0].weight
        sparsity = record.get("sparsity")
        if sparsity is None:  # not pruned: the zeros it came with
            sparsity = float(np.count_nonzero(weight.array() == 0)) / max(weight.size, 1)
        form = next((forms[(u.node.name, u.input_index)] for u in group if (u.node.name, u.input_index) in forms), None)
        nodes = [u.node.name for u in group if u.node.name]
        node_origin = next((origins[n] for n in nodes if n in origins), None)
        rows.append({
            "name": name,
            "nodes": braced(list(dict.fromkeys(nodes))) if nodes else "",
            "op": group[0].node.op_type,
            "shape": [int(d) for d in weight.tensor.dims],
            "params": weight.size,
            "sparsity": round(float(sparsity), 6),
            "precision": _precision(form, record, weight_range_bits, name in float16),
            "bits": record.get("bits"),
            "kept_float": bool(quantized and form is not None and form[0] == "float"),
            "quant_error": record.get("quant_error"),
            "origin": origins.get(name) or node_origin,
        })
    return rows
