"""What quantization does to graphs as exporters write them: weights in Constant
nodes (paddle2onnx, tf2onnx), embedding tables read by Gather (transformers),
weights inside If branches (silero-vad). Outputs carry no dead float copies,
tables are int8, and what is left float is said."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import MODELS
from onnxshrink.census import Census
from onnxshrink.lowbit import WeightOnlyOptions, quantize_weights
from onnxshrink.model import iter_graphs
from onnxshrink.quantization import QuantizeOptions, quantize_model
from onnxshrink.quantization.plan import IN_SUBGRAPH
from onnxshrink.quantization.subgraph_weights import IN_SUBGRAPH_WEIGHTS

FAST = QuantizeOptions(latency_guard=False)


def _as_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every initializer as a Constant node, as paddle2onnx exports weights."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    consts = [helper.make_node("Constant", [], [t.name], value=t) for t in out.graph.initializer]
    del out.graph.initializer[:]
    nodes = consts + list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _dead_constants(model: onnx.ModelProto) -> list[str]:
    dead = []
    for graph, _ in iter_graphs(model.graph):
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        used |= {i for sub, d in iter_graphs(graph) if d for n in sub.node for i in n.input}
        dead += [n.output[0] for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]
    return dead


def _run(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("mode", ["static", "dynamic", "weights-only"])
def test_constant_node_weights_leave_no_float_copies(mode):
    name = "digits_mlp.onnx" if mode == "dynamic" else "digits_cnn.onnx"  # dynamic: MatMul/Gemm only
    source = _as_constants(onnx.load(str(MODELS / name)))
    calib = str(MODELS / "digits_cnn.calib.npz")
    if mode == "static":
        result = quantize_model(source, calib, FAST)
    elif mode == "dynamic":
        result = quantize_model(source, None, QuantizeOptions(dynamic=True, latency_guard=False))
    else:
        result = quantize_weights(source, WeightOnlyOptions(bits=8))
    assert _dead_constants(result.model) == []
    ratio = result.model.ByteSize() / source.ByteSize()
    # int8 weights are a quarter of float32: with the float copies gone, the file is too (static was 1.26x)
    assert ratio <= 0.3, ratio
    assert not [w for w in result.report.warnings if "larger than the input" in w]


def _embedding_model(*, shared: bool = False) -> onnx.ModelProto:
    """ids[B,S] -> Gather(word table [300, 64]) + Gather(position table [16, 64]) -> MatMul(W [64, 8]) -> y.
    ``shared``: the word table is also an operand of a MatMul with an input."""
    rng = np.random.default_rng(0)
    word = rng.normal(size=(300, 64)).astype(np.float32) * 0.5
    word[:, 3] *= 8  # one loud embedding dimension: per-column scales keep the others fine
    inits = [numpy_helper.from_array(word, "word"),
             numpy_helper.from_array(rng.normal(size=(16, 64)).astype(np.float32) * 0.1, "pos"),
             numpy_helper.from_array(rng.normal(size=(64, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(np.arange(4, dtype=np.int64).reshape(1, 4), "positions")]
    nodes = [helper.make_node("Gather", ["word", "ids"], ["we"], name="word_gather"),
             helper.make_node("Gather", ["pos", "positions"], ["pe"], name="pos_gather"),
             helper.make_node("Add", ["we", "pe"], ["h"], name="add"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="proj")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4, 8])]
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", 4])]
    if shared:
        nodes.append(helper.make_node("MatMul", ["word", "v"], ["scores"], name="scores"))
        inputs.append(helper.make_tensor_value_info("v", TensorProto.FLOAT, [64, 2]))
        outputs.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, [300, 2]))
    graph = helper.make_graph(nodes, "emb", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def ids(tmp_path: Path) -> Path:
    path = tmp_path / "ids.npz"
    np.savez(path, ids=np.random.default_rng(1).integers(0, 300, size=(24, 4)).astype(np.int64))
    return path


@pytest.mark.parametrize("dynamic", [False, True])
def test_embedding_tables_are_gathered_as_int8_then_dequantized(ids, dynamic):
    model = _embedding_model()
    options = QuantizeOptions(dynamic=dynamic, latency_guard=False)
    result = quantize_model(model, None if dynamic else str(ids), options, eval_data=str(ids))
    q = result.model
    inits = {t.name: t for t in q.graph.initializer}
    gathers = [n for n in q.graph.node if n.op_type == "Gather"]
    assert len(gathers) == 2
    for gather in gathers:
        assert inits[gather.input[0]].data_type == TensorProto.INT8
        dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == gather.output[0])
        assert helper.get_attribute_value(dq.attribute[0]) == -1  # per embedding dimension, after the gather
        assert list(inits[dq.input[1]].dims) == [64]
    assert not [t for t in q.graph.initializer if t.data_type == TensorProto.FLOAT and t.name in ("word", "pos")]
    assert {r["name"] for r in result.report.nodes} >= {"word_gather", "pos_gather"}
    assert q.ByteSize() < 0.3 * model.ByteSize()
    feed = {"ids": np.load(ids)["ids"]}
    assert _cosine(_run(model, feed), _run(q, feed)) > 0.999


def test_a_table_also_read_by_another_op_stays_with_that_op(ids):
    rng = np.random.default_rng(5)
    data = Path(ids).with_name("ids_v.npz")
    np.savez(data, ids=np.load(ids)["ids"][:, None], v=rng.normal(size=(24, 64, 2)).astype(np.float32))
    result = quantize_model(_embedding_model(shared=True), None, QuantizeOptions(dynamic=True, latency_guard=False),
                            eval_data=str(data))
    assert "also read by MatMul 'scores'" in result.report.left_float["word_gather"]
    gather = next(n for n in result.model.graph.node if n.name == "word_gather")
    assert gather.input[0] == "word"


def test_weight_only_auto_granularity_blocks_matmul_and_gather_below_8_bits():
    """Blocks of 32 along the input features below 8 bits, for MatMul/Gemm/Gather weights
    with more than 128 input features; a narrower channel is already a short block."""
    rng = np.random.default_rng(2)
    model = _embedding_model()
    wide = numpy_helper.from_array(rng.normal(size=(256, 8)).astype(np.float32), "wide_w")
    model.graph.initializer.append(wide)
    model.graph.node.append(helper.make_node("MatMul", ["wide_x", "wide_w"], ["wide_y"], name="wide"))
    model.graph.input.append(helper.make_tensor_value_info("wide_x", TensorProto.FLOAT, [1, 256]))
    model.graph.output.append(helper.make_tensor_value_info("wide_y", TensorProto.FLOAT, None))
    conv_w = numpy_helper.from_array(rng.normal(size=(4, 2, 3, 3)).astype(np.float32), "conv_w")
    conv = helper.make_node("Conv", ["img", "conv_w"], ["c"], name="conv")
    model.graph.initializer.append(conv_w)
    model.graph.node.append(conv)
    model.graph.input.append(helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 2, 6, 6]))
    model.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
    for bits, want in ((4, {"word": None, "pos": None, "w": None, "conv_w": None, "wide_w": 32}),
                       (8, {"word": None, "pos": None, "w": None, "conv_w": None, "wide_w": None})):
        result = quantize_weights(model, WeightOnlyOptions(bits=bits, min_size=0))
        blocks = {}
        for n in result.model.graph.node:
            if n.op_type == "DequantizeLinear":
                attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
                blocks[n.output[0]] = attrs.get("block_size")
        assert blocks == want, bits
        granularity = {w.name: w.granularity for w in result.report.weights}
        assert granularity["conv_w"] == granularity["w"] == "channel"
        assert granularity["wide_w"] == ("block:32" if bits == 4 else "channel")


def _if_model() -> onnx.ModelProto:
    """y = If(cond, x @ W1 (Constant), x @ W2 (Constant)): weights only inside the branches."""
    rng = np.random.default_rng(3)

    def branch(name: str) -> onnx.GraphProto:
        w = rng.normal(size=(32, 16)).astype(np.float32)
        return helper.make_graph(
            [helper.make_node("Constant", [], [f"{name}_w"], value=numpy_helper.from_array(w, f"{name}_w")),
             helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_y"], name=f"{name}_matmul")],
            name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)])

    graph = helper.make_graph(
        [helper.make_node("Greater", ["x_sum", "zero"], ["cond"], name="test"),
         helper.make_node("If", ["cond"], ["y"], then_branch=branch("then"), else_branch=branch("else"), name="if")],
        "if_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32]),
         helper.make_tensor_value_info("x_sum", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        [numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_static_int8_stores_subgraph_weights_in_int8_and_says_they_compute_in_float(tmp_path):
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(4)
    np.savez(data, x=rng.normal(size=(8, 1, 32)).astype(np.float32), x_sum=rng.normal(size=8).astype(np.float32))
    source = _if_model()
    result = quantize_model(source, str(data), FAST)
    assert result.report.left_float["then_matmul"] == IN_SUBGRAPH_WEIGHTS
    assert result.report.left_float["else_matmul"] == IN_SUBGRAPH_WEIGHTS
    assert result.modified and {n["name"] for n in result.report.nodes} == {"then_matmul", "else_matmul"}
    assert any(w.startswith("2 layers inside If/Loop/Scan bodies have int8 weights") for w in result.report.warnings)
    dynamic = quantize_model(source, None, QuantizeOptions(dynamic=True, latency_guard=False))
    assert {n["name"] for n in dynamic.report.nodes} == {"then_matmul", "else_matmul"}
    assert dynamic.report.left_float["then_matmul"] == IN_SUBGRAPH_WEIGHTS
    for branch in [g for g, depth in iter_graphs(result.model.graph) if depth]:
        codes = [a.t.data_type for n in branch.node if n.op_type == "Constant" for a in n.attribute]
        assert codes == [TensorProto.INT8]
    assert _dead_constants(result.model) == []
    assert result.model.ByteSize() <= 0.5 * source.ByteSize()  # 4 KB of float weights -> 1 KB of codes + scales
    feed = {"x": rng.normal(size=(4, 32)).astype(np.float32)}
    for x_sum in (1.0, -1.0):  # both branches
        feed["x_sum"] = np.array(x_sum, np.float32)
        assert _cosine(_run(source, feed), _run(result.model, feed)) > 0.9999


def test_static_int8_says_plainly_which_subgraph_weights_it_left(tmp_path):
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(4)
    np.savez(data, x=rng.normal(size=(8, 1, 32)).astype(np.float32), x_sum=rng.normal(size=8).astype(np.float32))
    result = quantize_model(_if_model(), str(data), QuantizeOptions(latency_guard=False, exclude_nodes=("then_matmul",)))
    assert result.report.left_float["else_matmul"] == IN_SUBGRAPH_WEIGHTS
    assert result.report.left_float["then_matmul"] == IN_SUBGRAPH
    assert any("1 layers inside If/Loop/Scan bodies stay float" in w for w in result.report.warnings)


def test_weight_only_reaches_subgraph_weights():
    result = quantize_weights(_if_model(), WeightOnlyOptions(bits=8))
    assert {w.name for w in result.report.weights} == {"then_w", "else_w"}
    branches = [g for g, depth in iter_graphs(result.model.graph) if depth]
    for branch in branches:
        assert [n.op_type for n in branch.node].count("DequantizeLinear") == 1
        codes = [a.t for n in branch.node if n.op_type == "Constant" for a in n.attribute]
        assert [c.data_type for c in codes] == [TensorProto.INT8]
    assert _dead_constants(result.model) == []


def test_weight_only_quantizes_recurrent_weights():
    """silero-vad's decoder is an LSTM: its W and R are most of its weights."""
    rng = np.random.default_rng(6)
    hidden, feat = 16, 8
    w = numpy_helper.from_array(rng.normal(size=(1, 4 * hidden, feat)).astype(np.float32) * 0.3, "W")
    r = numpy_helper.from_array(rng.normal(size=(1, 4 * hidden, hidden)).astype(np.float32) * 0.3, "R")
    graph = helper.make_graph([helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=hidden, name="lstm")],
                              "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, feat])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, r])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = quantize_weights(model, WeightOnlyOptions(bits=8))
    assert {rec.name: rec.granularity for rec in result.report.weights} == {"W": "channel", "R": "channel"}
    lstm = next(n for n in result.model.graph.node if n.op_type == "LSTM")
    dqs = {n.output[0]: n for n in result.model.graph.node if n.op_type == "DequantizeLinear"}
    codes = {t.name: t.data_type for t in result.model.graph.initializer}
    assert [codes[dqs[name].input[0]] for name in lstm.input[1:3]] == [TensorProto.INT8, TensorProto.INT8]
    feed = {"x": rng.normal(size=(5, 1, feat)).astype(np.float32)}
    assert _cosine(_run(model, feed), _run(result.model, feed)) > 0.9999


def test_layer_counts_come_from_the_written_model(tmp_path, ids):
    from onnxshrink.census import count_layers

    source = _if_model()
    assert count_layers(source) == Census(0, 2, 0, 2)
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(4)
    np.savez(data, x=rng.normal(size=(8, 1, 32)).astype(np.float32), x_sum=rng.normal(size=8).astype(np.float32))
    static = quantize_model(source, str(data), FAST).model
    assert count_layers(static) == Census(2, 0, 2, 0)  # int8 weights behind DequantizeLinear in both branches
    assert count_layers(quantize_weights(source, WeightOnlyOptions(bits=8)).model) == Census(2, 0, 2, 0)
    embedded = quantize_model(_embedding_model(), str(ids), FAST).model  # two Gathers on int8, one MatMul via DQ
    assert count_layers(embedded) == Census(3, 0, 0, 0)
    dynamic = quantize_model(_embedding_model(), None, QuantizeOptions(dynamic=True, latency_guard=False)).model
    assert count_layers(dynamic) == Census(3, 0, 0, 0)  # MatMulInteger and the two Gathers
