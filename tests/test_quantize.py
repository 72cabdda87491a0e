"""The quantize pass on tiny models built inline, run in onnxruntime before and after."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxshrink.errors import GateFailed, UnsupportedModelError, UsageError
from onnxshrink.quantization import CalibrationStats, QuantizeOptions, TensorStats, quantize_model
from onnxshrink.quantization.fusion import kernel_counts
from onnxshrink.quantization.params import MIN_SCALE
from onnxshrink.quantization.ranges import RANGE_METHODS, activation_range
from onnxshrink.quantization.stats import HALF_BINS

FAST = QuantizeOptions(latency_guard=False)


def conv_net(seed: int = 0, *, zero_channel: bool = False, opset: int = 17, constant_weight: bool = False) -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv+BN+Relu -> MaxPool -> Conv -> Add(skip) -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> y[N,5]."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(8, 3, 3, 3)).astype(np.float32) * 0.3
    w1[rng.random(w1.shape) < 0.5] = 0.0  # pruned weights: must stay exactly zero
    if zero_channel:
        w1[2] = 0.0
    inits = [
        numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.normal(size=8).astype(np.float32) * 0.1, "beta"),
        numpy_helper.from_array(rng.normal(size=8).astype(np.float32) * 0.1, "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "var"),
        numpy_helper.from_array(rng.normal(size=(8, 8, 3, 3)).astype(np.float32) * 0.2, "w2"),
        numpy_helper.from_array(rng.normal(size=(5, 8)).astype(np.float32), "w3"),
        numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "b3"),
    ]
    nodes = []
    if constant_weight:
        nodes.append(helper.make_node("Constant", [], ["w1"], value=numpy_helper.from_array(w1, "w1"), name="w1_const"))
    else:
        inits.append(numpy_helper.from_array(w1, "w1"))
    nodes += [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Add", ["c2", "p1"], ["s"], name="skip"),
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(nodes, "conv_net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def batches(n: int = 4, size: int = 16, seed: int = 1, name: str = "x", shape=(3, 8, 8)):
    rng = np.random.default_rng(seed)
    return [{name: rng.normal(size=(size, *shape)).astype(np.float32)} for _ in range(n)]


def run(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_conv_net_runs_in_integer_kernels_and_stays_close():
    model = conv_net()
    result = quantize_model(model, batches(), FAST)
    feed = batches(1, 32, seed=9)[0]
    assert cosine(run(model, feed), run(result.model, feed)) > 0.995
    kernels = kernel_counts(result.model)
    assert kernels.get("QLinearConv") == 2 and kernels.get("QLinearAdd") == 1 and kernels.get("QGemm") == 1
    assert kernels.get("QLinearGlobalAveragePool") == 1
    assert "Conv" not in kernels and "BatchNormalization" not in kernels and "Relu" not in kernels
    ops = {n.op_type for n in result.model.graph.node}
    assert "BatchNormalization" not in ops and "Relu" not in ops  # folded into Conv / into the Q
    assert result.report.left_float == {}
    assert model.graph.node[1].op_type == "BatchNormalization"  # the caller's model is untouched


def test_weights_int8_symmetric_per_channel_biases_int32_zeros_stay_zero():
    model = conv_net(zero_channel=True)
    w1 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w1"))
    result = quantize_model(model, batches(), FAST)
    inits = initializers(result.model)
    dq = {n.input[0]: n for n in result.model.graph.node if n.op_type == "DequantizeLinear"}
    quantized_w1 = next(v for k, v in inits.items() if k.startswith("w1") and v.dtype == np.int8 and v.ndim == 4)
    assert quantized_w1.shape == w1.shape
    # zero weights (pruned, or a dead channel) stay exactly zero, through BN folding and rounding
    assert (quantized_w1[w1 == 0] == 0).all() and (w1 == 0).mean() > 0.4
    assert (quantized_w1[2] == 0).all()
    for name, node in dq.items():
        scale, zero_point = inits[node.input[1]], inits[node.input[2]]
        assert np.isfinite(scale).all() and (scale >= MIN_SCALE).all()
        if name in inits and inits[name].dtype == np.int8 and inits[name].ndim >= 2:
            assert (zero_point == 0).all() and zero_point.shape == scale.shape
            assert np.abs(inits[name]).max() <= 127
            assert [a.i for a in node.attribute if a.name == "axis"] in ([0], [1])
    made_by = {n.output[0]: n for n in result.model.graph.node}
    conv = next(n for n in result.model.graph.node if n.name == "conv1")
    x_dq, w_dq, b_dq = (made_by[i] for i in conv.input)
    bias_scale = inits[b_dq.input[1]]
    assert inits[b_dq.input[0]].dtype == np.int32 and (inits[b_dq.input[2]] == 0).all()
    expected = (np.float64(inits[x_dq.input[1]]) * inits[w_dq.input[1]].astype(np.float64)).astype(np.float32)
    assert np.array_equal(bias_scale, expected)
    feed = batches(1, 8, seed=3)[0]
    out = run(result.model, feed)
    assert np.isfinite(out).all()


def test_all_zero_weight_tensor_gets_finite_normal_scales():
    model = conv_net()
    for t in model.graph.initializer:
        if t.name == "w2":
            t.CopyFrom(numpy_helper.from_array(np.zeros((8, 8, 3, 3), np.float32), "w2"))
    result = quantize_model(model, batches(), FAST)
    for t in result.model.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype == np.float32:
            assert np.isfinite(a).all() and (a > 0).all() and (a >= np.finfo(np.float32).tiny).all()
    assert np.isfinite(run(result.model, batches(1, 4)[0])).all()


def test_streaming_histograms_merge_exactly_and_do_not_grow():
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=1000) * s for s in (0.01, 1.0, 30.0, 0.5)]
    whole = TensorStats()
    for p in parts:
        whole.update(p)
    a, b = TensorStats(), TensorStats()
    for p in parts[:2]:
        a.update(p)
    for p in parts[2:][::-1]:
        b.update(p)
    merged = a.merge(b)
    assert merged.exponent == whole.exponent and np.array_equal(merged.hist, whole.hist)
    assert (merged.min, merged.max, merged.count) == (whole.min, whole.max, whole.count)
    assert whole.hist.size == 2 * HALF_BINS and whole.hist.sum() == 4000
    restored = TensorStats.from_dict(whole.to_dict())
    assert np.array_equal(restored.hist, whole.hist) and restored.exponent == whole.exponent


def test_statistics_from_two_runs_merge_into_the_same_model():
    model = conv_net()
    data = batches(4)
    from onnxshrink.quantization import calibrate, prepare_model
    from onnxshrink.quantization.quantizer import calibration_values

    prepared = prepare_model(model)
    names = calibration_values(prepared.model, prepared.types)
    first = calibrate(prepared.model, names, data[:2])
    second = calibrate(prepared.model, names, data[2:])
    merged = CalibrationStats.from_dict(first.merge(second).to_dict())
    # Saved statistics hold no layer input means or Hessians: no bias correction and no GPTQ rounding
    # from them (and a note saying so for each).
    exact = dataclasses.replace(FAST, bias_correction=False, weight_rounding="nearest")
    one_run = quantize_model(model, data, exact)
    two_runs = quantize_model(model, merged, exact)
    from_saved = quantize_model(model, merged, FAST).report
    assert any("bias correction skipped" in w for w in from_saved.warnings)
    assert any("GPTQ weight rounding skipped" in w for w in from_saved.warnings)
    assert from_saved.weight_rounding == "nearest"
    assert merged.samples == 64
    a, b = initializers(one_run.model), initializers(two_runs.model)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", sorted(RANGE_METHODS))
def test_every_range_method_gives_a_range_around_zero_inside_the_data(method):
    rng = np.random.default_rng(1)
    for data in (rng.normal(size=20000) + 0.5, np.maximum(rng.normal(size=20000), 0), np.zeros(100)):
        data = data.astype(np.float32)
        stats = TensorStats()
        stats.update(data)
        lo, hi = activation_range(stats, method)
        assert min(data.min(), 0) <= lo <= 0 <= hi <= max(data.max(), 0)
    stats = TensorStats()
    stats.update(np.concatenate([rng.normal(size=20000), [1000.0]]))  # one outlier
    lo, hi = activation_range(stats, method)
    if method == "minmax":
        assert hi == pytest.approx(1000.0, rel=1e-3)
    elif method == "percentile":
        assert hi < 10  # the outlier is one sample in 20,001


def test_calibration_data_reader_and_int8_activations():
    model = conv_net()

    class Reader:  # onnxruntime's CalibrationDataReader shape
        def __init__(self):
            self.items = iter(batches(3, 8))

        def get_next(self):
            return next(self.items, None)

    result = quantize_model(model, Reader(), QuantizeOptions(activations="int8", latency_guard=False))
    zps = [numpy_helper.to_array(t) for t in result.model.graph.initializer if t.name.endswith("zero_point")]
    assert all(z.dtype in (np.int8, np.int32) for z in zps)
    assert kernel_counts(result.model).get("QLinearConv", 0) >= 1
    feed = batches(1, 8, seed=5)[0]
    assert cosine(run(model, feed), run(result.model, feed)) > 0.99


def test_exclusions_stay_float_and_are_reported():
    result = quantize_model(conv_net(), batches(), QuantizeOptions(exclude_nodes=("conv2",), exclude_ops=("Gemm",),
                                                                   latency_guard=False))
    assert result.report.left_float["conv2"] == "excluded by the options"
    assert result.report.left_float["fc"] == "excluded by the options"
    ops = {n.name: n.op_type for n in result.model.graph.node}
    assert ops["conv2"] == "Conv" and ops["fc"] == "Gemm"
    assert {n["name"] for n in result.report.nodes} >= {"conv1"}


def test_weights_in_constant_nodes_and_old_opsets_are_handled():
    model = conv_net(opset=11, constant_weight=True)
    result = quantize_model(model, batches(), FAST)
    assert result.report.prepared["opset_upgraded_from"] == 11
    assert "conv1" in {n["name"] for n in result.report.nodes if n["weight"]}
    feed = batches(1, 8)[0]
    assert cosine(run(model, feed), run(result.model, feed)) > 0.99


def test_fp16_models_are_refused_clearly():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "half",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedModelError, match="float16"):
        quantize_model(model, [{"x": np.ones((1, 4), np.float16)}], FAST)


def test_subgraphs_are_left_untouched_but_still_run():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(6, 6)).astype(np.float32), "w_inner")
    branch = lambda name, op: helper.make_graph(  # noqa: E731
        [helper.make_node(op, ["h", "w_inner"] if op == "MatMul" else ["h"], [f"{name}_out"])], name, [],
        [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, ["N", 6])])
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h"], name="outer"),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),  # h is also read by the If branch: no folding
        helper.make_node("MatMul", ["hr", "w0"], ["z"], name="after"),
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
        helper.make_node("ReduceSum", ["s"], ["s1"], keepdims=0, name="sum2"),
        helper.make_node("Greater", ["s1", "zero"], ["cond"], name="gt"),
        helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", "MatMul"), else_branch=branch("else", "Relu"),
                         name="if"),
    ]
    graph = helper.make_graph(nodes, "sub", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 6])],
                              [numpy_helper.from_array(rng.normal(size=(6, 6)).astype(np.float32), "w0"), w,
                               numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    data = batches(2, 8, name="x", shape=(6,))
    result = quantize_model(model, data, FAST)
    if_node = next(n for n in result.model.graph.node if n.op_type == "If")
    branch_after = next(a.g for a in if_node.attribute if a.name == "then_branch")
    assert branch_after.node[0].op_type == "MatMul" and "w_inner" in initializers(result.model)
    assert "h" in {o for n in result.model.graph.node for o in n.output}
    assert {n["name"] for n in result.report.nodes} >= {"outer", "after"}
    for feed in ({"x": np.abs(data[0]["x"])}, {"x": -np.abs(data[0]["x"])}):
        assert cosine(run(model, feed), run(result.model, feed)) > 0.99


def test_accuracy_aware_keeps_sensitive_nodes_in_float_until_the_target_holds():
    model = conv_net()
    data = batches(4)
    baseline = quantize_model(model, data, FAST).report.validation["outputs"]["y"]["cosine"]
    target = 1 - (1 - baseline) / 4
    result = quantize_model(model, data, QuantizeOptions(min_cosine=target, latency_guard=False), eval_data=data)
    assert result.report.target["met"] and result.report.target["cosine"] >= target
    kept = [n for n, why in result.report.left_float.items() if "accuracy-aware" in why]
    assert kept and sorted(result.report.search[-1]["float_nodes"]) == sorted(kept)
    assert result.report.nodes  # something is still quantized


def test_unreachable_target_raises_gate_failed():
    with pytest.raises(GateFailed, match="nothing written"):
        quantize_model(conv_net(), batches(2), QuantizeOptions(min_cosine=1.0, latency_guard=False), eval_data=batches(2))


def test_options_are_checked():
    with pytest.raises(UsageError):
        QuantizeOptions(method="magic")
    with pytest.raises(UsageError):
        QuantizeOptions(min_cosine=0.9, max_accuracy_drop=1.0)
    with pytest.raises(UsageError, match="calibration data"):
        quantize_model(conv_net(), None, FAST)


def test_dynamic_mode_uses_integer_matmuls():
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(64, 96)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=(8, 96)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "b2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm"),
             helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], transB=1, alpha=0.5, beta=2.0, name="gemm")]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = quantize_model(model, None, QuantizeOptions(dynamic=True, latency_guard=False))
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("MatMulInteger") == 2 and ops.count("DynamicQuantizeLinear") == 2
    assert "DynamicQuantizeMatMul" in kernel_counts(result.model) or "MatMulIntegerToFloat" in kernel_counts(result.model)
    feed = {"x": rng.normal(size=(3, 64)).astype(np.float32)}
    assert cosine(run(model, feed), run(result.model, feed)) > 0.999
    assert result.report.size_ratio < 0.5


def test_op_coverage_silu_depthwise_concat_split_maxpool_indices_convtranspose_gemm_transa():
    rng = np.random.default_rng(0)
    f32 = lambda shape, name: numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)  # noqa: E731
    inits = [f32((8, 3, 3, 3), "w1"), f32((8, 1, 3, 3), "dw"), f32((8, 4, 2, 2), "wt"), f32((16, 6), "wg"),
             numpy_helper.from_array(np.array([16, -1], np.int64), "shape"),
             numpy_helper.from_array(np.array([1], np.int64), "axes")]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Sigmoid", ["a"], ["s"], name="sigmoid"),
        helper.make_node("Mul", ["a", "s"], ["silu"], name="silu"),
        helper.make_node("Conv", ["silu", "dw"], ["d"], pads=[1, 1, 1, 1], group=8, name="depthwise"),
        helper.make_node("Concat", ["d", "silu"], ["cat"], axis=1, name="concat"),
        helper.make_node("Split", ["cat"], ["s1", "s2"], axis=1, num_outputs=2, name="split"),
        helper.make_node("Add", ["s1", "s2"], ["sum"], name="add"),
        helper.make_node("MaxPool", ["sum"], ["mp", "idx"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("ConvTranspose", ["mp", "wt"], ["ct"], strides=[2, 2], name="deconv"),
        helper.make_node("ReduceMean", ["ct", "axes"], ["rm"], keepdims=0, name="mean"),
        helper.make_node("Reshape", ["rm", "shape"], ["flat"], name="reshape"),
        helper.make_node("Gemm", ["flat", "wg"], ["y"], transA=1, name="gemm"),
    ]
    graph = helper.make_graph(nodes, "coverage", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 6]),
                               helper.make_tensor_value_info("idx", TensorProto.INT64, [4, 8, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    data = [{"x": rng.normal(size=(4, 3, 8, 8)).astype(np.float32)} for _ in range(3)]
    # With the latency guard; no floor: the net's random weights make a task the floor would judge.
    result = quantize_model(model, data, QuantizeOptions(gate_floor=False))
    kernels = kernel_counts(result.model)
    for kernel in ("QLinearSigmoid", "QLinearMul", "QLinearConcat", "QLinearAdd", "QGemm"):
        assert kernels.get(kernel) == 1, kernel
    assert kernels.get("QLinearConv") == 2 and "Conv" not in kernels
    # no integer ConvTranspose kernel on CPU: the guard keeps it in float and says why
    assert "integer kernel" in result.report.left_float["deconv"]
    assert "pool" not in {n["name"] for n in result.report.nodes}  # int64 Indices: never behind Q/DQ
    feed = {"x": rng.normal(size=(4, 3, 8, 8)).astype(np.float32)}
    session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    y, idx = session.run(None, feed)
    assert cosine(reference[0], y) > 0.99 and idx.dtype == np.int64


def test_paddle_style_export_bias_add_identity_and_opset_12_fold_into_one_integer_conv():
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(1, 4, 1, 1)).astype(np.float32), "bias")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Add", ["c", "bias"], ["a"], name="bias_add"),
             helper.make_node("Identity", ["a"], ["i"], name="identity"),
             helper.make_node("Relu", ["i"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["y"], name="gap")]
    graph = helper.make_graph(nodes, "paddle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 1, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    data = batches(3, 8)
    result = quantize_model(model, data, QuantizeOptions())
    notes = result.report.prepared
    assert notes["opset_upgraded_from"] == 12 and notes["conv_bias_adds_folded"] == 1 and notes["identities_removed"] == 1
    assert kernel_counts(result.model) == {"QuantizeLinear": 1, "QLinearConv": 1, "QLinearGlobalAveragePool": 1,
                                           "DequantizeLinear": 1}
    assert cosine(run(model, data[0]), run(result.model, data[0])) > 0.999


@pytest.mark.parametrize("keepdims", [0, 1])
def test_spatial_reduce_mean_runs_as_integer_global_average_pool(keepdims):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("ReduceMean", ["r"], ["m"], axes=[-2, -1], keepdims=keepdims, name="mean"),
             helper.make_node("Flatten", ["m"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wg"], ["y"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "mean", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                              [numpy_helper.from_array(rng.normal(size=(8, 3, 1, 1)).astype(np.float32), "w"),
                               numpy_helper.from_array(rng.normal(size=(5, 8)).astype(np.float32), "wg")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = batches(3, 8)
    result = quantize_model(model, data, QuantizeOptions())
    assert result.report.prepared["spatial_means_to_global_pool"] == 1
    kernels = kernel_counts(result.model)
    assert kernels.get("QLinearGlobalAveragePool") == 1 and "ReduceMean" not in kernels and "DequantizeLinear" not in kernels
    assert cosine(run(model, data[0]), run(result.model, data[0])) > 0.999
