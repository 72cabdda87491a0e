"""Layer input statistics: the unfolded rows times the weight matrices must
reproduce what onnxruntime computes, and the sums must not depend on batching."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxshrink.data import Batch
from onnxshrink.roles import weight_uses
from onnxshrink.runtime import create_session
from onnxshrink.stats.layer_inputs import (
    collect_layer_inputs,
    from_matrices,
    layer_layout,
    layer_rows,
    weight_matrices,
)


def conv_model(cin=4, cout=6, group=1, kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1),
               auto_pad=None, size=(7, 6), seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cout, cin // group) + kernel).astype(np.float32)
    attrs = dict(group=group, strides=list(strides), dilations=list(dilations))
    if auto_pad:
        attrs["auto_pad"] = auto_pad
    else:
        attrs["pads"] = list(pads)
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", cin, *size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"strides": (2, 1), "pads": (0, 1, 2, 0)},
        {"dilations": (2, 1), "kernel": (3, 2)},
        {"group": 2, "cin": 4, "cout": 6},
        {"group": 4, "cin": 4, "cout": 4},  # depthwise
        {"auto_pad": "SAME_UPPER", "strides": (2, 2)},
        {"auto_pad": "VALID"},
    ],
)
def test_unfolded_rows_reproduce_conv(kw):
    model = conv_model(**kw)
    x = np.random.default_rng(1).standard_normal((3, kw.get("cin", 4), 7, 6)).astype(np.float32)
    want = create_session(model).run(None, {"x": x})[0]
    (use,) = weight_uses(model)
    layout = layer_layout(use)
    rows, _ = layer_rows(x, use, layout)
    w = weight_matrices(use.weight.array(), layout, use)
    got = np.matmul(rows, w.transpose(0, 2, 1))  # [g, N*L, rows]
    n, cout = want.shape[:2]
    got = got.transpose(1, 0, 2).reshape(n, *want.shape[2:], cout)
    np.testing.assert_allclose(np.moveaxis(got, -1, 1), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(from_matrices(w, layout, use), use.weight.array())


def mlp_model(seed=0):
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((5, 8)).astype(np.float32)  # Gemm transB: [out, in]
    w2 = rng.standard_normal((5, 3)).astype(np.float32)  # MatMul: [in, out]
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_hessian_is_xtx_and_independent_of_batching():
    model = mlp_model()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((20, 8)).astype(np.float32)
    uses = weight_uses(model)
    one = collect_layer_inputs(model, uses, [Batch({"x": x})], want=("hessian", "norms", "means"))
    split = collect_layer_inputs(model, uses, [Batch({"x": x[:7]}), Batch({"x": x[7:]})], want=("hessian", "norms", "means"))
    np.testing.assert_allclose(one["w1"].hessian[0], x.T.astype(np.float64) @ x / 20, rtol=1e-5)
    r = np.maximum(x @ numpy_helper.to_array(model.graph.initializer[0]).T, 0)
    np.testing.assert_allclose(one["w2"].hessian[0], r.T.astype(np.float64) @ r / 20, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(one["w2"].channel_mean, r.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one["w2"].channel_sq, (r.astype(np.float64) ** 2).sum(0), rtol=1e-5)
    for name in one:
        np.testing.assert_allclose(one[name].hessian, split[name].hessian, rtol=1e-5, atol=1e-7)
        assert one[name].samples == split[name].samples == 20


def test_statistics_of_parts_merge_into_those_of_the_whole():
    """Calibration split across workers: each collects running sums on its batches;
    merged, they finish into the statistics of one pass over all batches."""
    model = conv_model(cin=3, cout=4, size=(5, 5))
    rng = np.random.default_rng(3)
    batches = [Batch({"x": rng.standard_normal((n, 3, 5, 5)).astype(np.float32)}) for n in (4, 3, 5, 2)]
    uses = weight_uses(model)
    want = ("hessian", "norms", "means")
    whole = collect_layer_inputs(model, uses, batches, want)
    first = collect_layer_inputs(model, uses, batches[:1], want, finish=False)
    second = collect_layer_inputs(model, uses, batches[1:], want, finish=False)
    merged = first["w"].merge(second["w"]).finish()
    assert merged.samples == whole["w"].samples == 14 * 25
    for field in ("hessian", "feature_sq", "feature_mean", "channel_sq", "channel_mean"):
        np.testing.assert_allclose(getattr(merged, field), getattr(whole["w"], field), rtol=1e-12, atol=1e-12)
    empty = collect_layer_inputs(model, uses, [], want, finish=False)["w"]
    np.testing.assert_array_equal(empty.merge(second["w"]).finish().hessian,
                                  collect_layer_inputs(model, uses, batches[1:], want)["w"].hessian)
    with pytest.raises(ValueError, match="before finish"):
        whole["w"].merge(second["w"])
    hessian_only = collect_layer_inputs(model, uses, batches[:1], ("hessian",), finish=False)
    with pytest.raises(ValueError, match="different `want`"):
        hessian_only["w"].merge(collect_layer_inputs(model, uses, batches[1:], ("norms",), finish=False)["w"])


def test_conv_hessian_matches_unfold_and_model_is_unchanged():
    model = conv_model(group=2, cin=4, cout=6)
    before = model.SerializeToString()
    x = np.random.default_rng(3).standard_normal((4, 4, 7, 6)).astype(np.float32)
    (use,) = weight_uses(model)
    stats = collect_layer_inputs(model, [use], [Batch({"x": x})])["w"]
    rows, _ = layer_rows(x, use, layer_layout(use))
    want = np.matmul(rows.transpose(0, 2, 1).astype(np.float64), rows) / rows.shape[1]
    assert stats.hessian.shape == (2, 18, 18)
    np.testing.assert_allclose(stats.hessian, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.feature_sq, np.einsum("gnf,gnf->gf", rows, rows), rtol=1e-5)
    assert model.SerializeToString() == before
