"""materialize="float": quantized weights (int8 per channel, int4/uint4 per
block, int8 per tensor, a Constant-node weight) come back as float32
initializers holding exactly what onnxruntime's DequantizeLinear computes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxshrink
from onnxshrink.errors import UsageError
from onnxshrink.packing import MATERIALIZE_MODES, inference_session_from_packed, load_packed, pack_model
from onnxshrink.packing.materialize import materialize_float


def _int4(name: str, values: np.ndarray, signed: bool = True) -> TensorProto:
    return helper.make_tensor(name, TensorProto.INT4 if signed else TensorProto.UINT4, values.shape,
                              values.reshape(-1).tolist())


def qdq_model(dq_outputs: bool = False) -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv (int8 per output channel) -> Flatten -> Gemm (int4,
    blocks of 32 along K) -> MatMul (uint4 with zero points, blocks of 16 along
    K) -> Add (int8 per tensor, zero point 3, from a Constant node).
    ``dq_outputs``: also output every DequantizeLinear result."""
    rng = np.random.default_rng(7)
    conv_q = rng.integers(-127, 128, (6, 3, 3, 3)).astype(np.int8)
    conv_q[2] = 0  # an all-zero channel
    gemm_q = rng.integers(-8, 8, (216, 24))  # K=6*6*6 (one partial block), N=24
    mm_q = rng.integers(0, 16, (24, 10))
    inits = [
        numpy_helper.from_array(conv_q, "conv_wq"),
        numpy_helper.from_array((rng.random(6) * 0.02 + 1e-3).astype(np.float32), "conv_scale"),
        numpy_helper.from_array(rng.normal(0, 0.1, 6).astype(np.float32), "conv_b"),
        _int4("gemm_wq", gemm_q),
        numpy_helper.from_array((rng.random((7, 24)) * 0.1 + 1e-3).astype(np.float32), "gemm_scale"),
        _int4("mm_wq", mm_q, signed=False),
        numpy_helper.from_array((rng.random((2, 10)) * 0.1 + 1e-3).astype(np.float32), "mm_scale"),
        _int4("mm_zp", rng.integers(0, 16, (2, 10)), signed=False),
        numpy_helper.from_array(np.float32(0.037), "add_scale"),
        numpy_helper.from_array(np.int8(3), "add_zp"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["conv_wq", "conv_scale"], ["conv_w"], name="dq_conv", axis=0),
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv"),
        helper.make_node("Flatten", ["c"], ["f"], name="flatten"),
        helper.make_node("DequantizeLinear", ["gemm_wq", "gemm_scale"], ["gemm_w"], name="dq_gemm", axis=0,
                         block_size=32),
        helper.make_node("Gemm", ["f", "gemm_w"], ["g"], name="gemm"),
        helper.make_node("DequantizeLinear", ["mm_wq", "mm_scale", "mm_zp"], ["mm_w"], name="dq_mm", axis=0,
                         block_size=16),
        helper.make_node("MatMul", ["g", "mm_w"], ["m"], name="matmul"),
        helper.make_node("Constant", [], ["add_q"], name="add_const",
                         value=numpy_helper.from_array(rng.integers(-128, 128, (1, 10)).astype(np.int8), "add_q")),
        helper.make_node("DequantizeLinear", ["add_q", "add_scale", "add_zp"], ["add_w"], name="dq_add"),
        helper.make_node("Add", ["m", "add_w"], ["y"], name="add"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])]
    if dq_outputs:
        shapes = {"conv_w": [6, 3, 3, 3], "gemm_w": [216, 24], "mm_w": [24, 10], "add_w": [1, 10]}
        outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items()]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    helper.set_model_props(model, {"labels": "0123456789"})
    onnx.checker.check_model(model)
    return model


def run(model: onnx.ModelProto, x: np.ndarray, optimize: bool = True) -> list[np.ndarray]:
    """Outputs in onnxruntime. ``optimize=False`` for a QDQ reference: with
    optimisations onnxruntime fuses int4 DequantizeLinear + MatMul into
    MatMulNBits, which by default quantizes the activations to int8
    (accuracy level 4) and so differs from DequantizeLinear's float result."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})


X = np.random.default_rng(1).normal(0, 1, (1, 3, 8, 8)).astype(np.float32)


def test_float_weights_are_exactly_what_onnxruntime_dequantizes():
    reference = dict(zip(["y", "conv_w", "gemm_w", "mm_w", "add_w"], run(qdq_model(dq_outputs=True), X)))
    model = qdq_model()
    made = materialize_float(model)
    assert sorted(made) == ["add_w", "conv_w", "gemm_w", "mm_w"]
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for name in made:
        assert weights[name].dtype == np.float32
        assert weights[name].tobytes() == reference[name].tobytes(), name
    assert not np.any(weights["conv_w"][2])  # the zero channel stays exactly zero
    (y,) = run(model, X)
    np.testing.assert_allclose(y, reference["y"], rtol=1e-5, atol=1e-5)


def test_float_model_drops_dequantize_nodes_and_their_tensors_and_keeps_the_rest():
    model = qdq_model()
    materialize_float(model)
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["Conv", "Flatten", "Gemm", "MatMul", "Add"]
    assert [n.name for n in model.graph.node] == ["conv", "flatten", "gemm", "matmul", "add"]
    assert sorted(t.name for t in model.graph.initializer) == ["add_w", "conv_b", "conv_w", "gemm_w", "mm_w"]
    assert {p.key: p.value for p in model.metadata_props} == {"labels": "0123456789"}


def test_load_unpack_and_session_materialize_through_the_container(tmp_path):
    model = qdq_model()
    blob = pack_model(model).data
    path = tmp_path / "m.onnxz"
    path.write_bytes(blob)
    qdq = load_packed(blob)
    assert qdq.SerializeToString() == load_packed(blob, materialize="qdq").SerializeToString()
    def arrays(m):
        return [numpy_helper.to_array(t).tobytes() for t in m.graph.initializer]

    assert arrays(qdq) == arrays(model)
    flt = onnxshrink.load(path, materialize="float")
    assert "DequantizeLinear" not in {n.op_type for n in flt.graph.node}
    (y_qdq,) = run(qdq, X, optimize=False)
    (y_flt,) = run(flt, X)
    np.testing.assert_allclose(y_flt, y_qdq, rtol=1e-5, atol=1e-5)
    session = inference_session_from_packed(path, materialize="float")
    assert np.array_equal(session.run(None, {"x": X})[0], y_flt)
    out = onnxshrink.unpack(path, tmp_path / "f.onnx", materialize="float")
    assert out.SerializeToString() == flt.SerializeToString()
    with pytest.raises(UsageError, match="materialize='fp32'"):
        load_packed(blob, materialize="fp32")


def test_weights_read_elsewhere_or_graph_outputs_stay_quantized():
    model = qdq_model(dq_outputs=True)
    # conv_wq is also read by an Identity: it and its DequantizeLinear stay.
    model.graph.node.append(helper.make_node("Identity", ["conv_wq"], ["conv_wq_copy"], name="copy"))
    model.graph.output.append(helper.make_tensor_value_info("conv_wq_copy", TensorProto.INT8, [6, 3, 3, 3]))
    before = run(model, X)
    assert materialize_float(model) == []  # every other DQ output is a graph output
    assert [np.array_equal(a, b) for a, b in zip(before, run(model, X))] == [True] * len(before)


def test_cli_choices_are_the_api_modes():
    from onnxshrink.cli.pack import Materialize

    assert tuple(m.value for m in Materialize) == MATERIALIZE_MODES


def static_conv_model() -> onnx.ModelProto:
    """qdq_model with its Conv input quantized too (QuantizeLinear ->
    DequantizeLinear on x): the Conv is a static QDQ pattern onnxruntime runs
    in an integer kernel; the Gemm, MatMul and Add weights are weight-only."""
    model = qdq_model()
    graph = model.graph
    graph.initializer.extend([numpy_helper.from_array(np.float32(0.05), "x_scale"),
                              numpy_helper.from_array(np.uint8(128), "x_zp")])
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="q_x"),
             helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="dq_x"),
             *graph.node]
    for node in nodes:
        if node.name == "conv":
            node.input[0] = "x_dq"
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def test_auto_expands_weight_only_weights_and_keeps_static_qdq(tmp_path):
    model = static_conv_model()
    path = tmp_path / "m.onnxz"
    path.write_bytes(pack_model(model).data)
    auto = load_packed(path, materialize="auto")
    dq_inputs = sorted(n.input[0] for n in auto.graph.node if n.op_type == "DequantizeLinear")
    assert dq_inputs == ["conv_wq", "x_q"]  # the integer kernel's weight and activation stay as packed
    # The 216x24 Gemm runs on the 4-bit kernel; the 24x10 MatMul (under 4096 weights) and the Add as float32.
    assert [n.name for n in auto.graph.node if n.op_type == "MatMulNBits"] == ["gemm"]
    assert {"mm_w", "add_w"} <= {t.name for t in auto.graph.initializer}
    flt = load_packed(path, materialize="float")  # everything expanded: the Conv's weight too
    assert [n.input[0] for n in flt.graph.node if n.op_type == "DequantizeLinear"] == ["x_q"]
    weights = {t.name: numpy_helper.to_array(t).tobytes() for t in flt.graph.initializer}
    for t in auto.graph.initializer:
        if t.name in ("mm_w", "add_w"):
            assert numpy_helper.to_array(t).tobytes() == weights[t.name], t.name
    # The session runs the auto model by default, the packed one with materialize="qdq".
    (y_auto,) = run(auto, X)
    assert np.array_equal(inference_session_from_packed(path).run(None, {"x": X})[0], y_auto)
    (y_qdq,) = run(load_packed(path), X)
    assert np.array_equal(inference_session_from_packed(path, materialize="qdq").run(None, {"x": X})[0], y_qdq)


def test_auto_keeps_the_model_as_packed_when_float_weights_would_be_too_large():
    model = qdq_model()
    int_bytes = 4 * (6 * 3 * 3 * 3 + 216 * 24 + 24 * 10 + 10)
    assert materialize_float(onnx.ModelProto.FromString(model.SerializeToString()), weight_only=True,
                             max_float_bytes=int_bytes - 1) == []
    assert len(materialize_float(model, weight_only=True, max_float_bytes=int_bytes)) == 4


def test_cli_unpack_auto(tmp_path):
    from conftest import run_cli

    path, out = tmp_path / "m.onnxz", tmp_path / "m.onnx"
    path.write_bytes(pack_model(static_conv_model()).data)
    result = run_cli("unpack", path, "-o", out, "--materialize", "auto")
    assert result.returncode == 0, result.stderr
    assert "quantized weights: 1 on MatMulNBits, 2 as float32, 1 integer + DequantizeLinear" in \
        " ".join(result.stdout.split())
    assert sorted(n.input[0] for n in onnx.load(str(out)).graph.node if n.op_type == "DequantizeLinear") == \
        ["conv_wq", "x_q"]
