"""Weight-only quantization on the bundled digits models: accuracy and GPTQ's gain."""

from __future__ import annotations

import numpy as np
import pytest

from onnxshrink.lowbit import WeightOnlyOptions, collect_weight_statistics, quantize_weights
from onnxshrink.model import load_model
from onnxshrink.runtime import create_session
from onnxshrink.validation import compare_models

from conftest import BUNDLED, MODELS


@pytest.mark.parametrize("name", BUNDLED)
def test_int8_weight_only_keeps_accuracy(name):
    src = load_model(MODELS / f"{name}.onnx")
    result = quantize_weights(src, WeightOnlyOptions(bits=8))
    assert result.modified
    v = compare_models(src, result.model, MODELS / f"{name}.eval.npz", measure_latency=False)
    assert v.accuracy_drop_points <= 0.2
    assert result.report.size_bytes["quantized"] < 0.4 * result.report.size_bytes["original"]


def test_gptq_beats_nearest_at_4_bits():
    """On digits_mlp (every weight gets a Hessian): lower layer output error
    estimates, and lower error of the model's logits on calibration inputs."""
    src = load_model(MODELS / "digits_mlp.onnx")
    calib = MODELS / "digits_mlp.calib.npz"
    stats = collect_weight_statistics(src, calib, WeightOnlyOptions(bits=4))
    near = quantize_weights(src, WeightOnlyOptions(bits=4), layer_stats=stats)
    gptq = quantize_weights(src, WeightOnlyOptions(bits=4, rounding="gptq"), layer_stats=stats)
    for a, b in zip(near.report.weights, gptq.report.weights):
        assert b.rounding == "gptq" and b.output_error < a.output_error
    x = np.load(calib)[create_session(src).get_inputs()[0].name]

    def logits(model):
        s = create_session(model)
        return s.run(None, {s.get_inputs()[0].name: x})[0]

    ref = logits(src)
    err_near = np.square(logits(near.model) - ref).mean()
    err_gptq = np.square(logits(gptq.model) - ref).mean()
    assert err_gptq < 0.5 * err_near
