"""Attention heads in one node (part of ``materialize="auto"``).

An exported multi-head attention without a mask is a dozen small nodes per
layer::

    q = Transpose(Reshape(q3, [B, S, H, d]), [0, 2, 1, 3])
    k = Transpose(Reshape(k3, [B, L, H, d]), [0, 2, 3, 1])
    v = Transpose(Reshape(v3, [B, L, H, d]), [0, 2, 1, 3])
    y = Transpose(MatMul(Softmax(MatMul(q, k) * c, axis=-1), v), [0, 2, 1, 3])

(``* c`` may be ``/ c`` or absent), read only by Reshapes to ``[..., H*d]``.
At batch 1 on a small model their per-node overhead costs more than the
arithmetic, so this pass replaces them with one
``com.microsoft.MultiHeadAttention(q3, k3, v3, num_heads=H, scale=c)``, whose
``[B, S, H*d]`` output those Reshapes read under the old name. The
arithmetic is the same up to float32 rounding (onnxruntime's softmax and
summation order). On digits_transformer's ``shrink --weight-bits 4,8``
output it removed 22 nodes, 1.12x -> 1.02-1.05x fp32's latency (the fp32
model itself, fused the same way, ran 0.93x; interleaved, 1 thread, batch 1,
AMD EPYC Zen 4). Anything else (a mask, a bias, other layouts, a value also
read elsewhere) is left alone.
"""

from __future__ import annotations

import onnx
from onnx import helper

from onnxshrink.packing.kernel_fusion import Shapes, _attr, _const, _graph_outputs, _readers, _remove

MS_DOMAIN = "com.microsoft"
_HEADS_FIRST = [0, 2, 1, 3]
_KEYS_TRANSPOSED = [0, 2, 3, 1]


def fuse_attention(model: onnx.ModelProto, shapes: Shapes) -> int:
    """Replace each unmasked multi-head attention of the main graph (the
    pattern above; ``shapes`` must show its q, k, v inputs as 3-D) with one
    MultiHeadAttention node, in place. Returns how many were fused."""
    graph = model.graph
    nodes = list(graph.node)
    readers, outputs = _readers(nodes), _graph_outputs(graph)
    producers = {o: node for node in nodes for o in node.output}
    position = {id(node): index for index, node in enumerate(nodes)}
    drop: set[int] = set()
    fused: list[tuple[int, onnx.NodeProto]] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    default_axis = -1 if opset >= 13 else 1  # before opset 13 Softmax's axis defaulted to 1
    for softmax in nodes:
        if softmax.op_type != "Softmax" or softmax.domain not in ("", "ai.onnx") \
                or _attr(softmax, "axis", default_axis) not in (-1, 3):
            continue
        match = _match(graph, softmax, producers, readers, outputs, shapes)
        if match is None or drop & {id(n) for n in match[0]}:
            continue
        pattern, (q3, k3, v3), heads, scale, out = match
        drop.update(id(n) for n in pattern)
        node = helper.make_node("MultiHeadAttention", [q3, k3, v3], [out], name=f"{softmax.name or out}/attention",
                                domain=MS_DOMAIN, num_heads=heads, scale=scale)
        fused.append((max(position[id(n)] for n in pattern), node))  # after the last of them: q3, k3, v3 exist
    if not fused:
        return 0
    at = {index: node for index, node in fused}
    ordered = []
    for index, node in enumerate(nodes):
        ordered.append(node)
        if index in at:
            ordered.append(at[index])
    # Constant nodes only the fused nodes read (the scale, the head shapes) go with them.
    reads = {name for node in ordered if id(node) not in drop for name in node.input} | outputs
    drop.update(id(node) for node in ordered if node.op_type == "Constant" and not set(node.output) & reads)
    _remove(graph, ordered, drop)
    stale = {node.output[0] for _, node in fused}  # their shape changed from 4-D to 3-D
    kept = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(fused)


def _match(graph, softmax, producers, readers, outputs, shapes):
    """(pattern nodes, (q3, k3, v3), heads, scale, output name) or None."""

    def only(name):
        found = readers.get(name, [])
        return found[0] if len(found) == 1 and name not in outputs else None

    pattern = [softmax]
    scores, scale = softmax.input[0], 1.0
    pre = producers.get(scores)
    if pre is not None and pre.op_type in ("Mul", "Div") and pre.domain in ("", "ai.onnx") and only(scores) is softmax:
        c = next(((i, _const(graph, x)) for i, x in enumerate(pre.input) if _const(graph, x) is not None), None)
        if c is not None and c[1].size == 1 and (pre.op_type == "Mul" or c[0] == 1):
            value = float(c[1].reshape(()))
            if value != 0:
                scale = value if pre.op_type == "Mul" else 1.0 / value
                scores = pre.input[1 - c[0]]
                pattern.append(pre)
    first = producers.get(scores)
    if first is None or first.op_type != "MatMul" or only(scores) is not (pattern[-1]):
        return None
    pattern.append(first)
    second = only(softmax.output[0])
    if second is None or second.op_type != "MatMul" or second.input[0] != softmax.output[0]:
        return None
    back = only(second.output[0])
    if back is None or back.op_type != "Transpose" or list(_attr(back, "perm", [])) != _HEADS_FIRST:
        return None
    pattern += [second, back]
    q = _heads(graph, first.input[0], _HEADS_FIRST, producers, only, shapes)
    k = _heads(graph, first.input[1], _KEYS_TRANSPOSED, producers, only, shapes)
    v = _heads(graph, second.input[1], _HEADS_FIRST, producers, only, shapes)
    if q is None or k is None or v is None or not (q[2] == k[2] == v[2]):
        return None
    heads, size = q[2]
    out = back.output[0]
    if out in outputs or not readers.get(out):
        return None
    for reader in readers[out]:  # each must read [B, S, H, d] and [B, S, H*d] alike
        target = _const(graph, reader.input[1]) if reader.op_type == "Reshape" and len(reader.input) == 2 else None
        if target is None or reader.input[0] != out or _attr(reader, "allowzero", 0) \
                or int(target.reshape(-1)[-1]) != heads * size or 0 in target.reshape(-1).tolist()[2:]:
            return None
    for x in (q, k, v):
        pattern += x[1]
    return pattern, (q[0], k[0], v[0]), heads, scale, out


def _heads(graph, name, perm, producers, only, shapes):
    """(x3, [Reshape, Transpose], (heads, head size)) when ``name`` is
    Transpose(Reshape(x3, [B, S, H, d]), perm) of a 3-D ``x3`` of H*d columns."""
    transpose = producers.get(name)
    if transpose is None or transpose.op_type != "Transpose" or list(_attr(transpose, "perm", [])) != perm \
            or only(name) is None:
        return None
    reshape = producers.get(transpose.input[0])
    if reshape is None or reshape.op_type != "Reshape" or only(transpose.input[0]) is not transpose \
            or _attr(reshape, "allowzero", 0) or len(reshape.input) != 2:
        return None
    target = _const(graph, reshape.input[1])
    x = reshape.input[0]
    dims = shapes.get(x)
    if target is None or target.size != 4 or dims is None or len(dims) != 3:
        return None
    b, s, heads, size = (int(t) for t in target.reshape(-1))
    if heads <= 0 or size <= 0 or (dims[2] is not None and dims[2] != heads * size) or dims[2] is None:
        return None
    # [B, S] must come through unchanged: 0 copies the dim, one -1 is inferred from the rest
    if not ((b in (0, -1) and (s == 0 or (s > 0 and s == dims[1]))) or (b == 0 and s == -1)):
        return None
    return x, [reshape, transpose], (heads, size)
