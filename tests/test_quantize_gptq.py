"""Static int8 rounds its weights by GPTQ (onnxshrink.quantization.weight_rounding).

The codes must stay within the target's bound exactly (the CPU computes them
exactly only there), keep zeros zero, lower each layer's output error on the
calibration data against rounding to nearest on the same scales, and come out
the same on every run.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import MODELS, run_cli
from onnxshrink.data import NpzData, model_inputs
from onnxshrink.errors import UsageError
from onnxshrink.quantization import QuantizeOptions, quantize_model
from onnxshrink.runtime import capture
from onnxshrink.stats.rounding import gptq_round

FAST = QuantizeOptions(latency_guard=False, gate_floor=False)
MLP, CNN = MODELS / "digits_mlp", MODELS / "digits_cnn"


def dequantized_weights(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Weight name -> (int8 codes, dequantized float64 values), from the DequantizeLinear of each int8 weight."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or inits.get(node.input[0], np.zeros(0)).dtype != np.int8:
            continue
        codes, scale = inits[node.input[0]], inits[node.input[1]].astype(np.float64)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim:
            scale = scale.reshape([-1 if d == axis else 1 for d in range(codes.ndim)])
        found[node.input[0].removesuffix("_quantized")] = (codes, codes.astype(np.float64) * scale)
    return found


def with_zeros(path, share: float = 0.3, seed: int = 0) -> onnx.ModelProto:
    """The model at ``path`` with a random ``share`` of each 2-D+ weight set to exactly zero (as after pruning)."""
    model = onnx.load(str(path))
    rng = np.random.default_rng(seed)
    for t in model.graph.initializer:
        w = numpy_helper.to_array(t)
        if w.ndim >= 2:
            w = np.where(rng.random(w.shape) < share, np.float32(0), w).astype(w.dtype)
            t.CopyFrom(numpy_helper.from_array(w, t.name))
    return model


@pytest.mark.parametrize("target, bound", [("x86-avx2", 64), ("x86-vnni", 127)])
def test_gptq_codes_stay_within_the_target_bound_and_zeros_stay_zero(target, bound):
    model = with_zeros(f"{CNN}.onnx")
    zeros = {t.name: numpy_helper.to_array(t) == 0 for t in model.graph.initializer}
    options = dataclasses.replace(FAST, target=target)
    gptq = quantize_model(model, f"{CNN}.calib.npz", options)
    nearest = quantize_model(model, f"{CNN}.calib.npz", dataclasses.replace(options, weight_rounding="nearest"))
    assert gptq.report.weight_rounding == "gptq" and nearest.report.weight_rounding == "nearest"
    assert {n["weight"]["rounding"] for n in gptq.report.nodes if n["weight"]} == {"gptq"}
    g, n = dequantized_weights(gptq.model), dequantized_weights(nearest.model)
    assert g.keys() == n.keys() and len(g) >= 4
    moved = 0
    for name, (codes, _) in g.items():
        assert int(np.abs(codes.astype(np.int32)).max()) <= bound, name
        assert int(np.abs(codes.astype(np.int32)).max()) >= bound - 1, name  # the scale still spans the range
        if name in zeros and zeros[name].shape == codes.shape:  # Conv weights (BatchNorm folding scales, keeps zeros)
            assert not codes[zeros[name]].any(), f"{name}: a zero weight got a non-zero code"
        moved += int((codes != n[name][0]).sum())
    assert moved > 0, "GPTQ gave exactly the nearest codes: nothing was compensated"


def test_gptq_lowers_each_layer_output_error_on_the_calibration_data():
    model = onnx.load(f"{MLP}.onnx")
    gptq = dequantized_weights(quantize_model(model, f"{MLP}.calib.npz", FAST).model)
    nearest = dequantized_weights(quantize_model(model, f"{MLP}.calib.npz",
                                                 dataclasses.replace(FAST, weight_rounding="nearest")).model)
    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    layers = [(n.input[0], n.input[1]) for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    batches = NpzData(f"{MLP}.calib.npz").batches(model_inputs(model), 64)
    inputs = {x: [] for x, _ in layers}
    for batch, values in capture(model, [x for x, _ in layers if x != "input"], batches):
        for x in inputs:
            inputs[x].append(np.asarray(batch.inputs[x] if x == "input" else values[x], np.float64))
    total = {"gptq": 0.0, "nearest": 0.0}
    for x_name, w_name in layers:
        x, w = np.concatenate(inputs[x_name]), weights[w_name]
        def out(v):  # Gemm's weights here are [out, in] (transB), MatMul's [in, out]
            return x @ (v if v.shape[0] == x.shape[1] else v.T)
        errors = {k: float(np.sum((out(d[w_name][1]) - out(w)) ** 2)) for k, d in (("gptq", gptq), ("nearest", nearest))}
        assert errors["gptq"] <= errors["nearest"], (w_name, errors)
        for k in total:
            total[k] += errors[k] / float(np.sum(out(w) ** 2))
    assert total["gptq"] < 0.5 * total["nearest"], total


def test_gptq_round_clips_to_the_bound_even_when_compensation_pushes_past_it():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(1, 8, 32))
    w[0, :, 0] = 1.0  # every row's largest weight first: its error pushes later columns outward
    x = rng.normal(size=(256, 32)) + 2.0 * rng.normal(size=(256, 1))  # strongly correlated features
    steps = np.full(w.shape, np.abs(w).max() / 64)
    codes = gptq_round(w, steps, (x.T @ x)[None] / 256, -64, 64, keep_zero=np.abs(w) < 0.05)
    assert codes.min() >= -64 and codes.max() <= 64 and np.array_equal(codes, np.rint(codes))
    assert not codes[np.abs(w) < 0.05].any()


def test_same_input_and_options_give_byte_identical_models(tmp_path):
    outs = []
    for k in range(2):
        out = tmp_path / f"q{k}.onnx"
        p = run_cli("quantize", f"{CNN}.onnx", "-o", out, "--calib", f"{CNN}.calib.npz", "--no-latency-guard",
                    "--quiet")
        assert p.returncode == 0, p.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_weight_rounding_is_checked(tmp_path):
    with pytest.raises(UsageError, match="--weight-rounding"):
        QuantizeOptions(weight_rounding="stochastic")
    p = run_cli("quantize", f"{MLP}.onnx", "-o", tmp_path / "q.onnx", "--calib", f"{MLP}.calib.npz",
                "--weight-rounding", "best")
    assert p.returncode == 2 and "--weight-rounding" in p.stderr and "Traceback" not in p.stderr
    assert not list(tmp_path.iterdir())


def test_layers_past_the_hessian_budget_round_to_nearest_and_small_runs_still_work(monkeypatch):
    from onnxshrink.quantization import weight_rounding

    # digits_mlp: fc1 reads 64 features (32 KiB of Hessian), w2 256 (512 KiB), fc3 128 (128 KiB)
    monkeypatch.setattr(weight_rounding, "HESSIAN_BUDGET_BYTES", 200 << 10)
    monkeypatch.setattr(weight_rounding, "RUN_BYTES", 1)  # one sample per onnxruntime run
    result = quantize_model(onnx.load(f"{MLP}.onnx"), f"{MLP}.calib.npz", FAST)
    rounding = {n["name"]: n["weight"]["rounding"] for n in result.report.nodes if n["weight"]}
    assert sorted(rounding.values()) == ["gptq", "gptq", "nearest"], rounding
    nearest = dequantized_weights(quantize_model(onnx.load(f"{MLP}.onnx"), f"{MLP}.calib.npz",
                                                 dataclasses.replace(FAST, weight_rounding="nearest")).model)
    codes = dequantized_weights(result.model)
    assert np.array_equal(codes["w2"][0], nearest["w2"][0])
    assert not np.array_equal(codes["fc1.weight"][0], nearest["fc1.weight"][0])
    assert all(int(np.abs(c.astype(np.int32)).max()) <= 64 for c, _ in codes.values())


def test_auto_rounds_by_gptq_below_the_size_limit_and_says_when_it_does_not(monkeypatch):
    """--weight-rounding auto (the default): GPTQ on a bundled model; above the size limit
    nearest, with a warning that names the limit; gptq forces it whatever the size."""
    import onnxshrink.quantization.quantizer as quantizer

    model, calib = onnx.load(f"{MLP}.onnx"), f"{MLP}.calib.npz"
    auto = quantize_model(model, calib, FAST)
    assert auto.report.weight_rounding == "gptq" and not any("GPTQ" in w for w in auto.report.warnings)
    monkeypatch.setattr(quantizer, "GPTQ_AUTO_MAX_BYTES", 1024)
    big = quantize_model(model, calib, FAST)
    assert big.report.weight_rounding == "nearest"
    assert any("GPTQ weight rounding skipped" in w and "above 0 MiB" in w for w in big.report.warnings)
    nearest = quantize_model(model, calib, dataclasses.replace(FAST, weight_rounding="nearest"))
    assert big.model.SerializeToString() == nearest.model.SerializeToString()
    forced = quantize_model(model, calib, dataclasses.replace(FAST, weight_rounding="gptq"))
    assert forced.report.weight_rounding == "gptq"
    assert forced.model.SerializeToString() == auto.model.SerializeToString()


def test_a_prepared_cache_gives_the_same_models_and_calibrates_once(monkeypatch):
    """quantize_model(cache=...) on the same model object and data reuses the
    preparation, calibration and Hessians: the models are byte-identical to
    uncached runs at each weight code range, and the data is read for them once."""
    import onnxshrink.quantization.quantizer as quantizer
    from onnxshrink.quantization.quantizer import PreparedCache

    model = onnx.load(str(MODELS / "digits_cnn.onnx"))
    calib = str(CNN) + ".calib.npz"
    plain = {bits: quantize_model(model, calib, QuantizeOptions(weight_range_bits=bits, gate_floor=False),
                                  measure_latency=False).model.SerializeToString() for bits in (8, 4)}
    calls = []
    real = quantizer.calibrate
    monkeypatch.setattr(quantizer, "calibrate", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = PreparedCache()
    first = None
    for bits in (8, 4, 6):
        q = quantize_model(model, calib, QuantizeOptions(weight_range_bits=bits, gate_floor=False),
                           measure_latency=False, cache=cache)
        if bits in plain:
            assert q.model.SerializeToString() == plain[bits]
        first = len(calls) if first is None else first
    assert first >= 1 and len(calls) == first  # the later ranges read no data
    other = onnx.ModelProto()
    other.CopyFrom(model)  # another model object: prepared and calibrated anew
    quantize_model(other, calib, QuantizeOptions(gate_floor=False), measure_latency=False, cache=cache)
    assert len(calls) > first
