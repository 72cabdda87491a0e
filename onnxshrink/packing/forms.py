"""The form quantized weights load in: ``materialize="auto"``, ``"native"``,
``"float"`` or ``"qdq"`` (docs/FORMAT.md section 7).

``"qdq"`` is the model as packed. ``"native"`` rewrites weight-only quantized
MatMul/Gemm/Gather layers onto onnxruntime's low-bit kernels
(:mod:`onnxshrink.packing.native`), folds the bias Adds and reshape pairs
around them into the kernels (:mod:`onnxshrink.packing.kernel_fusion`) and
leaves the rest as packed: the least memory. ``"float"`` expands every
quantized weight to float32 (:mod:`onnxshrink.packing.materialize`).
``"auto"`` is native for layers of at least ``NATIVE_MIN_ELEMENTS`` weights,
except that for layers below ``NATIVE_FAST_ELEMENTS``, smallest first, as long
as the model's weights in memory stay within ``AUTO_MEMORY_SHARE`` of their
float32 bytes (or of its original's, which ``shrink`` records:
``REFERENCE_KEY``), 4-bit codes in kernel blocks under ``WIDE_BELOW_BLOCK``
first run on the 8-bit kernel, then such layers run as float32; it expands the
remaining weight-only weights (Conv, smaller layers, shapes the kernels
refuse) to float32, keeps static int8 QDQ as packed for onnxruntime's integer
kernels, and runs unmasked attention heads as one MultiHeadAttention node
(:mod:`onnxshrink.packing.attention_fusion`): low-bit memory, and the fastest
form measured per layer size (docs/speed.md). Every choice is a function of
the model's shapes and that record, so the same packed model always loads the
same way.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from onnxshrink.errors import UsageError
from onnxshrink.packing.materialize import (AUTO_MAX_FLOAT_BYTES, constant_values, float_bytes, graphs,
                                            integer_kernel_inputs, materialize_float, name_reads, quantized_weights)
from onnxshrink.packing.attention_fusion import fuse_attention
from onnxshrink.packing.kernel_fusion import fuse_around_matmul_nbits, value_shapes
from onnxshrink.packing.native import LayerForm, kernel_block, to_native

MATERIALIZE_MODES = ("auto", "native", "float", "qdq")
# materialize="auto" runs layers with fewer weights than this as float32: at
# batch 1 MatMulNBits' fixed cost per call (about 1 us on the bench machine) is
# more than a 64x64 layer's whole fp32 product, and its float weights take <= 16 KB.
NATIVE_MIN_ELEMENTS = 4096
# Below this many weights MatMulNBits ran slower than a float32 MatMul at 1-48 rows
# (1.1-2.1x: 64x64 to 128x128, any width, block or accuracy level; 0.6-1.1x at 256x256;
# interleaved, 1 thread, AMD EPYC Zen 4) ...
NATIVE_FAST_ELEMENTS = 32768
# ... so "auto" runs such layers as float32 while the model's weights in memory (native,
# float and static codes together) stay within this share of their float32 bytes, or of
# the float32 bytes of the model it was made from when it records them (REFERENCE_KEY).
AUTO_MEMORY_SHARE = 1 / 3
# metadata_props key: the float32 bytes of the weights of the model ``shrink`` started
# from. Issue 17 bounds memory against that model; a pruned output's own float32 bytes are
# fewer (digits_mlp pruned: 0.55x), so a third of them would keep a layer on the low-bit
# kernel that the bound leaves room to run as float32.
REFERENCE_KEY = "onnxshrink.reference_float32_bytes"
# MatMulNBits' 4-bit kernel with blocks under this many rows of K (K = 64, or scales in
# blocks of 32/64) cost +1.5 to +2.7 us a call at 8 rows where the 8-bit kernel on the
# same codes cost +1.0 to +1.3 (64x64, 64x128, 64x192; at blocks of 128 both +1.0; at 1
# row both +0.4): "auto" widens those codes first while the memory share allows.
WIDE_BELOW_BLOCK = 128


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
        shapes = value_shapes(model) if census else {}
        keep, wide = _auto_plan(model) if mode == "auto" else ({}, frozenset())
        done, why = to_native(model, min_elements=NATIVE_MIN_ELEMENTS if mode == "auto" else 0, keep=keep, wide=wide)
        forms.update((f.weight, f) for f in done)
        if done:
            fuse_around_matmul_nbits(model, shapes)
        if mode == "auto":
            fuse_attention(model, shapes)
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


def float32_weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of ``model``'s weights with every quantized one as float32 (the
    others as they are): what its weights take in memory unquantized."""
    from onnxshrink.model import data_bytes

    reads = name_reads(model)
    codes = expanded = 0
    for graph in graphs(model.graph):
        for q, _ in quantized_weights(graph, reads, weight_only=False):
            count = int(np.prod(q.dims, dtype=np.int64))
            codes += (count + 1) // 2 if q.data_type in (TensorProto.INT4, TensorProto.UINT4) else count
            expanded += 4 * count
    return data_bytes(model) - codes + expanded


def record_reference(model: onnx.ModelProto, reference: onnx.ModelProto) -> None:
    """Record in ``model``'s metadata (in place) the float32 bytes of
    ``reference``'s weights, the model it is made from, for ``"auto"``'s memory
    share; a larger figure recorded before (a reference's own reference) stays."""
    value = max(float32_weight_bytes(reference), recorded_reference(reference), recorded_reference(model))
    kept = [p for p in model.metadata_props if p.key != REFERENCE_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=REFERENCE_KEY, value=str(value))


def recorded_reference(model: onnx.ModelProto) -> int:
    """The float32 bytes :func:`record_reference` recorded (0: none, or not a count)."""
    value = next((p.value for p in model.metadata_props if p.key == REFERENCE_KEY), "")
    return int(value) if value.isascii() and value.isdigit() and len(value) < 19 else 0  # "²" is a digit to isdigit


def _auto_plan(model: onnx.ModelProto) -> tuple[dict[str, str], frozenset[str]]:
    """Which weight-only MatMul/Gemm weights ``"auto"`` runs faster than on the
    4-bit kernel, while the weights in memory stay within ``AUTO_MEMORY_SHARE``
    of their float32 bytes (codes and scales as they are, float32 for the others):
    first, smallest first, 4-bit weights of ``NATIVE_MIN_ELEMENTS`` to
    ``NATIVE_FAST_ELEMENTS`` whose kernel block would be under
    ``WIDE_BELOW_BLOCK`` go on the 8-bit kernel (twice their code bytes); then
    weights of ``NATIVE_MIN_ELEMENTS`` to ``NATIVE_FAST_ELEMENTS``, smallest first,
    run as float32. The budget is a share of the larger of the weights' float32
    bytes and those of the model ``model`` was made from (:data:`REFERENCE_KEY`).
    Returns the float32 ones (by DequantizeLinear output name, with the reason)
    and the 8-bit ones."""
    from onnxshrink.model import data_bytes

    reads = name_reads(model)
    layers: list[tuple[int, str, int, int]] = []  # (weights, name, code bytes, kernel block or 0: not 4-bit)
    for depth, graph in enumerate(graphs(model.graph)):  # the main graph first: subgraphs' layers stay as they are
        readers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        weight_only = {q.name for q, _ in quantized_weights(graph, reads, weight_only=True)}
        for q, nodes in quantized_weights(graph, reads, weight_only=False):
            count = int(np.prod(q.dims, dtype=np.int64))
            four = q.data_type in (TensorProto.INT4, TensorProto.UINT4)
            size = (count + 1) // 2 if four else count
            users = readers.get(nodes[0].output[0], []) if len(nodes) == 1 else []
            if q.name in weight_only and depth == 0 and users and count >= NATIVE_MIN_ELEMENTS \
                    and {n.op_type for n in users} <= {"MatMul", "Gemm"} and len(q.dims) == 2:
                block = _kernel_block(q, nodes[0], users) if four else 0
                layers.append((count, nodes[0].output[0], size, block))
    total = data_bytes(model)
    own = float32_weight_bytes(model)
    reference = recorded_reference(model)
    budget = AUTO_MEMORY_SHARE * max(own, reference)
    of = "the original model's float32 weight bytes" if reference > own else "their float32 bytes"
    # Now: the weights below NATIVE_MIN_ELEMENTS and the other weight-only ones load as float32 anyway;
    # counting them as codes makes the estimate low by their few bytes.
    in_memory = total
    held = {name: size for _, name, size, _ in layers}
    wide: set[str] = set()
    for count, name, size, block in sorted(layers):
        if not (0 < block < WIDE_BELOW_BLOCK and count < NATIVE_FAST_ELEMENTS):
            continue
        if in_memory + size > budget:
            break
        in_memory += size
        held[name] = 2 * size
        wide.add(name)
    chosen: dict[str, str] = {}
    for count, name, _, _ in sorted(layers):
        if count >= NATIVE_FAST_ELEMENTS or in_memory - held[name] + 4 * count > budget:
            break
        in_memory += 4 * count - held[name]
        wide.discard(name)
        chosen[name] = (f"{count} weights: float32 runs faster than the low-bit kernel at this size, and the "
                        f"weights stay within {AUTO_MEMORY_SHARE:.2f} of {of}")
    return chosen, frozenset(wide)


def _kernel_block(q: onnx.TensorProto, dq: onnx.NodeProto, users: list[onnx.NodeProto]) -> int:
    """The MatMulNBits block ``q`` would get (0 when its readers disagree on its layout)."""
    k_axes = {1 if n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute) else 0 for n in users}
    if len(k_axes) != 1:
        return 0
    dq_block = next((a.i for a in dq.attribute if a.name == "block_size"), 0)
    return kernel_block(int(q.dims[k_axes.pop()]), int(dq_block))


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
