"""shrink --weight-bits on a Conv network: onnxruntime has no low-bit Conv
kernel, so weight-only Conv weights load as float32; the search then tries
the Conv layers in static int8 (integer kernels, narrow codes) and keeps
that when it is lighter in memory and no slower. Timings are injected (a
fake ``measure`` that reads the candidate's graph); the models, gates and
memory shares are real."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxshrink.latency import Latency
from onnxshrink.model import data_bytes
from onnxshrink.packing.forms import deployed_model
from onnxshrink.pipeline import ShrinkOptions, shrink
from onnxshrink.recipes import load_recipe
from onnxshrink.validation import Gate

MODELS = Path(__file__).resolve().parent.parent / "models"


def _conv_net() -> onnx.ModelProto:
    """Three 3x3 Conv layers (1 -> 32 -> 32 -> 64 channels) on 8x8 digits, pooled, one small Gemm."""
    rng = np.random.default_rng(7)
    shapes = {"w1": (32, 1, 3, 3), "w2": (32, 32, 3, 3), "w3": (64, 32, 3, 3)}
    inits = [numpy_helper.from_array((rng.standard_normal(s) * np.sqrt(2.0 / np.prod(s[1:]))).astype(np.float32), n)
             for n, s in shapes.items()]
    inits += [numpy_helper.from_array(rng.standard_normal(s[0]).astype(np.float32) * 0.1, f"b{n[1]}")
              for n, s in shapes.items()]
    inits += [numpy_helper.from_array(rng.standard_normal((10, 64)).astype(np.float32) * 0.2, "fc"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fcb")]
    nodes, x = [], "input"
    for k in (1, 2, 3):
        nodes += [helper.make_node("Conv", [x, f"w{k}", f"b{k}"], [f"c{k}"], pads=[1, 1, 1, 1], name=f"conv{k}"),
                  helper.make_node("Relu", [f"c{k}"], [f"r{k}"])]
        x = f"r{k}"
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pool"]), helper.make_node("Flatten", ["pool"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "convnet", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                               ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _data():
    calib = np.load(MODELS / "digits_resnet.calib.npz")["input"][:64]
    evals = np.load(MODELS / "digits_resnet.eval.npz")["input"][:128]
    return [{"input": calib}], [{"input": evals}]


def _int8_convs(model: onnx.ModelProto) -> bool:
    """Whether activations are quantized (static QDQ), which weight-only models never do."""
    return any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def _shrink(measure):
    original = _conv_net()
    calib, evals = _data()
    recipe = dataclasses.replace(load_recipe("cnn-default"), prune=None)
    options = ShrinkOptions(recipe, gate=Gate(min_cosine=0.99), weight_bits=(4, 8), time_budget=None)
    return original, shrink(original, calib, options, eval_data=evals, measure=measure)


def _fixed(ratio: float) -> Latency:
    return Latency.from_rounds([1.0] * 5, [ratio] * 5, form="default load form")


def test_conv_layers_go_static_int8_when_lighter_and_faster():
    original, result = _shrink(lambda m: _fixed(0.4 if _int8_convs(m) else 1.0))
    model = result.model
    assert _int8_convs(model)
    assert any("static int8" in note for note in result.report["notes"])
    deployed, forms = deployed_model(model)
    # No Conv weight is expanded to float32 at load: they stay int8 codes for the integer kernels.
    assert not [f for f in forms if f.form == "float" and "Conv" in f.op_types]
    assert data_bytes(deployed) < data_bytes(original) / 3
    inits = {t.name: t for t in model.graph.initializer}
    readers = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    note = next(s["note"] for s in result.report["stages"] if s["name"] == "quantize")
    bound = int(re.search(r"codes in \[-(\d+), ", note).group(1))
    assert bound in (7, 31, 64)  # the narrowest of the 4-, 6-, 8-bit ranges that passes the gate
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        codes = numpy_helper.to_array(inits[readers[conv.input[1]].input[0]])
        assert codes.dtype == np.int8
        assert np.abs(codes.astype(int)).max() <= bound
    assert result.report["passed"]


def test_a_slower_conv_int8_candidate_runs_but_is_not_kept():
    _, result = _shrink(lambda m: _fixed(1.5 if _int8_convs(m) else 1.0))
    rows = result.report["search"]
    tried = [r for r in rows if "Conv layers in static int8" in r["mode"]]
    assert tried and tried[0]["passed"] and not tried[0]["chosen"]
    assert not _int8_convs(result.model)
    assert not any("static int8" in note for note in result.report["notes"])
