"""Channel removal: coupled residual groups, Concat, BN, depthwise Conv, Flatten;
dead channels go without changing outputs; blocked values keep their channels."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxshrink.data import Batch
from onnxshrink.model import iter_weights
from onnxshrink.pruning import PruneOptions, prune_model
from onnxshrink.runtime import create_session


def residual_net(dead: bool, seed: int = 0) -> onnx.ModelProto:
    """stem Conv -> Relu -> [Conv Relu Conv] + skip -> Relu -> {Conv Relu | Conv BN} -> Concat
    -> depthwise Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm. With ``dead``, the
    odd channels of every prunable group are zero everywhere."""
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.5  # noqa: E731
    w = {
        "stem_w": f(8, 4, 3, 3), "stem_b": f(8),
        "c1_w": f(8, 8, 3, 3), "c1_b": f(8), "c2_w": f(8, 8, 3, 3), "c2_b": f(8),
        "a_w": f(6, 8, 1, 1), "a_b": f(6), "b_w": f(6, 8, 3, 3),
        "bn_s": 1 + 0.1 * f(6), "bn_b": f(6), "bn_m": 0.1 * f(6), "bn_v": 1 + np.abs(f(6)),
        "dw_w": f(12, 1, 3, 3), "dw_b": np.abs(f(12)), "fc_w": f(5, 12), "fc_b": f(5),
    }
    if dead:
        odd8, odd6 = np.arange(1, 8, 2), np.arange(1, 6, 2)
        for k in ("stem", "c1", "c2"):
            w[f"{k}_w"][odd8] = 0
            w[f"{k}_b"][odd8] = 0
        w["a_w"][odd6] = 0
        w["a_b"][odd6] = 0
        w["b_w"][odd6] = 0
        w["bn_b"][odd6] = 0
        w["bn_m"][odd6] = 0
        dead_concat = np.concatenate([odd6, 6 + odd6])
        w["dw_b"][dead_concat] = 0
    nodes = [
        helper.make_node("Conv", ["x", "stem_w", "stem_b"], ["s0"], pads=[1, 1, 1, 1], name="stem"),
        helper.make_node("Relu", ["s0"], ["s"]),
        helper.make_node("Conv", ["s", "c1_w", "c1_b"], ["h0"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("Relu", ["h0"], ["h"]),
        helper.make_node("Conv", ["h", "c2_w", "c2_b"], ["h2"], pads=[1, 1, 1, 1], name="c2"),
        helper.make_node("Add", ["h2", "s"], ["r0"]),
        helper.make_node("Relu", ["r0"], ["r"]),
        helper.make_node("Conv", ["r", "a_w", "a_b"], ["a0"], name="a"),
        helper.make_node("Relu", ["a0"], ["a"]),
        helper.make_node("Conv", ["r", "b_w"], ["b0"], pads=[1, 1, 1, 1], name="b"),
        helper.make_node("BatchNormalization", ["b0", "bn_s", "bn_b", "bn_m", "bn_v"], ["b"]),
        helper.make_node("Concat", ["a", "b"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "dw_w", "dw_b"], ["d0"], group=12, pads=[1, 1, 1, 1], name="dw"),
        helper.make_node("Relu", ["d0"], ["d"]),
        helper.make_node("GlobalAveragePool", ["d"], ["p"]),
        helper.make_node("Flatten", ["p"], ["fl"], axis=1),
        helper.make_node("Gemm", ["fl", "fc_w", "fc_b"], ["y"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
        [numpy_helper.from_array(v, k) for k, v in w.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def batches(n: int = 64, seed: int = 1) -> list[Batch]:
    x = np.random.default_rng(seed).standard_normal((n, 4, 6, 6)).astype(np.float32)
    return [Batch({"x": x[i:i + 32]}) for i in range(0, n, 32)]


def outputs(model: onnx.ModelProto, data: list[Batch]) -> np.ndarray:
    s = create_session(model)
    return np.concatenate([s.run(None, b.inputs)[0] for b in data])


def shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    return {r.name: tuple(r.tensor.dims) for r in iter_weights(model)}


@pytest.mark.parametrize("method", ["wanda", "hessian"])
def test_dead_channels_are_removed_without_changing_outputs(method):
    model, data = residual_net(dead=True), batches()
    result = prune_model(model, PruneOptions(sparsity=0.5, pattern="channel", method=method), calib=data)
    after = shapes(result.model)
    assert after["stem_w"] == (4, 4, 3, 3) and after["c2_w"] == (4, 4, 3, 3)  # coupled by the residual Add
    assert after["c1_w"] == (4, 4, 3, 3)
    assert after["a_w"] == (3, 4, 1, 1) and after["b_w"] == (3, 4, 3, 3)
    assert after["bn_s"] == (3,) and after["dw_w"] == (6, 1, 3, 3) and after["fc_w"] == (5, 6)
    group = [a.i for n in result.model.graph.node if n.name == "dw" for a in n.attribute if a.name == "group"]
    assert group == [6]
    np.testing.assert_allclose(outputs(result.model, data), outputs(model, data), rtol=1e-4, atol=1e-4)
    report = result.report
    assert report.params_after < 0.6 * report.params_before
    assert report.flops_after < 0.5 * report.flops_before
    kept = [g for g in report.channel_groups if "kept_because" in g]
    assert any("graph output" in g["kept_because"] for g in kept)  # fc's outputs are the model's


def test_channel_pruning_runs_and_reconstruction_helps():
    model, data = residual_net(dead=False), batches(128)
    dense = outputs(model, data)
    errors = {}
    for method in ("magnitude", "wanda", "hessian"):
        result = prune_model(model, PruneOptions(sparsity=0.25, pattern="channel", method=method),
                             calib=None if method == "magnitude" else data)
        out = outputs(result.model, data)
        assert out.shape == dense.shape and np.isfinite(out).all()
        onnx.checker.check_model(result.model)
        errors[method] = float(((out - dense) ** 2).sum() / (dense**2).sum())
    assert errors["hessian"] < errors["wanda"]


def test_zero_fraction_changes_nothing():
    model, data = residual_net(dead=False), batches(32)
    result = prune_model(model, PruneOptions(sparsity=0.0, pattern="channel", method="magnitude"))
    assert shapes(result.model) == shapes(model)
    np.testing.assert_array_equal(outputs(result.model, data), outputs(model, data))


def test_channels_reaching_softmax_or_an_output_stay():
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 8)).astype(np.float32)
    w2 = rng.standard_normal((8, 8)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),  # feeds Softmax: blocked
        helper.make_node("Softmax", ["h"], ["sm"], axis=-1),
        helper.make_node("MatMul", ["sm", "w2"], ["y"]),  # feeds the output: blocked
    ]
    graph = helper.make_graph(nodes, "blocked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = prune_model(model, PruneOptions(sparsity=0.5, pattern="channel", method="magnitude"))
    assert shapes(result.model) == shapes(model)
    why = sorted(g["kept_because"] for g in result.report.channel_groups)
    assert any("Softmax" in w for w in why) and any("graph output" in w for w in why)


def test_matmul_ffn_with_bias_add_and_gelu_is_cut():
    """A transformer-style FFN: MatMul -> Add(bias) -> Gelu-as-ops -> MatMul; the hidden width shrinks."""
    rng = np.random.default_rng(0)
    w1, b1, w2 = (rng.standard_normal(s).astype(np.float32) for s in ((8, 32), (32,), (32, 8)))
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m"]),
        helper.make_node("Add", ["m", "b1"], ["h"]),
        helper.make_node("Sigmoid", ["h"], ["sg"]),
        helper.make_node("Mul", ["h", "sg"], ["act"]),  # both inputs carry the same channels
        helper.make_node("MatMul", ["act", "w2"], ["y0"]),
        helper.make_node("Add", ["y0", "x"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 8])],
                              [numpy_helper.from_array(v, k) for k, v in {"w1": w1, "b1": b1, "w2": w2}.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((64, 3, 8)).astype(np.float32)
    result = prune_model(model, PruneOptions(sparsity=0.5, pattern="channel"), calib=[Batch({"x": x})])
    after = shapes(result.model)
    assert after["w1"] == (8, 16) and after["b1"] == (16,) and after["w2"] == (16, 8)
    assert outputs(result.model, [Batch({"x": x})]).shape == (64, 3, 8)


def test_channel_target_search_meets_cosine():
    model, data = residual_net(dead=False), batches(64)
    result = prune_model(model, PruneOptions(pattern="channel", min_cosine=0.98), calib=data, eval_data=data)
    assert result.report.validation.passed
    assert min(o["cosine"] for o in result.report.validation.outputs.values()) >= 0.98
    assert result.report.search
