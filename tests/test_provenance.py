"""onnxsim's renames given back: the simplified model speaks the input model's names.

Checked on tiny models built here and on the bundled ones: no ``_v_N`` name
is left, renamed weights hold what they say (a folded Conv weight is its
input weight scaled per channel, a concatenated weight is its parts end to
end), and the renamed model computes exactly what onnxsim's own does.
"""

from __future__ import annotations

import contextlib
import io
import re

import numpy as np
import onnx
import onnxruntime as ort
import onnxsim
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import MODELS
from onnxshrink.provenance import braced
from onnxshrink.simplify import simplify

ONNXSIM_NAME = re.compile(r"^_v_\d+$")


def _plain_onnxsim(model: onnx.ModelProto) -> onnx.ModelProto:
    with contextlib.redirect_stdout(io.StringIO()):
        simplified, ok = onnxsim.simplify(model, check_n=0, perform_optimization=True)
    assert ok
    return simplified


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def _names(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    return {t.name for t in g.initializer} | {v for n in g.node for v in (*n.input, *n.output) if v}


def _conv_bn(bias: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 2, 3, 3)).astype(np.float32), "conv.w"),
             numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), "bn.scale"),
             numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "bn.bias"),
             numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "bn.mean"),
             numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), "bn.var")]
    conv_inputs = ["x", "conv.w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "conv.b"))
        conv_inputs.append("conv.b")
    nodes = [helper.make_node("Conv", conv_inputs, ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b"], name="bn"),
             helper.make_node("Relu", ["b"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "conv_bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_folded_batchnorm_leaves_the_conv_weight_its_name_and_says_so():
    model = _conv_bn(bias=True)
    result = simplify(model)
    simplified = result.model
    assert [n.op_type for n in simplified.graph.node] == ["Conv", "Relu"]  # onnxsim folded the BatchNorm
    assert not any(ONNXSIM_NAME.match(n) for n in _names(simplified))
    conv = simplified.graph.node[0]
    assert conv.name == "conv" and list(conv.input) == ["x", "conv.w", "conv.b"]
    assert "BatchNormalization bn" in result.names.origins["conv.w"]
    assert "BatchNormalization bn" in result.names.origins["conv.b"]
    # The renamed weight is the input's, scaled per output channel by the BatchNorm.
    w0 = numpy_helper.to_array(model.graph.initializer[0])
    w1 = numpy_helper.to_array(next(t for t in simplified.graph.initializer if t.name == "conv.w"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    scale = inits["bn.scale"] / np.sqrt(inits["bn.var"] + 1e-5)
    np.testing.assert_allclose(w1, w0 * scale[:, None, None, None], rtol=1e-5)
    feed = {"x": np.random.default_rng(1).normal(size=(1, 2, 5, 5)).astype(np.float32)}
    for ours, theirs in zip(_run(simplified, feed), _run(_plain_onnxsim(model), feed)):
        np.testing.assert_array_equal(ours, theirs)


def test_a_bias_onnxsim_made_is_named_after_the_input_it_feeds():
    """A Conv without a bias gets one from the folded BatchNorm: no input
    tensor had that place, so it is named NODE:role and says where it came from."""
    result = simplify(_conv_bn(bias=False))
    conv = result.model.graph.node[0]
    assert list(conv.input) == ["x", "conv.w", "conv:B"]
    assert result.names.origins["conv:B"] == "made by onnxsim from BatchNormalization bn"


def test_unnamed_nodes_get_their_empty_names_back():
    model = _conv_bn(bias=True)
    for node in model.graph.node:
        node.name = ""
    result = simplify(model)
    assert [n.name for n in result.model.graph.node] == ["", ""]
    assert result.names.nodes  # onnxsim had named them


def test_transformer_names_qkv_concatenation_and_fused_gemms_after_the_input():
    model = onnx.load(MODELS / "digits_transformer.onnx")
    result = simplify(model)
    simplified = result.model
    assert not any(ONNXSIM_NAME.match(n) for n in _names(simplified))
    assert not any(re.fullmatch(r"(Gemm|MatMul|Reshape|Split)_\d+", n.name) for n in simplified.graph.node)
    inits = {t.name: numpy_helper.to_array(t) for t in simplified.graph.initializer}
    originals = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    qkv = "onnx::MatMul_{142,143,144}"
    np.testing.assert_array_equal(inits[qkv], np.concatenate(
        [originals["onnx::MatMul_142"], originals["onnx::MatMul_143"], originals["onnx::MatMul_144"]], axis=1))
    assert all(f"/blocks.0/attn/{p}/MatMul" in result.names.origins[qkv] for p in "qkv")
    nodes = {n.name: n for n in simplified.graph.node}
    assert nodes["/blocks.0/attn/{q,k,v}/MatMul"].input[1] == qkv
    assert nodes["/embed/MatMul"].op_type == "Gemm"  # MatMul + Add fused, named after the MatMul
    assert result.names.origins["/embed/MatMul"] == "Gemm made by onnxsim from MatMul /embed/MatMul, Add /embed/Add"
    input_nodes = {n.name for n in model.graph.node}
    for name in nodes:  # each node is an input node, replaces some, or sits next to one ("ANCHOR/OpType")
        anchor = name.rsplit("/", 1)[0]
        assert braced_parts(name) <= input_nodes or braced_parts(anchor) <= input_nodes, name
    feed = {"input": np.random.default_rng(0).normal(size=(3, 8, 8)).astype(np.float32)}
    for ours, theirs in zip(_run(simplified, feed), _run(_plain_onnxsim(model), feed)):
        np.testing.assert_array_equal(ours, theirs)


def braced_parts(name: str) -> set[str]:
    m = re.fullmatch(r"(.*)\{(.*)\}(.*)", name)
    return {f"{m.group(1)}{p}{m.group(3)}" for p in m.group(2).split(",")} if m else {name}


def test_a_folded_shape_constant_takes_the_name_of_the_value_it_replaced():
    model = onnx.load(MODELS / "digits_tf.onnx")
    result = simplify(model)
    (name, origin), = result.names.origins.items()
    input_values = {v for n in model.graph.node for v in n.output}
    assert name in input_values  # it was computed at run time in the input model
    assert origin.startswith("computed at run time by Cast ")


@pytest.mark.parametrize("model", ["digits_cnn", "digits_mlp", "digits_resnet", "digits_tf", "digits_transformer"])
def test_no_onnxsim_name_is_left_in_a_bundled_model(model):
    simplified = simplify(onnx.load(MODELS / f"{model}.onnx")).model
    left = sorted(n for n in _names(simplified) | {n.name for n in simplified.graph.node} if ONNXSIM_NAME.match(n))
    assert not left


def test_braced_names_keep_the_common_head_and_tail():
    assert braced(["/a/q/MatMul", "/a/k/MatMul", "/a/v/MatMul"]) == "/a/{q,k,v}/MatMul"
    assert braced(["onnx::MatMul_142", "onnx::MatMul_143"]) == "onnx::MatMul_{142,143}"
    assert braced(["w"]) == "w"
    assert braced(["conv1.weight", "fc.weight"]) == "{conv1,fc}.weight"
