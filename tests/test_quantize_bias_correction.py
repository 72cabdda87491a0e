"""Bias correction of static int8: each Conv/Gemm bias absorbs the mean output
shift of its weight rounding, measured on the calibration data."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import MODELS
from onnxshrink.quantization import QuantizeOptions, quantize_model
from onnxshrink.runtime import create_session
from onnxshrink.validation import compare_models

CNN = MODELS / "digits_cnn.onnx"
CALIB = MODELS / "digits_cnn.calib.npz"


def _gemm_model(w: np.ndarray, b: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="gemm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", w.shape[1]])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _mean_error(model: onnx.ModelProto, reference: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    def run(m):
        s = create_session(m)
        return s.run(None, {"x": x})[0].astype(np.float64)
    return (run(model) - run(reference)).mean(axis=0)


def test_gemm_mean_output_error_is_removed():
    """Inputs with a large mean and a coarse weight grid: without correction the
    mean output error per channel is large; with it, it is a fraction of that."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 16)).astype(np.float32)
    model = _gemm_model(w, rng.normal(size=16).astype(np.float32))
    x = (rng.normal(size=(256, 64)) + 3.0).astype(np.float32)
    # A coarse grid on purpose (no floor: the uncorrected model is meant to be off).
    options = dict(per_channel=False, weight_range_bits=3, latency_guard=False, gate_floor=False)
    plain = quantize_model(model, [{"x": x}], QuantizeOptions(bias_correction=False, **options))
    fixed = quantize_model(model, [{"x": x}], QuantizeOptions(bias_correction=True, **options))
    before, after = _mean_error(plain.model, model, x), _mean_error(fixed.model, model, x)
    assert np.abs(after).mean() < 0.25 * np.abs(before).mean()
    assert [n["weight"]["bias"] for n in fixed.report.nodes] == ["int32, corrected"]
    assert [n["weight"]["bias"] for n in plain.report.nodes] == ["int32"]


def test_bundled_cnn_gains_sqnr_and_keeps_accuracy():
    """On digits_cnn (Conv and Gemm) with weights in a 4-bit range: higher SQNR
    and no lower accuracy than without correction."""
    model = onnx.load(str(CNN))
    results = {}
    for correct in (False, True):
        q = quantize_model(model, CALIB, QuantizeOptions(weight_range_bits=4, bias_correction=correct,
                                                         latency_guard=False))
        v = compare_models(model, q.model, MODELS / "digits_cnn.eval.npz", measure_latency=False)
        results[correct] = (list(v.outputs.values())[0]["sqnr_db"], v.accuracy["candidate"])
        corrected = sum(1 for n in q.report.nodes if n["weight"] and n["weight"].get("bias") == "int32, corrected")
        assert (corrected >= 3) if correct else corrected == 0
    assert results[True][0] > results[False][0] + 1.0
    assert results[True][1] >= results[False][1]


def test_one_shot_reader_skips_correction_with_a_warning():
    model = onnx.load(str(CNN))
    name = model.graph.input[0].name
    arrays = np.load(CALIB)
    batches = iter([{name: arrays[name][:64]}])

    class OneShot:
        def get_next(self):
            return next(batches, None)

    q = quantize_model(model, OneShot(), QuantizeOptions(latency_guard=False))
    assert any("bias correction skipped" in w for w in q.report.warnings)
    assert all((n["weight"] or {}).get("bias") in (None, "int32") for n in q.report.nodes)
