"""Weights inside If/Loop bodies, as silero-vad holds them: an LSTM whose W/R/B an
exporter slices into gates and concatenates inside a nested If, Conv and MatMul
weights in branches and a Loop body. The passes reach them, the reports count
them from the written model, the outputs agree with fp32 in onnxruntime, and
packing restores every subgraph tensor bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxshrink.branch_folding import fold_branch_constants
from onnxshrink.census import Census, count_layers
from onnxshrink.graphs import all_tensors, iter_graphs
from onnxshrink.lowbit import WeightOnlyOptions, quantize_weights
from onnxshrink.packing import load_packed, pack_model
from onnxshrink.quantization import QuantizeOptions, quantize_model
from onnxshrink.simplify import simplify

HIDDEN, FEAT, STEPS = 16, 8, 5


def _const(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))


def _ints(name: str, values: list[int]) -> onnx.NodeProto:
    return _const(name, np.array(values, np.int64))


def _reordered(p: str, source: str, rows: int) -> tuple[list[onnx.NodeProto], str]:
    """Gates (i, f, g, o) of ``source`` [4*rows, ...] sliced and concatenated as (i, o, f, g),
    then unsqueezed: what torch.onnx writes for an LSTM's weights, with its own parameter constants."""
    nodes, parts = [], []
    for k, gate in enumerate((0, 3, 1, 2)):
        nodes += [_ints(f"{p}_s{k}", [gate * rows]), _ints(f"{p}_e{k}", [(gate + 1) * rows]), _ints(f"{p}_a{k}", [0]),
                  helper.make_node("Slice", [source, f"{p}_s{k}", f"{p}_e{k}", f"{p}_a{k}"], [f"{p}_slice{k}"])]
        parts.append(f"{p}_slice{k}")
    nodes += [helper.make_node("Concat", parts, [f"{p}_cat"], axis=0), _ints(f"{p}_ax", [0]),
              helper.make_node("Unsqueeze", [f"{p}_cat", f"{p}_ax"], [f"{p}_out"])]
    return nodes, f"{p}_out"


def _lstm_path(p: str, outer: str, activation: str) -> onnx.GraphProto:
    """A nested-If branch running the LSTM on weights read from the enclosing graph."""
    nodes = []
    names = []
    for role, source in (("W", f"{outer}_w_ih"), ("R", f"{outer}_w_hh"), ("B", f"{outer}_b")):
        made, out = _reordered(f"{p}_{role}", source, HIDDEN if role != "B" else 2 * HIDDEN)
        nodes += made
        names.append(out)
    nodes += [helper.make_node("LSTM", ["x", *names], ["", f"{p}_h"], hidden_size=HIDDEN, name=f"{p}_lstm"),
              helper.make_node(activation, [f"{p}_h"], [f"{p}_y"])]
    return helper.make_graph(nodes, p, [], [helper.make_tensor_value_info(f"{p}_y", TensorProto.FLOAT, None)])


def _branch(name: str, rng: np.random.Generator) -> onnx.GraphProto:
    """One sample-rate branch: a Conv and an LSTM whose weights are Constants of this branch."""
    w_ih = rng.normal(size=(4 * HIDDEN, FEAT)).astype(np.float32) * 0.3
    w_hh = rng.normal(size=(4 * HIDDEN, HIDDEN)).astype(np.float32) * 0.3
    bias = rng.normal(size=(8 * HIDDEN,)).astype(np.float32) * 0.1
    conv = rng.normal(size=(16, 4, 5)).astype(np.float32) * 0.3
    nested = helper.make_node("If", ["inner"], [f"{name}_y"], name=f"{name}_if",
                              then_branch=_lstm_path(f"{name}_p", name, "Relu"),
                              else_branch=_lstm_path(f"{name}_q", name, "Sigmoid"))
    nodes = [_const(f"{name}_w_ih", w_ih), _const(f"{name}_w_hh", w_hh), _const(f"{name}_b", bias),
             _const(f"{name}_conv_w", conv),
             helper.make_node("Conv", ["signal", f"{name}_conv_w"], [f"{name}_c"], name=f"{name}_conv"),
             nested,
             helper.make_node("ReduceMean", [f"{name}_c"], [f"{name}_cm"], keepdims=0),
             helper.make_node("ReduceMean", [f"{name}_y"], [f"{name}_ym"], keepdims=0),
             helper.make_node("Add", [f"{name}_cm", f"{name}_ym"], [f"{name}_out"])]
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)])


def _silero_like() -> onnx.ModelProto:
    rng = np.random.default_rng(16)
    graph = helper.make_graph(
        [helper.make_node("If", ["rate"], ["out"], name="rate_if", then_branch=_branch("hi", rng),
                          else_branch=_branch("lo", rng))],
        "silero_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [STEPS, 1, FEAT]),
         helper.make_tensor_value_info("signal", TensorProto.FLOAT, [1, 4, 12]),
         helper.make_tensor_value_info("rate", TensorProto.BOOL, []),
         helper.make_tensor_value_info("inner", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _feeds(rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """Every combination of the two conditions, so each branch runs."""
    return [{"x": rng.normal(size=(STEPS, 1, FEAT)).astype(np.float32),
             "signal": rng.normal(size=(1, 4, 12)).astype(np.float32),
             "rate": np.array(rate), "inner": np.array(inner)}
            for rate in (True, False) for inner in (True, False) for _ in range(3)]


def _run(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _lstm_inputs(model: onnx.ModelProto) -> list[list[str]]:
    return [list(n.input[1:4]) for g, _ in iter_graphs(model.graph) for n in g.node if n.op_type == "LSTM"]


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {n.output[0]: n.attribute[0].t for g, _ in iter_graphs(model.graph) for n in g.node
            if n.op_type == "Constant"}


def test_folding_makes_lstm_weights_constants_shared_by_sibling_branches_and_changes_no_output():
    source = _silero_like()
    result = fold_branch_constants(source)
    assert result.modified and result.nodes_folded > 0
    onnx.checker.check_model(result.model, full_check=True)
    constants = _constants(result.model)
    lstms = _lstm_inputs(result.model)
    assert len(lstms) == 4 and all(name in constants for inputs in lstms for name in inputs)
    # The two nested branches of each rate read the same folded W, R, B (stored once, in the rate's branch).
    assert lstms[0] == lstms[1] and lstms[2] == lstms[3] and lstms[0] != lstms[2]
    assert [list(constants[n].dims) for n in lstms[0]] == [[1, 4 * HIDDEN, FEAT], [1, 4 * HIDDEN, HIDDEN],
                                                           [1, 8 * HIDDEN]]
    # The gate-ordered weights replace the exporter's: the tensors got no larger.
    assert sum(t.ByteSize() for t, _ in all_tensors(result.model)) <= sum(t.ByteSize() for t, _ in all_tensors(source))
    for feed in _feeds(np.random.default_rng(1)):
        np.testing.assert_array_equal(_run(source, feed), _run(result.model, feed))
    assert fold_branch_constants(result.model).modified is False  # nothing left to fold
    assert fold_branch_constants(source).model.SerializeToString() == result.model.SerializeToString()  # deterministic
    assert simplify(source).model.SerializeToString() != source.SerializeToString()  # simplify runs it too


def test_folding_that_would_grow_the_model_is_not_kept():
    """A branch concatenating a weight with itself while the original stays read elsewhere."""
    w = np.arange(64 * 32, dtype=np.float32).reshape(64, 32) / 1000
    branch = helper.make_graph(
        [helper.make_node("Concat", ["w", "w"], ["ww"], axis=1), helper.make_node("MatMul", ["x", "ww"], ["y1"]),
         helper.make_node("MatMul", ["x2", "w"], ["y2"]), helper.make_node("ReduceSum", ["y1"], ["s1"], keepdims=0),
         helper.make_node("ReduceSum", ["y2"], ["s2"], keepdims=0), helper.make_node("Add", ["s1", "s2"], ["s"])],
        "b", [], [helper.make_tensor_value_info("s", TensorProto.FLOAT, [])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["out"], then_branch=branch, else_branch=branch)], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64]),
         helper.make_tensor_value_info("x2", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = fold_branch_constants(model)
    assert result.modified is False and result.model is model
    assert "would grow" in result.note


@pytest.mark.parametrize("bits", [8, 4])
def test_weight_only_quantizes_lstm_and_conv_weights_inside_branches(bits):
    source = _silero_like()
    result = quantize_weights(source, WeightOnlyOptions(bits=bits, gate_floor=False), measure_latency=False)
    model = result.model
    onnx.checker.check_model(model, full_check=True)
    quantized = {r.name for r in result.report.weights}
    ops = {op for r in result.report.weights for op in r.op_types}
    assert ops == {"LSTM", "Conv"} and len(quantized) == 2 * 3  # W and R of each rate's LSTM, and its Conv
    dequantized = {n.output[0]: n.input[0] for g, _ in iter_graphs(model.graph) for n in g.node
                   if n.op_type == "DequantizeLinear"}
    constants = _constants(model)
    code_type = TensorProto.INT8 if bits == 8 else TensorProto.INT4
    for w, r, _ in _lstm_inputs(model):
        assert constants[dequantized[w]].data_type == code_type and constants[dequantized[r]].data_type == code_type
    # Counted from the written model: 2 Conv and 4 LSTM readers, all inside If bodies (the source's
    # LSTMs read computed weights, which count as layers once folded).
    assert count_layers(source) == Census(0, 2, 0, 2)
    assert count_layers(fold_branch_constants(source).model) == Census(0, 6, 0, 6)
    assert count_layers(model) == Census(6, 0, 6, 0)
    assert model.ByteSize() < (0.4 if bits == 8 else 0.3) * source.ByteSize()
    for feed in _feeds(np.random.default_rng(2)):
        a, b = _run(source, feed), _run(model, feed)
        assert abs(float(a) - float(b)) <= (0.02 if bits == 8 else 0.15) * max(1.0, abs(float(a)))


def test_static_int8_stores_lstm_weights_in_branches_and_counts_them(tmp_path):
    source = _silero_like()
    rng = np.random.default_rng(3)
    feeds = _feeds(rng)
    data = tmp_path / "calib.npz"
    np.savez(data, **{k: np.stack([f[k] for f in feeds]) for k in feeds[0]})
    result = quantize_model(source, str(data), QuantizeOptions(latency_guard=False))
    kinds = {n["name"]: n["op_type"] for n in result.report.nodes}
    assert sorted(kinds.values()) == ["Conv", "Conv", "LSTM", "LSTM", "LSTM", "LSTM"]
    assert count_layers(result.model) == Census(6, 0, 6, 0)
    for feed in feeds:
        assert abs(float(_run(source, feed)) - float(_run(result.model, feed))) < 0.02


def test_loop_body_weights_are_quantized_and_pack_restores_every_subgraph_tensor_bit_exactly():
    """A MatMul in a Loop body reading a Constant of the body, beside the If model's branches."""
    rng = np.random.default_rng(5)
    w = rng.normal(size=(FEAT, FEAT)).astype(np.float32) * 0.3
    body = helper.make_graph(
        [_const("loop_w", np.concatenate([w, w], axis=1)),
         helper.make_node("MatMul", ["carried", "loop_w"], ["wide"], name="loop_matmul"),
         _ints("half", [FEAT]), _ints("zero", [0]), _ints("one", [1]),
         helper.make_node("Slice", ["wide", "zero", "half", "one"], ["narrow"]),
         helper.make_node("Tanh", ["narrow"], ["next"]), helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("carried", TensorProto.FLOAT, [1, FEAT])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("next", TensorProto.FLOAT, [1, FEAT])])
    base = _silero_like()
    base.graph.node.extend([_const("trips", np.array(3, np.int64)), _const("true", np.array(True)),
                            helper.make_node("Loop", ["trips", "true", "v"], ["v_out"], body=body, name="loop")])
    base.graph.input.append(helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, FEAT]))
    base.graph.output.append(helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1, FEAT]))
    onnx.checker.check_model(base, full_check=True)
    result = quantize_weights(base, WeightOnlyOptions(bits=4, min_size=64, gate_floor=False), measure_latency=False)
    assert "loop_w" in {r.name for r in result.report.weights}
    assert count_layers(result.model).quantized_in_subgraphs == 7
    feed = {**_feeds(rng)[0], "v": rng.normal(size=(1, FEAT)).astype(np.float32)}
    sess = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])  # noqa: E731
    np.testing.assert_allclose(sess(base).run(["v_out"], feed)[0], sess(result.model).run(["v_out"], feed)[0],
                               atol=0.1)
    restored = load_packed(pack_model(result.model).data, materialize="qdq")
    assert restored.SerializeToString() == result.model.SerializeToString()
    codes = [t for t, _ in all_tensors(result.model) if t.data_type == TensorProto.INT4 and t.name.endswith("_quantized")]
    assert len(codes) == 7  # each restored bit for bit with the rest of the model, above
