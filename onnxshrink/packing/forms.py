"""The form quantized weights load in: ``materialize="auto"``, ``"native"``,
``"float"`` or ``"qdq"`` (docs/FORMAT.md section 7).

``"qdq"`` is the model as packed. ``"native"`` rewrites weight-only quantized
MatMul/Gemm/Gather layers onto onnxruntime's low-bit kernels
(:mod:`onnxshrink.packing.native`) and leaves the rest as packed: the least
memory. ``"float"`` expands every quantized weight to float32
(:mod:`onnxshrink.packing.materialize`). ``"auto"`` is native for layers of at
least ``NATIVE_MIN_ELEMENTS`` weights, expands the remaining weight-only
weights (Conv, smaller layers, shapes the kernels refuse) to float32, and
keeps static int8 QDQ as packed for onnxruntime's integer kernels: low-bit
memory, and the fastest form measured where layers are large enough
(docs/speed.md).
"""

from __future__ import annotations

import onnx

from onnxshrink.errors import UsageError
from onnxshrink.packing.materialize import (AUTO_MAX_FLOAT_BYTES, constant_values, float_bytes, graphs,
                                            integer_kernel_inputs, materialize_float, name_reads, quantized_weights)
from onnxshrink.packing.native import LayerForm, to_native

MATERIALIZE_MODES = ("auto", "native", "float", "qdq")
# materialize="auto" runs layers with fewer weights than this as float32: at
# batch 1 MatMulNBits' fixed cost per call (about 1 us on the bench machine) is
# more than a 64x64 layer's whole fp32 product, and its float weights take <= 16 KB.
NATIVE_MIN_ELEMENTS = 4096


def check_mode(materialize: str) -> str:
    if materialize not in MATERIALIZE_MODES:
        raise UsageError(f"materialize={materialize!r}: choose one of {', '.join(MATERIALIZE_MODES)}")
    return materialize


def materialize(model: onnx.ModelProto, mode: str) -> list[LayerForm]:
    """Put ``model``'s quantized weights (in place) in the form ``mode`` says;
    returns the form each quantized weight (by its DequantizeLinear output
    name) got, in graph order, with the reason where it is not native."""
    check_mode(mode)
    census = _census(model)
    forms: dict[str, LayerForm] = {}
    why: dict[str, str] = {}
    if mode in ("native", "auto"):
        done, why = to_native(model, min_elements=NATIVE_MIN_ELEMENTS if mode == "auto" else 0)
        forms.update((f.weight, f) for f in done)
    made: list[str] = []
    if mode == "float":
        made = materialize_float(model)
    elif mode == "auto":
        made = materialize_float(model, weight_only=True, max_float_bytes=AUTO_MAX_FLOAT_BYTES)
        if not made and float_bytes(model, weight_only=True) > AUTO_MAX_FLOAT_BYTES:
            why = {k: f"{v}; float32 weights would exceed {AUTO_MAX_FLOAT_BYTES >> 20} MiB" for k, v in why.items()}
    for name in made:
        forms[name] = LayerForm(name, census[name][0], "float", note=why.get(name, ""))
    for name, (ops, static) in census.items():
        if name not in forms:
            note = "static QDQ: onnxruntime's integer kernels" if static else why.get(name, "as packed")
            forms[name] = LayerForm(name, ops, "qdq", note=note)
    return [forms[name] for name in census]


def changes(model: onnx.ModelProto, mode: str) -> bool:
    """Whether ``mode`` can change ``model``: it has quantized weights, weight-only
    ones unless ``mode`` is "float" (node types and dtypes decide: tensor data not needed)."""
    census = _census(model)
    return mode != "qdq" and any(mode == "float" or not static for _, static in census.values())


def deployed_model(model: onnx.ModelProto, mode: str = "auto") -> tuple[onnx.ModelProto, list[LayerForm]]:
    """A copy of ``model`` in the form a packed copy of it loads in with
    ``materialize=mode`` (the default of ``onnxshrink.session`` and ``unpack``),
    and each quantized weight's form: what a quality gate should run, since
    at ``accuracy_level`` 4 the low-bit kernels quantize activations too.
    ``model`` is not changed."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy, materialize(copy, mode)


def _census(model: onnx.ModelProto) -> dict[str, tuple[tuple[str, ...], bool]]:
    """Every DequantizeLinear of a quantized weight, by output name: the op
    types reading it and whether it is a static QDQ pattern."""
    reads = name_reads(model)
    found = {}
    for graph in graphs(model.graph):
        consts = {t.name for t in graph.initializer} | set(constant_values(graph))
        static = integer_kernel_inputs(graph, consts)
        for _, nodes in quantized_weights(graph, reads, weight_only=False):
            for dq in nodes:
                out = dq.output[0]
                ops = tuple(sorted({n.op_type for n in graph.node if out in n.input}))
                found[out] = (ops, out in static)
    return found
