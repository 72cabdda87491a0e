"""Weight-only quantized layers on onnxruntime's low-bit kernels (``materialize="native"``).

A weight-only quantized weight is integer codes behind a DequantizeLinear node
(:mod:`onnxshrink.lowbit`). onnxruntime would dequantize it on every run, or
fuse it on its own terms; this pass rewrites it, at load time, into the
contrib operators that compute on the codes directly:

* ``DequantizeLinear(W_q) -> MatMul`` (weight as input B) and ``-> Gemm``
  (``alpha=1``, no ``transA``, bias a constant ``[N]`` vector with ``beta=1``)
  become one ``com.microsoft.MatMulNBits``: codes shifted to unsigned
  (``u = q + 2^(bits-1)``, so the operator's default zero point restores
  ``q``) and packed along K (low bits first), scales and zero points as
  ``(N, k_blocks)``. int4/uint4 codes (our 4-, 3- and 2-bit widths) run as
  ``bits=4``, int8/uint8 as ``bits=8``.
* ``DequantizeLinear(T_q) -> Gather`` (axis 0, a 2-D table) becomes
  ``com.microsoft.GatherBlockQuantized`` on the same int4 codes (int8 codes
  shifted to uint8), blocks along the row.

MatMulNBits blocks run along K and must be a power of two >= 16. A per-output-
channel (or per-tensor) scale becomes the same scale repeated over every
block of that channel (``PER_CHANNEL_BLOCK`` wide; K is padded with the zero
point's code, which dequantizes to exactly 0). A scale block of ``b`` along K
becomes blocks of the largest power of two dividing ``b``, each holding its
block's scale. So every weight the kernel sees is ``(q - zero_point) * scale``
exactly as DequantizeLinear computes it; only the arithmetic after that
differs (see ``ACCURACY_LEVEL``). Shapes the operators cannot express (K-axis
per-channel scales, blocks not a multiple of 16, float16 scales, a weight also
read elsewhere) are left alone, with the reason.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxshrink.packing.materialize import constant_values, graphs, name_reads, quantized_weights, remove_unread

MS_DOMAIN = "com.microsoft"
# MatMulNBits' accuracy_level. 4: A is quantized to int8 per block of K (scale
# max|a|/127, round to nearest) and multiplied in integers; onnxruntime's fast
# kernels at both widths (level 0, float32 compute, matches MatMul on the
# dequantized weight to float32 summation order but runs 1.1-1.2x fp32 on a
# BERT layer at 4 bits and dequantizes the whole weight on every run at 8 bits).
ACCURACY_LEVEL = 4
# The kernel block a per-channel or per-tensor scale is repeated over (at level 4
# also the block A is quantized in): 128 ran MiniLM 0.70x fp32 at 4 bits where
# 32 ran 0.95x (scripts/bench_speed.py, docs/speed.md).
PER_CHANNEL_BLOCK = 128
_BITS = {TensorProto.INT4: (4, True), TensorProto.UINT4: (4, False),
         TensorProto.INT8: (8, True), TensorProto.UINT8: (8, False)}
_DEFAULT_DOMAINS = ("", "ai.onnx")
_MAX_BLOCK = 256  # the largest block onnxruntime accepts at every width


@dataclasses.dataclass(frozen=True)
class LayerForm:
    """How one quantized weight runs: ``form`` is "matmulnbits",
    "gather_block_quantized", "float" (expanded at load), or "qdq" (integer
    codes + DequantizeLinear, as packed); ``note`` says why, or what was padded."""

    weight: str
    op_types: tuple[str, ...]
    form: str
    bits: int | None = None
    block_size: int | None = None
    accuracy_level: int | None = None
    note: str = ""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["op_types"] = list(self.op_types)
        return d


@dataclasses.dataclass
class _Weight:
    """One DequantizeLinear of an integer constant and the nodes reading its output."""

    graph: onnx.GraphProto
    dq: onnx.NodeProto
    codes: TensorProto
    consumers: list[onnx.NodeProto]
    replaced: set[str] = dataclasses.field(default_factory=set)  # names the rewrite stopped reading


def to_native(model: onnx.ModelProto, *, min_elements: int = 0, accuracy_level: int = ACCURACY_LEVEL,
              per_channel_block: int = PER_CHANNEL_BLOCK, keep: dict[str, str] | None = None,
              wide: frozenset[str] = frozenset()) -> tuple[list[LayerForm], dict[str, str]]:
    """Rewrite, in place, every weight-only quantized MatMul/Gemm/Gather of at
    least ``min_elements`` weights that onnxruntime's low-bit kernels can run,
    but those ``keep`` names (DequantizeLinear outputs, with the reason); the
    4-bit MatMul/Gemm weights named in ``wide`` run on the 8-bit kernel (the
    same codes and scales, twice the bytes).
    Returns the forms of the rewritten weights and, for weight-only weights
    left as they were, the reason by weight name. Weights of static QDQ
    patterns (a consumer also reads a dequantized activation) are not touched
    and not listed."""
    reads = name_reads(model)
    names = _Names(model)
    done: list[LayerForm] = []
    skipped: dict[str, str] = {}
    drop: set[str] = set()
    for graph in list(graphs(model.graph)):
        for w in _weights(graph, reads):
            out = w.dq.output[0]
            size = int(np.prod(w.codes.dims, dtype=np.int64))
            if keep and out in keep:
                skipped[out] = keep[out]
                continue
            if size < min_elements:
                skipped[out] = f"{size} weights: under {min_elements}, the kernel's fixed cost outweighs its saving"
                continue
            try:
                done.append(_rewrite(w, accuracy_level, per_channel_block, names, out in wide))
                drop.update(n for n in w.dq.input if n)
                drop.update(w.replaced)
            except _NotNative as e:
                skipped[out] = str(e)
            except (ValueError, TypeError, IndexError) as e:  # a malformed weight stays as it was packed
                skipped[out] = f"not rewritten ({type(e).__name__}: {' '.join(str(e).split())[:80]})"
    if done:
        remove_unread(model, drop)
        if not any(o.domain == MS_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return done, skipped


class _NotNative(Exception):
    """Why a weight stays as it is."""


class _Names:
    """Fresh value names, unique across the model."""

    def __init__(self, model: onnx.ModelProto):
        self.taken: set[str] = set()
        for g in graphs(model.graph):
            self.taken.update(t.name for t in g.initializer)
            self.taken.update(v.name for v in (*g.input, *g.output, *g.value_info))
            for node in g.node:
                self.taken.update(node.input)
                self.taken.update(node.output)

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name


def _weights(graph: onnx.GraphProto, reads: Counter) -> list[_Weight]:
    """Weight-only quantized weights of ``graph`` read by one DequantizeLinear
    whose output only nodes of this graph read."""
    found = []
    outputs = {o.name for o in graph.output}
    for q, nodes in quantized_weights(graph, reads, weight_only=True):
        if len(nodes) != 1 or q.data_type not in _BITS:
            continue
        dq = nodes[0]
        out = dq.output[0]
        consumers = [n for n in graph.node if out in n.input]
        if not consumers or out in outputs or reads[out] != sum(list(n.input).count(out) for n in consumers):
            continue
        found.append(_Weight(graph, dq, q, consumers))
    return found


def _rewrite(w: _Weight, level: int, per_channel_block: int, names: _Names, wide: bool = False) -> LayerForm:
    ops = tuple(sorted({n.op_type for n in w.consumers}))
    if any(n.domain not in _DEFAULT_DOMAINS for n in w.consumers):
        raise _NotNative("read by a non-ONNX-domain node")
    if ops == ("Gather",):
        return _to_gather(w, names)
    if set(ops) <= {"MatMul", "Gemm"}:
        return _to_matmul(w, ops, level, per_channel_block, names, wide)
    raise _NotNative(f"read by {'/'.join(ops)}: no onnxruntime low-bit kernel")


def _attr(node: onnx.NodeProto, name: str, default):
    a = next((a for a in node.attribute if a.name == name), None)
    return default if a is None else helper.get_attribute_value(a)


def _params(w: _Weight) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """(codes, scale, zero point as int32 of the scale's shape, axis, block) of the DequantizeLinear."""
    inits = {t.name: t for t in w.graph.initializer}
    scale_t = inits.get(w.dq.input[1])
    zp_name = w.dq.input[2] if len(w.dq.input) > 2 else ""
    zp_t = inits.get(zp_name) if zp_name else None
    if scale_t is None or scale_t.data_type != TensorProto.FLOAT or (zp_name and zp_t is None):
        raise _NotNative("scale is not a float32 initializer")
    if any(a.name not in ("axis", "block_size") for a in w.dq.attribute):
        raise _NotNative("DequantizeLinear attributes this pass does not know")
    q = numpy_helper.to_array(w.codes).astype(np.int32)
    if q.ndim != 2:
        raise _NotNative(f"{q.ndim}-D weight")
    scale = numpy_helper.to_array(scale_t)
    zp = numpy_helper.to_array(zp_t).astype(np.int32) if zp_t is not None else np.zeros(scale.shape, np.int32)
    if zp.shape != scale.shape or (zp_t is not None and zp_t.data_type != w.codes.data_type):
        raise _NotNative("zero point and scale shapes or types differ")
    axis = _attr(w.dq, "axis", 1)
    if not -2 <= axis < 2:
        raise _NotNative(f"axis {axis}")
    return q, scale, zp, axis % 2, _attr(w.dq, "block_size", 0)


def _block_along_k(dq_block: int) -> int:
    """The kernel block for a DequantizeLinear block of ``dq_block`` along K: the
    largest power of two dividing it (so no kernel block straddles two scales)."""
    b = dq_block & -dq_block
    if b < 16:
        raise _NotNative(f"scale blocks of {dq_block} along K: the kernels need a multiple of 16")
    return min(b, _MAX_BLOCK)


def kernel_block(k: int, dq_block: int, per_channel_block: int = PER_CHANNEL_BLOCK) -> int:
    """The MatMulNBits block a weight of ``k`` rows along K gets: for per-channel or
    per-tensor scales (``dq_block`` 0) the next power of two >= k up to
    ``per_channel_block``, else the largest power of two dividing ``dq_block``
    (0 when that is under 16: the kernels take no such block)."""
    if dq_block == 0:
        return min(max(16, 1 << (k - 1).bit_length()), per_channel_block)
    b = dq_block & -dq_block
    return min(b, _MAX_BLOCK) if b >= 16 else 0


def _per_block(values: np.ndarray, shape: tuple[int, int], k_axis: int, axis: int, dq_block: int, per_channel_block: int
               ) -> tuple[np.ndarray, int]:
    """``values`` (a DequantizeLinear scale or zero point for a weight of
    ``shape``) as one value per (output channel, kernel block): (N, k_blocks) and the block."""
    k, n = shape[k_axis], shape[1 - k_axis]
    if values.ndim == 0 or (values.size == 1 and dq_block == 0):
        block = kernel_block(k, 0, per_channel_block)
        return np.full((n, -(-k // block)), values.reshape(()), values.dtype), block
    if dq_block == 0 and axis != k_axis and values.shape == (n,):
        block = kernel_block(k, 0, per_channel_block)
        return np.repeat(values.reshape(n, 1), -(-k // block), axis=1), block
    if dq_block > 0 and axis == k_axis and values.ndim == 2:
        per_n = values if k_axis == 1 else values.T  # (N, ceil(K / dq_block))
        if per_n.shape != (n, -(-k // dq_block)):
            raise _NotNative("scale shape does not match the weight")
        block = _block_along_k(dq_block)
        return np.repeat(per_n, dq_block // block, axis=1)[:, :-(-k // block)], block
    raise _NotNative("per-input-channel scales: the kernels scale along the output channels")


def _pack_rows(u: np.ndarray, bits: int, block: int, pad: np.ndarray) -> np.ndarray:
    """(N, K) unsigned codes -> (N, k_blocks, block * bits / 8) uint8, packed
    along K low bits first; K is padded to whole blocks with ``pad`` (N,)."""
    n, k = u.shape
    kb = -(-k // block)
    full = np.repeat(pad.reshape(n, 1).astype(np.uint8), kb * block, axis=1)
    full[:, :k] = u
    per = 8 // bits
    parts = full.reshape(n, kb, block // per, per).astype(np.uint16)
    packed = np.zeros(parts.shape[:-1], np.uint16)
    for j in range(per):
        packed |= parts[..., j] << (bits * j)
    return packed.astype(np.uint8)


def _to_matmul(w: _Weight, ops: tuple[str, ...], level: int, per_channel_block: int,
               names: _Names, wide: bool = False) -> LayerForm:
    out = w.dq.output[0]
    k_axes = set()
    biases: list = []  # per consumer: None (MatMul) or the Gemm, then its bias
    for node in w.consumers:
        if len(node.input) < 2 or node.input[1] != out or node.input[0] == out:
            raise _NotNative(f"{node.op_type} reads the weight as its first input")
        if node.op_type == "MatMul":
            k_axes.add(0)
            biases.append(None)
            continue
        if _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "transA", 0):
            raise _NotNative("Gemm with alpha != 1 or transA")
        k_axes.add(1 if _attr(node, "transB", 0) else 0)
        biases.append(node)
    if len(k_axes) != 1:
        raise _NotNative("read with both layouts (transB 0 and 1)")
    k_axis = k_axes.pop()
    bits, signed = _BITS[w.codes.data_type]
    # 4-bit codes are 8-bit codes too: u = q + 128 (or q, with its zero points) dequantizes to the same weights.
    widened = wide and bits == 4
    bits = 8 if widened else bits
    q, scale, zp, axis, dq_block = _params(w)
    k, n = q.shape[k_axis], q.shape[1 - k_axis]
    biases = [None if node is None else _gemm_bias(w.graph, node, out, n) for node in biases]
    scales, block = _per_block(scale, q.shape, k_axis, axis, dq_block, per_channel_block)
    zps, _ = _per_block(zp, q.shape, k_axis, axis, dq_block, per_channel_block)
    offset = (1 << (bits - 1)) if signed else 0
    zpu = zps + offset  # (N, k_blocks), in [0, 2^bits)
    u = (q if k_axis == 1 else q.T) + offset
    b_name = names.fresh(f"{out}_nbits")
    s_name = names.fresh(f"{out}_nbits_scales")
    inits = [numpy_helper.from_array(_pack_rows(u.astype(np.uint8), bits, block, zpu[:, -1]), b_name),
             numpy_helper.from_array(np.ascontiguousarray(scales, dtype=np.float32), s_name)]
    inputs = [b_name, s_name]
    if not (zpu == 1 << (bits - 1)).all():  # the operator's default zero point
        z_name = names.fresh(f"{out}_nbits_zero_points")
        inits.append(numpy_helper.from_array(_pack_rows(zpu.astype(np.uint8), bits, 8 // bits, np.zeros(n))
                                             .reshape(n, -1), z_name))
        inputs.append(z_name)
    attrs = {"K": k, "N": n, "bits": bits, "block_size": block}
    if level:
        attrs["accuracy_level"] = level
    for node, bias in zip(w.consumers, biases):
        node_inputs = [node.input[0], *inputs]
        if bias is not None:
            bias_name = bias if isinstance(bias, str) else names.fresh(f"{node.output[0]}_bias")
            if not isinstance(bias, str):  # a [1, N] C, reshaped; the original goes if nothing else reads it
                inits.append(numpy_helper.from_array(bias, bias_name))
                w.replaced.add(node.input[2])
            node_inputs += [""] * (5 - len(node_inputs)) + [bias_name]
        new = helper.make_node("MatMulNBits", node_inputs, list(node.output), name=node.name, domain=MS_DOMAIN, **attrs)
        node.CopyFrom(new)
    w.graph.initializer.extend(inits)
    _remove_node(w.graph, w.dq)
    padded = f"; K {k} padded to {-(-k // block) * block}" if k % block else ""
    codes = "; 4-bit codes on the 8-bit kernel (faster below blocks of 128)" if widened else ""
    return LayerForm(out, ops, "matmulnbits", bits, block, level,
                     f"{'per-channel' if dq_block == 0 else f'block {dq_block}'} scales{padded}{codes}")


def _gemm_bias(graph: onnx.GraphProto, node: onnx.NodeProto, weight: str, n: int) -> str | np.ndarray | None:
    """Gemm's C as the kernel's [N] bias: its name when it is one already, else
    the values reshaped to [N]; None without one."""
    if len(node.input) < 3 or not node.input[2]:
        return None
    if node.input[2] == weight or _attr(node, "beta", 1.0) != 1.0:
        raise _NotNative("Gemm with beta != 1")
    t = {t.name: t for t in graph.initializer}.get(node.input[2]) or constant_values(graph).get(node.input[2])
    if t is None or t.data_type != TensorProto.FLOAT or list(t.dims) not in ([n], [1, n]):
        raise _NotNative("Gemm bias is not a constant float32 [N] vector")
    return node.input[2] if len(t.dims) == 1 else numpy_helper.to_array(t).reshape(-1)


def _to_gather(w: _Weight, names: _Names) -> LayerForm:
    out = w.dq.output[0]
    for node in w.consumers:
        if node.input[0] != out or out in node.input[1:] or _attr(node, "axis", 0) not in (0, -2):
            raise _NotNative("Gather on axis 1 or of the weight as indices")
    bits, signed = _BITS[w.codes.data_type]
    q, scale, zp, axis, dq_block = _params(w)
    # Rows are gathered: blocks run along the row (axis 1), one scale per (row, block).
    scales, block = _per_block(scale, q.shape, 1, axis, dq_block, _MAX_BLOCK)
    zps, _ = _per_block(zp, q.shape, 1, axis, dq_block, _MAX_BLOCK)
    if scales.shape[0] != q.shape[0]:
        raise _NotNative("scale shape does not match the table")
    d_name = names.fresh(f"{out}_blockq")
    s_name = names.fresh(f"{out}_blockq_scales")
    inits = [numpy_helper.from_array(np.ascontiguousarray(scales, dtype=np.float32), s_name)]
    zero_name = ""
    if bits == 4:
        # int4/uint4 tables go as they are (default zero point 0).
        data = onnx.TensorProto()
        data.CopyFrom(w.codes)
        data.name = d_name
        if (zps != 0).any():
            zero_name = names.fresh(f"{out}_blockq_zero_points")
            inits.append(helper.make_tensor(zero_name, w.codes.data_type, zps.shape, zps.reshape(-1).tolist()))
    else:
        offset = 128 if signed else 0  # uint8 tables (default zero point 128)
        data = numpy_helper.from_array((q + offset).astype(np.uint8), d_name)
        if (zps + offset != 128).any():
            zero_name = names.fresh(f"{out}_blockq_zero_points")
            inits.append(numpy_helper.from_array((zps + offset).astype(np.uint8), zero_name))
    inits.insert(0, data)
    for node in w.consumers:
        node_inputs = [d_name, node.input[1], s_name] + ([zero_name] if zero_name else [])
        new = helper.make_node("GatherBlockQuantized", node_inputs, list(node.output), name=node.name,
                               domain=MS_DOMAIN, bits=bits, block_size=block, gather_axis=0, quantize_axis=1)
        node.CopyFrom(new)
    w.graph.initializer.extend(inits)
    _remove_node(w.graph, w.dq)
    return LayerForm(out, ("Gather",), "gather_block_quantized", bits, block, None,
                     f"{'per-row' if dq_block == 0 else f'block {dq_block}'} scales; out-of-range indices give zeros")


def _remove_node(graph: onnx.GraphProto, dq: onnx.NodeProto) -> None:
    out = dq.output[0]
    at = next(i for i, n in enumerate(graph.node) if n.op_type == "DequantizeLinear" and n.output and n.output[0] == out)
    del graph.node[at]
