"""Getting a float model ready for QDQ: checks and exact pre-passes.

* refuse fp16/bf16 models (their weights and activations are not float32);
* upgrade opsets below 13 (per-channel QuantizeLinear needs 13) with
  onnx.version_converter, or refuse with the reason;
* constant-fold with onnxsim when a layer weight is computed at run time
  (ConstantOfShape, shape arithmetic), so it can be quantized;
* fold BatchNormalization into the Conv before it, and a constant bias Add
  into the MatMul before it (as Gemm, for 2-D inputs), so that the pair runs
  as one integer kernel with an int32 bias;
* a spatial ReduceMean becomes GlobalAveragePool, which has one.

Each pass works in place on the main graph; subgraphs are left alone.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxshrink.errors import UnsupportedModelError
from onnxshrink.model import INLINE_LIMIT_BYTES, consumers, data_bytes, has_mapped, iter_graphs, materialized, opset_version, tensor_array
from onnxshrink.simplify import simplify

MIN_OPSET = 13
FLOAT16_TYPES = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
WEIGHT_INPUTS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


def check_float32(model: onnx.ModelProto, name: str) -> None:
    """Refuse models computing in fp16/bf16: quantizing them needs an fp32 original."""
    typed = list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)
    half = [vi.name for vi in typed if vi.type.tensor_type.elem_type in FLOAT16_TYPES]
    half += [t.name for t in model.graph.initializer if t.data_type in FLOAT16_TYPES]
    if half:
        raise UnsupportedModelError(
            f"{name}: tensor '{half[0]}' is float16; int8 quantization starts from an fp32 model "
            "(export it in fp32, or convert it with onnxconverter_common.float16's inverse first)"
        )


def upgrade_opset(model: onnx.ModelProto, name: str) -> tuple[onnx.ModelProto, int | None]:
    """The model at opset >= 13 (converted when below), and the opset it came with if converted."""
    version = opset_version(model)
    if version >= MIN_OPSET:
        return model, None
    try:
        converted = onnx.version_converter.convert_version(model, MIN_OPSET)
        # The converter keeps the IR version; IR < 4 would require every new
        # initializer (scales, zero points) to be listed as a graph input.
        converted.ir_version = max(converted.ir_version,
                                   onnx.helper.find_min_ir_version_for(list(converted.opset_import)))
        onnx.checker.check_model(converted)
    except Exception as e:  # the converter raises bare RuntimeErrors/ValidationErrors
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise UnsupportedModelError(
            f"{name}: opset {version} is below {MIN_OPSET} and onnx.version_converter cannot upgrade it ({reason}); "
            f"re-export the model with opset >= {MIN_OPSET}"
        ) from None
    return converted, version


def computable_from_constants(graph: onnx.GraphProto) -> set[str]:
    """Names of values computable from constants alone (no graph input involved)."""
    known = {t.name for t in graph.initializer} | {""}
    for node in graph.node:
        has_subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        if node.op_type.startswith("Random") or has_subgraph:
            continue
        if all(i in known for i in node.input):
            known.update(node.output)
    return known


def has_computed_weights(model: onnx.ModelProto) -> bool:
    """True when some Conv/Gemm/MatMul weight is computed from constants at run time."""
    graph = model.graph
    stored = {t.name for t in graph.initializer}
    stored |= {n.output[0] for n in graph.node if n.op_type == "Constant"}
    computable = computable_from_constants(graph)
    for node in graph.node:
        index = WEIGHT_INPUTS.get(node.op_type)
        if index is not None and len(node.input) > index:
            name = node.input[index]
            if name in computable and name not in stored:
                return True
    return False


def fold_constants_if_needed(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None, dict[str, str]]:
    """onnxsim's constant folding when weights are computed; the reason it
    failed otherwise; and what the tensors and nodes onnxsim made came from
    (their names are the input model's, :mod:`onnxshrink.provenance`)."""
    if not has_computed_weights(model):
        return model, None, {}
    result = simplify(materialized(model) if has_mapped(model) and data_bytes(model) <= INLINE_LIMIT_BYTES else model)
    return (result.model if result.modified else model), result.fallback_reason, result.names.origins


def constant_tensor(graph: onnx.GraphProto, name: str) -> onnx.TensorProto | None:
    """The initializer or Constant ``value`` tensor named ``name`` in ``graph``."""
    for t in graph.initializer:
        if t.name == name:
            return t
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    return a.t
    return None


def constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    tensor = constant_tensor(graph, name)
    return None if tensor is None else tensor_array(tensor)


def node_attribute(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _unique(graph: onnx.GraphProto, base: str) -> str:
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Names read by nodes inside subgraphs of ``graph`` (outer-scope values among them)."""
    names: set[str] = set()
    for sub, depth in iter_graphs(graph):
        if depth:
            for node in sub.node:
                names.update(node.input)
    return names


def _sole_reader(graph: onnx.GraphProto, value: str, users: dict) -> onnx.NodeProto | None:
    """The one main-graph node reading ``value``, if nothing else (graph outputs,
    subgraphs) does."""
    readers = users.get(value, [])
    if len(readers) != 1 or value in {o.name for o in graph.output} or value in subgraph_reads(graph):
        return None
    return readers[0][0]


def fold_batch_norms(graph: onnx.GraphProto) -> int:
    """Fold each BatchNormalization that alone reads a Conv's output into that Conv."""
    users = consumers(graph)
    folded = 0
    for conv in list(graph.node):
        if conv.op_type != "Conv" or len(conv.input) < 2:
            continue
        bn = _sole_reader(graph, conv.output[0], users)
        if bn is None or bn.op_type != "BatchNormalization" or len(bn.output) != 1 or bn.input[0] != conv.output[0]:
            continue
        weight = constant_value(graph, conv.input[1])
        bias = constant_value(graph, conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        params = [constant_value(graph, n) for n in bn.input[1:5]]
        if weight is None or any(p is None for p in params) or (len(conv.input) > 2 and conv.input[2] and bias is None):
            continue
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        factor = gamma / np.sqrt(var + float(node_attribute(bn, "epsilon", 1e-5)))
        new_w = (weight.astype(np.float64) * factor.reshape([-1] + [1] * (weight.ndim - 1))).astype(np.float32)
        base = bias.astype(np.float64) if bias is not None else np.zeros_like(mean)
        new_b = ((base - mean) * factor + beta).astype(np.float32)
        w_name = _unique(graph, f"{conv.input[1]}_bn_folded")
        graph.initializer.append(numpy_helper.from_array(new_w, w_name))
        b_name = _unique(graph, f"{conv.name or conv.output[0]}_bias_bn_folded")
        graph.initializer.append(numpy_helper.from_array(new_b, b_name))
        del conv.input[1:]
        conv.input.extend([w_name, b_name])
        conv.output[0] = bn.output[0]
        graph.node.remove(bn)
        folded += 1
    return folded


def remove_identities(model: onnx.ModelProto) -> int:
    """Drop main-graph Identity nodes (readers use the source directly), except
    where the output is a graph output or is read inside a subgraph."""
    graph = model.graph
    protected = {o.name for o in graph.output} | subgraph_reads(graph)
    renames = {}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.output[0] not in protected:
            renames[node.output[0]] = renames.get(node.input[0], node.input[0])
            continue
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        keep.append(node)
    if renames:
        del graph.node[:]
        graph.node.extend(keep)
    return len(renames)


def fold_conv_bias_adds(graph: onnx.GraphProto) -> int:
    """Conv followed only by Add(constant per-channel vector) becomes one Conv with
    that bias (exporters such as paddle2onnx write the bias as a separate Add)."""
    users = consumers(graph)
    folded = 0
    for conv in list(graph.node):
        if conv.op_type != "Conv" or len(conv.input) < 2:
            continue
        add = _sole_reader(graph, conv.output[0], users)
        if add is None or add.op_type != "Add":
            continue
        weight = constant_value(graph, conv.input[1])
        other = add.input[1] if add.input[0] == conv.output[0] else add.input[0]
        value = constant_value(graph, other)
        if weight is None or value is None or value.dtype != np.float32:
            continue
        channels = weight.shape[0]
        rank = weight.ndim  # the Conv output has the weight's rank
        shape = (1,) * (rank - value.ndim) + tuple(value.shape)
        if len(shape) != rank or shape[0] != 1 or shape[1] not in (1, channels) or any(d != 1 for d in shape[2:]):
            continue
        extra = np.broadcast_to(value.reshape(-1), (channels,)).astype(np.float64)
        old = constant_value(graph, conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(channels)
        if old is None:
            continue
        b_name = _unique(graph, f"{conv.name or conv.output[0]}_bias_folded")
        graph.initializer.append(numpy_helper.from_array((old.astype(np.float64) + extra).astype(np.float32), b_name))
        del conv.input[2:]
        conv.input.append(b_name)
        conv.output[0] = add.output[0]
        graph.node.remove(add)
        users = consumers(graph)
        folded += 1
    return folded


def matmul_add_to_gemm(graph: onnx.GraphProto, ranks: dict[str, int]) -> int:
    """MatMul(A 2-D, W const 2-D) followed only by Add(const bias [N]) becomes one Gemm."""
    users = consumers(graph)
    fused = 0
    for mm in list(graph.node):
        if mm.op_type != "MatMul" or ranks.get(mm.input[0]) != 2:
            continue
        weight = constant_tensor(graph, mm.input[1])  # only its shape: the data is not read
        add = _sole_reader(graph, mm.output[0], users)
        if weight is None or len(weight.dims) != 2 or add is None or add.op_type != "Add":
            continue
        columns = int(weight.dims[1])
        other = add.input[1] if add.input[0] == mm.output[0] else add.input[0]
        bias = constant_value(graph, other)
        if bias is None or bias.size not in (1, columns) or bias.ndim > 2 or (bias.ndim == 2 and bias.shape[0] != 1):
            continue
        b_name = _unique(graph, f"{other}_gemm_bias")
        graph.initializer.append(numpy_helper.from_array(
            np.broadcast_to(bias.reshape(-1), (columns,)).astype(np.float32).copy(), b_name))
        gemm = helper.make_node("Gemm", [mm.input[0], mm.input[1], b_name], [add.output[0]], name=mm.name or add.name)
        index = list(graph.node).index(mm)
        graph.node.remove(mm)
        graph.node.remove(add)
        graph.node.insert(index, gemm)
        fused += 1
    return fused


def spatial_means_to_global_pool(graph: onnx.GraphProto, ranks: dict[str, int]) -> int:
    """ReduceMean over the spatial axes of a 4-D tensor becomes GlobalAveragePool
    (+ Flatten when keepdims=0): the same values, and an op with an integer kernel."""
    rewritten = 0
    for index, node in enumerate(list(graph.node)):
        if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx") or ranks.get(node.input[0]) != 4:
            continue
        axes = node_attribute(node, "axes", None)
        if axes is None and len(node.input) > 1 and node.input[1]:
            value = constant_value(graph, node.input[1])
            axes = None if value is None else value.reshape(-1).tolist()
        if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3]:
            continue
        keepdims = int(node_attribute(node, "keepdims", 1))
        position = list(graph.node).index(node)
        graph.node.remove(node)
        if keepdims:
            new = [helper.make_node("GlobalAveragePool", [node.input[0]], [node.output[0]], name=node.name)]
        else:
            pooled = _unique(graph, f"{node.output[0]}_pooled")
            new = [helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=node.name),
                   helper.make_node("Flatten", [pooled], [node.output[0]], axis=1, name=f"{node.name}_flatten")]
        for k, n in enumerate(new):
            graph.node.insert(position + k, n)
        rewritten += 1
    return rewritten


def value_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of every value shape inference can type (symbolic dims are fine)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(_without_weight_data(model))
    except Exception:  # shape inference is a hint here; without it nothing is fused
        return {}
    ranks = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.tensor_type.HasField("shape"):
            ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    return ranks


def remove_unused_initializers(model: onnx.ModelProto) -> None:
    """Drop main-graph initializers nothing reads (subgraphs' outer-scope reads count),
    and their graph-input entries (models before IR 4 list initializers as inputs)."""
    used = {o.name for o in model.graph.output}
    for graph, _ in iter_graphs(model.graph):
        for node in graph.node:
            used.update(node.input)
    dropped = {t.name for t in model.graph.initializer if t.name not in used}
    if not dropped:
        return
    # Deleted in place: re-adding the kept ones would copy them (protobuf keeps the old memory).
    for index in reversed(range(len(model.graph.initializer))):
        if model.graph.initializer[index].name in dropped:
            del model.graph.initializer[index]
    inputs = [i for i in model.graph.input if i.name not in dropped]
    del model.graph.input[:]
    model.graph.input.extend(inputs)


def name_nodes(graph: onnx.GraphProto) -> None:
    """Give every main-graph node a unique, non-empty name (the report and
    --exclude-nodes refer to nodes by name)."""
    seen: set[str] = set()
    for index, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{index}"
        while name in seen:
            name = f"{name}_{index}"
        node.name = name
        seen.add(name)


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value shape inference can type."""
    try:
        inferred = onnx.shape_inference.infer_shapes(_without_weight_data(model))
    except Exception:  # without types, only values typed in the graph itself are known
        inferred = model
    types = {t.name: t.data_type for t in model.graph.initializer}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    types[node.output[0]] = a.t.data_type
    return types


# Above this many bytes of tensor data, shape inference gets a copy without the data of
# the large initializers: it serializes the model, and needs their shapes only.
_SHAPES_ONLY_ABOVE_BYTES = 64 << 20


def _without_weight_data(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` itself, or for a large one a copy whose main-graph initializers of
    1 MiB or more keep their type and shape but no data (in-memory references)."""
    if data_bytes(model) <= _SHAPES_ONLY_ABOVE_BYTES:
        return model
    from onnxshrink.external_data import _DATA_FIELDS, _bytes_needed, _copy_fields_except

    stubbed = onnx.ModelProto()
    _copy_fields_except(model, stubbed, "graph")
    _copy_fields_except(model.graph, stubbed.graph, "initializer")
    for tensor in model.graph.initializer:
        stub = stubbed.graph.initializer.add()
        if (_bytes_needed(tensor) or 0) < 1 << 20 or tensor.data_location == onnx.TensorProto.EXTERNAL:
            stub.CopyFrom(tensor)
            continue
        _copy_fields_except(tensor, stub, *_DATA_FIELDS)
        stub.data_location = onnx.TensorProto.EXTERNAL
        entry = stub.external_data.add()
        entry.key, entry.value = "location", "onnxshrink-in-memory"
    return stubbed
