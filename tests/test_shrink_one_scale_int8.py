"""shrink --weight-bits on a small MLP: MatMulNBits has no fused activation,
so each weight-only layer keeps a Relu node fp32 fuses away, and the result
may run no faster than the original. The search then tries static int8 with
one scale per MatMul/Gemm weight (QGemm absorbs the activations) and keeps it
when it is measured faster, within the memory share and at most a quarter
larger on disk. Timings are injected (a fake ``measure`` that reads the
candidate's graph); the model, data, gate and quantization are real."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxshrink.latency import Latency
from onnxshrink.pipeline import ShrinkOptions, shrink
from onnxshrink.quantization import QuantizeOptions, quantize_model
from onnxshrink.recipes import load_recipe
from onnxshrink.validation import Gate

MODELS = Path(__file__).resolve().parent.parent / "models"
WEIGHT_OPS = ("Gemm", "MatMul", "Conv")


def _static(model: onnx.ModelProto) -> bool:
    """Whether activations are quantized (static QDQ), which weight-only models never do."""
    return any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def _fixed(ratio: float) -> Latency:
    return Latency.from_rounds([1.0] * 5, [ratio] * 5, form="default load form")


def _shrink(weight_only: float, static: float):
    original = onnx.load(str(MODELS / "digits_mlp.onnx"))
    calib = [{"input": np.load(MODELS / "digits_mlp.calib.npz")["input"][:64]}]
    evals = [{"input": np.load(MODELS / "digits_mlp.eval.npz")["input"][:128]}]
    recipe = dataclasses.replace(load_recipe("transformer-default"), prune=None)
    options = ShrinkOptions(recipe, gate=Gate(min_cosine=0.99), weight_bits=(4, 8), time_budget=None)
    measure = lambda m: _fixed(static if _static(m) else weight_only)  # noqa: E731
    return shrink(original, calib, options, eval_data=evals, measure=measure)


def _weight_scales(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The DequantizeLinear scale of each weight input, by the op type of the node it feeds."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    out = {}
    for node in model.graph.node:
        if node.op_type in WEIGHT_OPS:
            weight = node.input[1]
            if weight in dq:
                out[f"{node.op_type}:{node.name}"] = inits[dq[weight].input[1]]
    return out


def test_a_weight_only_winner_no_faster_than_the_original_gives_way_to_one_scale_int8():
    result = _shrink(weight_only=1.02, static=0.9)
    model = result.model
    assert _static(model)
    assert any("one scale per MatMul/Gemm weight" in note and "kept" in note for note in result.report["notes"])
    scales = _weight_scales(model)
    assert scales and all(s.size == 1 for s in scales.values())  # one scale per Gemm/MatMul weight
    chosen = next(r for r in result.report["search"] if r["chosen"])
    weight_only = [r for r in result.report["search"] if r["passed"] and "static int8" not in r["mode"]]
    assert chosen["latency_ratio"] < 1.0
    assert chosen["size_bytes"] * 0.8 <= min(r["size_bytes"] for r in weight_only)
    assert result.report["passed"]


@pytest.mark.parametrize("weight_only, static", [(1.02, 1.05), (0.8, 0.5)])
def test_one_scale_int8_is_kept_only_when_the_winner_is_not_clearly_faster_and_it_is_faster(weight_only, static):
    result = _shrink(weight_only=weight_only, static=static)
    tried = [r for r in result.report["search"] if "one scale per MatMul/Gemm" in r["mode"]]
    assert not _static(result.model)
    assert not any("one scale" in note for note in result.report["notes"])
    if weight_only < 1.0:
        assert not tried  # clearly faster already: not tried at all
    else:
        assert tried and not tried[0]["chosen"]


def test_per_tensor_ops_give_one_scale_to_those_ops_and_leave_conv_per_channel():
    model = onnx.load(str(MODELS / "digits_cnn.onnx"))
    calib = [{"input": np.load(MODELS / "digits_cnn.calib.npz")["input"][:32]}]
    plain = quantize_model(model, calib, QuantizeOptions(gate_floor=False)).model
    mixed = quantize_model(model, calib, QuantizeOptions(gate_floor=False, per_tensor_ops=("Gemm", "MatMul"))).model
    before, after = _weight_scales(plain), _weight_scales(mixed)
    assert any(k.startswith("Conv") for k in after) and any(k.startswith(("Gemm", "MatMul")) for k in after)
    for key, scale in after.items():
        if key.startswith("Conv"):
            assert scale.size > 1 and scale.size == before[key].size
        else:
            assert scale.size == 1 and before[key].size > 1
