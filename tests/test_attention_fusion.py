"""Unmasked multi-head attention on com.microsoft.MultiHeadAttention
(packing/attention_fusion.py, part of the "auto" load form): the exported
dozen nodes become one, the outputs stay the same within float32 rounding,
and anything outside the pattern is left alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxshrink.packing import deployed_model
from onnxshrink.packing.attention_fusion import fuse_attention
from onnxshrink.packing.kernel_fusion import value_shapes

RNG = np.random.default_rng(23)
TOKENS, HEADS, HEAD = 8, 4, 16
D = HEADS * HEAD


def attention_model(scale_op: str | None = "Mul", mask: bool = False, leak: bool = False, out_rank: int = 2,
                    flat_input: bool = False) -> onnx.ModelProto:
    """x[B, S, D] -> q, k, v projections -> heads -> softmax(q k^T * c) v -> [.., D] -> projection.
    ``leak`` also returns the scores; ``flat_input`` feeds q/k/v as [B*S, D]."""
    inits = [numpy_helper.from_array(RNG.normal(0, 0.2, (D, D)).astype(np.float32), f"w{p}") for p in "qkvo"]
    inits += [numpy_helper.from_array(np.array([0, TOKENS, HEADS, HEAD], np.int64), "heads_shape"),
              numpy_helper.from_array(np.array([-1, D] if out_rank == 2 else [0, TOKENS, D], np.int64), "out_shape"),
              numpy_helper.from_array(np.array(0.25 if scale_op == "Mul" else 4.0, np.float32), "c"),
              numpy_helper.from_array(np.array([-1, D], np.int64), "flat")]
    nodes = []
    x = "x"
    if flat_input:
        nodes.append(helper.make_node("Reshape", ["x", "flat"], ["xf"]))
        x = "xf"
        inits[-4] = numpy_helper.from_array(np.array([-1, TOKENS, HEADS, HEAD], np.int64), "heads_shape")
    for p, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [helper.make_node("MatMul", [x, f"w{p}"], [f"{p}3"]),
                  helper.make_node("Reshape", [f"{p}3", "heads_shape"], [f"{p}4"]),
                  helper.make_node("Transpose", [f"{p}4"], [f"{p}h"], perm=perm)]
    nodes.append(helper.make_node("MatMul", ["qh", "kh"], ["scores"]))
    s = "scores"
    if scale_op:
        nodes.append(helper.make_node(scale_op, ["scores", "c"], ["scaled"]))
        s = "scaled"
    if mask:
        inits.append(numpy_helper.from_array(np.triu(np.full((TOKENS, TOKENS), -1e4, np.float32), 1), "mask"))
        nodes.append(helper.make_node("Add", [s, "mask"], ["masked"]))
        s = "masked"
    nodes += [helper.make_node("Softmax", [s], ["probs"], axis=-1),
              helper.make_node("MatMul", ["probs", "vh"], ["ctx"]),
              helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ctx_t", "out_shape"], ["ctx_flat"]),
              helper.make_node("MatMul", ["ctx_flat", "wo"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [TOKENS, D] if out_rank == 2 else [1, TOKENS, D])]
    if leak:
        outputs.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, HEADS, TOKENS, TOKENS]))
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                 [1, TOKENS, D])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def _fused(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy, fuse_attention(copy, value_shapes(copy))


@pytest.mark.parametrize("scale_op", ["Mul", "Div", None])
@pytest.mark.parametrize("out_rank", [2, 3])
def test_attention_becomes_one_node_with_the_same_outputs(scale_op, out_rank):
    model = attention_model(scale_op, out_rank=out_rank)
    fused, count = _fused(model)
    assert count == 1
    ops = [n.op_type for n in fused.graph.node]
    assert ops == ["MatMul", "MatMul", "MatMul", "MultiHeadAttention", "Reshape", "MatMul"]
    mha = fused.graph.node[3]
    attrs = {a.name: helper.get_attribute_value(a) for a in mha.attribute}
    assert attrs["num_heads"] == HEADS and attrs["scale"] == pytest.approx(0.25 if scale_op else 1.0)
    assert list(mha.input) == ["q3", "k3", "v3"] and list(mha.output) == ["ctx_t"]
    assert not {t.name for t in fused.graph.initializer} & {"heads_shape", "c"}  # unread constants go
    onnx.checker.check_model(fused)
    x = RNG.normal(0, 1, (1, TOKENS, D)).astype(np.float32)
    (y,), (ref,) = _run(fused, x), _run(model, x)
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()  # float32 rounding, not a different function


@pytest.mark.parametrize("case", ["mask", "leak", "flat_input"])
def test_other_patterns_stay_as_they_are(case):
    """A mask before the softmax, an intermediate the graph also returns, and
    2-D q/k/v (MultiHeadAttention needs [B, S, D]) are not fused."""
    model = attention_model(**{case: True})
    fused, count = _fused(model)
    assert count == 0 and fused.SerializeToString() == model.SerializeToString()


def test_deployed_digits_transformer_runs_its_heads_fused():
    """The bundled transformer's 4-bit output: in the default form both
    attention layers are fused; on its dequantized (float) form the fusion
    changes the outputs by float32 rounding only. (In the default form the
    same rounding can flip a step of the low-bit kernel's int8 activations,
    so there it is held to the kernel's bound, as the other layers are.)"""
    from onnxshrink.lowbit import WeightOnlyOptions, quantize_weights
    from onnxshrink.simplify import simplify

    models = Path(__file__).resolve().parent.parent / "models"
    base = simplify(onnx.load(str(models / "digits_transformer.onnx"))).model
    quantized = quantize_weights(base, WeightOnlyOptions(bits=4), measure_latency=False).model
    deployed, _ = deployed_model(quantized, "auto")
    assert sum(n.op_type == "MultiHeadAttention" for n in deployed.graph.node) == 2
    assert not any(n.op_type in ("Softmax", "Transpose") for n in deployed.graph.node)
    reference, _ = deployed_model(quantized, "float")
    fused, count = _fused(reference)
    assert count == 2
    x = np.load(models / "digits_transformer.eval.npz")
    x = x[x.files[0]][:16].astype(np.float32)
    (y,), (ref,) = _run(fused, x), _run(reference, x)
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()
    (y_auto,) = _run(deployed, x)
    assert np.abs(y_auto - ref).max() <= 0.05 * np.abs(ref).max()


def test_softmax_default_axis_before_opset_13_is_not_the_last():
    """Before opset 13 a Softmax without ``axis`` normalises from axis 1: not attention's."""
    model = attention_model()
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    del softmax.attribute[:]
    model.opset_import[0].version = 12
    assert _fused(model)[1] == 0
    model.opset_import[0].version = 13
    assert _fused(model)[1] == 1
