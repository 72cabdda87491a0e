"""Weight-only quantization (onnxshrink.lowbit): graph surgery, safe scales, exact zeros."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxshrink.errors import UnsupportedModelError, UsageError
from onnxshrink.lowbit import Grid, WeightOnlyOptions, quantize_nearest, quantize_weights
from onnxshrink.model import iter_graphs, iter_weights

from conftest import tiny_mlp


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feed)


def _branchy_model(seed: int = 0) -> onnx.ModelProto:
    """x[2,8] -> If(cond): each branch reads a weight from a nameless Constant
    node, and the main graph has one more nameless Constant weight; metadata set."""
    rng = np.random.default_rng(seed)

    def const(shape):
        return helper.make_node("Constant", [], [f"c{rng.integers(1 << 30)}"],
                                value=numpy_helper.from_array(rng.normal(size=shape).astype(np.float32)))

    def branch(tag: str) -> onnx.GraphProto:
        c = const((8, 16))
        mm = helper.make_node("MatMul", ["x", c.output[0]], [f"{tag}_y"])
        return helper.make_graph([c, mm], tag, [], [helper.make_tensor_value_info(f"{tag}_y", TensorProto.FLOAT, [2, 16])])

    c_main = const((16, 4))
    nodes = [
        helper.make_node("If", ["cond"], ["h"], then_branch=branch("then"), else_branch=branch("else")),
        c_main,
        helper.make_node("MatMul", ["h", c_main.output[0]], ["y"]),
    ]
    graph = helper.make_graph(nodes, "branchy",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8]),
                               helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"vocab": "0123456789abc", "author": "tests"})
    onnx.checker.check_model(model)
    return model


def _node_names(model: onnx.ModelProto) -> list[str]:
    return [n.name for g, _ in iter_graphs(model.graph) for n in g.node if n.name]


@pytest.mark.parametrize("bits", [8, 4])
def test_if_branches_and_nameless_constants(bits):
    model = _branchy_model()
    before = model.SerializeToString()
    result = quantize_weights(model, WeightOnlyOptions(bits=bits, min_size=0))
    q = result.model
    assert model.SerializeToString() == before  # the caller's model is left alone
    onnx.checker.check_model(q, full_check=True)
    assert len(result.report.weights) == 3
    dqs = [n for g, _ in iter_graphs(q.graph) for n in g.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 3
    names = _node_names(q)
    assert len(names) == len(set(names)), Counter(names).most_common(2)
    assert {p.key: p.value for p in q.metadata_props} == {"vocab": "0123456789abc", "author": "tests"}
    x = np.random.default_rng(1).normal(size=(2, 8)).astype(np.float32)
    for cond in (True, False):
        feed = {"x": x, "cond": np.array(cond)}
        want, got = _run(model, feed)[0], _run(q, feed)[0]
        assert np.isfinite(got).all()
        assert np.abs(got - want).max() <= (0.05 if bits == 8 else 0.6) * np.abs(want).max()


def test_quantized_graph_computes_codes_times_scales_exactly():
    """The DequantizeLinear graph equals the float model holding codes * scales (block scales on a Conv)."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=(6, 40, 3, 3)).astype(np.float32)
    model = _conv_model(w)
    options = WeightOnlyOptions(bits=4, granularity="block:16", min_size=0)
    q = quantize_weights(model, options).model
    grid = Grid(4, 1, 16)
    codes, scales = quantize_nearest(w, grid)
    w_hat = (codes * grid.expand(scales, w.shape)).astype(np.float32)
    x = rng.normal(size=(1, 40, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(q, {"x": x})[0], _run(_conv_model(w_hat), {"x": x})[0], rtol=1e-5, atol=1e-5)
    assert [o.version for o in q.opset_import if o.domain == ""] == [21] and q.ir_version >= 10


@pytest.mark.parametrize("granularity", ["channel", "block:8"])
def test_4bit_scales_are_float16_values_that_never_clip(granularity):
    """Below 8 bits scales are rounded up to float16 values (they pack in half
    the bytes): each stays >= max|w| / 7 of its group, so no code clips, and
    within 2^-10 of it; 8-bit scales stay the exact max|w| / 127."""
    rng = np.random.default_rng(5)
    w = (rng.normal(size=(16, 24)) * np.logspace(-3, 1, 24)).astype(np.float32)
    for bits, qmax in ((4, 7), (8, 127)):
        grid = Grid(bits, 0, None if granularity == "channel" else 8)
        scales = grid.scales(w)
        groups = np.abs(w).max(axis=1) if granularity == "channel" else np.abs(w).reshape(2, 8, 24).max(axis=1)
        exact = (groups.astype(np.float64) / qmax).astype(np.float32)
        if bits == 4:
            assert (scales.astype(np.float16).astype(np.float32) == scales).all()
            assert (scales >= exact).all() and (scales <= exact * (1 + 2.0 ** -10)).all()
            codes, _ = quantize_nearest(w, grid)
            assert np.abs(codes).max() <= qmax
        else:
            np.testing.assert_array_equal(scales, exact)


def _conv_model(w: np.ndarray, opset: int = 17) -> onnx.ModelProto:
    c = w.shape[1]
    g = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1], name="conv")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w.shape[0], 6, 6])],
                          [numpy_helper.from_array(w, "W")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("granularity", ["channel", "block:2"])
def test_all_zero_channel_stays_finite_and_zero(bits, granularity):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 4, 3, 3)).astype(np.float32)
    w[3] = 0
    w[5] = 1e-42  # subnormal weights: their scale must still be a normal float
    result = quantize_weights(_conv_model(w), WeightOnlyOptions(bits=bits, granularity=granularity, min_size=0))
    scales = [numpy_helper.to_array(t) for t in result.model.graph.initializer if t.name.endswith("_scale")]
    assert len(scales) == 1
    s = scales[0]
    assert np.isfinite(s).all() and (s >= np.finfo(np.float32).tiny).all()
    y = _run(result.model, {"x": rng.normal(size=(1, 4, 6, 6)).astype(np.float32)})[0]
    assert np.isfinite(y).all()
    assert (y[0, 3] == 0).all()


@pytest.mark.parametrize("rounding", ["nearest", "gptq"])
def test_pruned_zeros_stay_zero(rounding, tmp_path):
    model = tiny_mlp(seed=2, hidden=64)
    w1 = numpy_helper.to_array(model.graph.initializer[0])
    rng = np.random.default_rng(4)
    w1 = np.where(rng.random(w1.shape) < 0.5, 0.0, w1).astype(np.float32)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w1, "w1"))
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=rng.normal(size=(64, 8)).astype(np.float32))
    # A random net at 4 bits: the zeros are under test, not its answers (no quality floor).
    result = quantize_weights(model, WeightOnlyOptions(bits=4, rounding=rounding, min_size=0, gate_floor=False),
                              calib=calib)
    codes = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    q1 = codes["w1_quantized"].astype(np.int8)
    assert (q1[w1 == 0] == 0).all()
    assert [r.rounding for r in result.report.weights] == [rounding] * 2


def test_shared_weight_is_quantized_once_and_biases_stay_float():
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.normal(size=(16, 16)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.normal(size=16).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("MatMul", ["h", "W"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], [w, b])
    q = quantize_weights(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
                         WeightOnlyOptions(min_size=0)).model
    assert [n.op_type for n in q.graph.node].count("DequantizeLinear") == 1
    kinds = {t.name: t.data_type for t in q.graph.initializer}
    assert kinds["W_quantized"] == TensorProto.INT8 and kinds["b"] == TensorProto.FLOAT


def test_gather_embedding_is_quantized_per_row():
    rng = np.random.default_rng(6)
    table = rng.normal(size=(50, 24)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Gather", ["E", "ids"], ["y"])], "g",
                          [helper.make_tensor_value_info("ids", TensorProto.INT64, [3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 24])],
                          [numpy_helper.from_array(table, "E")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    result = quantize_weights(model, WeightOnlyOptions(min_size=0))
    assert [r.op_types for r in result.report.weights] == [["Gather"]]
    ids = np.array([0, 7, 49])
    np.testing.assert_allclose(_run(result.model, {"ids": ids})[0], table[ids], atol=np.abs(table).max() / 127)


def test_layer_bits_exclude_and_min_size():
    model = tiny_mlp(hidden=64)
    result = quantize_weights(model, WeightOnlyOptions(bits=4, layer_bits={"w2": 8}, exclude=("fc1",), min_size=0))
    assert [(r.name, r.bits) for r in result.report.weights] == [("w2", 8)]
    assert result.report.skipped == {"w1": "excluded"}
    kept = quantize_weights(model, WeightOnlyOptions(layer_bits={"w1": None, "w2": None}, min_size=0))
    assert not kept.modified and set(kept.report.skipped) == {"w1", "w2"}
    small = quantize_weights(model, WeightOnlyOptions(min_size=10_000))
    assert not small.report.weights and "min_size" in small.report.skipped["w1"]


def test_options_refuse_what_cannot_work():
    for bad in ({"bits": 9}, {"bits": 1}, {"granularity": "block:1"}, {"granularity": "row"}, {"rounding": "best"},
                {"layer_bits": {"w": 16}}, {"sparsity": 0.5}):
        with pytest.raises(UsageError):
            WeightOnlyOptions(**bad)
    with pytest.raises(UsageError, match="--calib"):
        quantize_weights(tiny_mlp(), WeightOnlyOptions(rounding="gptq"))
    options = WeightOnlyOptions(layer_bits={"a": 4})
    assert options.bits_for("a") == 4 and options.bits_for("b") == 8


def test_failed_opset_upgrade_names_why(monkeypatch):
    import onnx.version_converter

    def refuse(model, version):
        raise RuntimeError("No Adapter For Resize")

    monkeypatch.setattr(onnx.version_converter, "convert_version", refuse)
    with pytest.raises(UnsupportedModelError, match="opset 21.*No Adapter For Resize"):
        quantize_weights(tiny_mlp(hidden=64), WeightOnlyOptions(bits=4, min_size=0), name="m.onnx")
    # int8 per-channel needs no upgrade from opset 17
    assert quantize_weights(tiny_mlp(hidden=64), WeightOnlyOptions(bits=8, min_size=0)).report.opset_after == 17


def test_weight_count_is_unchanged_and_report_serialises():
    import json

    model = tiny_mlp(hidden=64)
    result = quantize_weights(model, WeightOnlyOptions(bits=4, granularity="block:4", min_size=0))
    d = result.report.to_dict()
    json.dumps(d)
    assert d["opset_before"] == 17 and d["opset_after"] == 21
    assert all(0 < r["relative_error"] < 0.2 for r in d["weights"])
    int4 = {w.name for w in iter_weights(result.model) if w.tensor.data_type == TensorProto.INT4}
    assert int4 == {"w1_quantized", "w1_zero_point", "w2_quantized", "w2_zero_point"}


@pytest.mark.parametrize("bits", [3, 2])
def test_three_and_two_bits_use_fewer_int4_levels(bits):
    """3 and 2 bits are int4 codes in [-2^(b-1), 2^(b-1)-1]; the graph runs and
    its error grows as the levels get fewer."""
    rng = np.random.default_rng(7)
    w = rng.normal(size=(8, 16, 3, 3)).astype(np.float32)
    x = {"x": rng.normal(size=(1, 16, 6, 6)).astype(np.float32)}
    reference = _run(_conv_model(w), x)[0]
    errors = {}
    for b in (4, bits):
        q = quantize_weights(_conv_model(w), WeightOnlyOptions(bits=b, min_size=0)).model
        codes = [numpy_helper.to_array(t) for t in q.graph.initializer if t.name.endswith("_quantized")][0]
        assert codes.dtype.name == "int4"
        lo, hi = -(1 << (b - 1)), (1 << (b - 1)) - 1
        assert codes.astype(np.int8).min() >= lo and codes.astype(np.int8).max() <= hi
        assert len(np.unique(codes.astype(np.int8))) <= hi - lo + 1
        errors[b] = float(np.abs(_run(q, x)[0] - reference).mean())
    assert errors[bits] > errors[4]


@pytest.mark.parametrize("bits", [7, 6, 5])
def test_seven_six_and_five_bits_use_fewer_int8_levels(bits):
    """7, 6 and 5 bits are int8 codes in [-2^(b-1), 2^(b-1)-1] at per-channel
    int8's opset (13, no upgrade to 21); the graph runs, its error lies
    between 8 and 4 bits', and packed it is smaller than at 8 bits."""
    from onnxshrink.model import opset_version
    from onnxshrink.packing import pack_model

    rng = np.random.default_rng(7)
    w = rng.normal(size=(16, 32, 3, 3)).astype(np.float32)
    x = {"x": rng.normal(size=(1, 32, 6, 6)).astype(np.float32)}
    reference = _run(_conv_model(w), x)[0]
    errors, packed = {}, {}
    for b in (8, bits, 4):
        q = quantize_weights(_conv_model(w), WeightOnlyOptions(bits=b, min_size=0)).model
        codes = [numpy_helper.to_array(t) for t in q.graph.initializer if t.name.endswith("_quantized")][0]
        if b >= 5:
            assert codes.dtype == np.int8 and opset_version(q) == opset_version(_conv_model(w))
        lo, hi = -(1 << (b - 1)), (1 << (b - 1)) - 1
        assert codes.astype(np.int8).min() >= lo and codes.astype(np.int8).max() <= hi
        errors[b] = float(np.abs(_run(q, x)[0] - reference).mean())
        packed[b] = len(pack_model(q).data)
    assert errors[8] < errors[bits] < errors[4]
    assert packed[bits] < packed[8]


def test_the_width_mix_checks_its_floats_as_float16_storage_will_hold_them():
    """round_as_float16_storage rounds exactly the float32 tensors packing with
    float16 storage casts: a weight-only model's float weight and bias change to
    float16 values, its scales and a tensor under min_tensor_bytes do not, and
    packed with float16 storage the rounded model unpacks to the same values."""
    from onnxshrink.packing import PackOptions, load_packed, pack_model
    from onnxshrink.search.quantizers import round_as_float16_storage

    rng = np.random.default_rng(11)
    w = rng.normal(size=(16, 32, 3, 3)).astype(np.float32)
    model = quantize_weights(_conv_model(w), WeightOnlyOptions(bits=8, min_size=0)).model
    bias = rng.normal(size=(128,)).astype(np.float32)  # 512 bytes: packed as float16
    tiny = rng.normal(size=(8,)).astype(np.float32)  # 32 bytes: stored inline, as is
    model.graph.initializer.extend([numpy_helper.from_array(bias, "extra_bias"),
                                    numpy_helper.from_array(tiny, "extra_tiny")])
    before = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    round_as_float16_storage(model)
    after = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    scales = [n for n in before if n.endswith("_scale")]
    assert scales and all(np.array_equal(before[n], after[n]) for n in scales)
    assert np.array_equal(after["extra_tiny"], tiny)
    assert not np.array_equal(after["extra_bias"], bias)
    assert np.array_equal(after["extra_bias"], bias.astype(np.float16).astype(np.float32))
    restored = load_packed(pack_model(model, PackOptions(float16_small=True, float16_small_below=1 << 62)).data)
    for t in restored.graph.initializer:
        assert np.array_equal(numpy_helper.to_array(t), after[t.name]), t.name
