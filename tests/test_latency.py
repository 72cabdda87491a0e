"""Latency against the original (onnxshrink/latency.py): the ratio and noise of
interleaved rounds, the "slower beyond the noise" test, real timings only
with wide margins, and every command's report carrying it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from onnxshrink.cli import app
from onnxshrink.latency import NOISE_FLOOR, Latency, compare_latency, sample_feed

MODELS = __import__("pathlib").Path(__file__).resolve().parent.parent / "models"
LATENCY_KEYS = {"reference_ms", "candidate_ms", "ratio", "noise", "form", "rounds", "runs", "threads", "batch",
                "slower"}


def test_ratio_is_the_median_of_per_round_ratios_and_noise_their_spread():
    # Round 3 is disturbed (the machine got busy while the reference ran): the
    # median of per-round ratios ignores it, the medians of times would not pair up.
    lat = Latency.from_rounds([1.0, 1.0, 3.0, 1.0, 1.0], [0.80, 0.82, 0.81, 0.79, 0.80])
    assert lat.ratio == pytest.approx(0.80) and lat.reference_ms == 1.0 and lat.candidate_ms == pytest.approx(0.80)
    assert lat.noise == NOISE_FLOOR  # the middle rounds agree within 1 %: the floor
    assert not lat.slower and lat.within(0.8) and not lat.within(0.79)


def test_slower_only_beyond_the_noise():
    quiet = Latency.from_rounds([1.0] * 5, [1.02, 1.03, 1.02, 1.01, 1.02])  # 2 %: under the floor
    assert not quiet.slower and quiet.slower_text() is None
    slow = Latency.from_rounds([1.0] * 5, [1.20, 1.22, 1.19, 1.21, 1.20])
    assert slow.slower
    line = slow.slower_text("the output")
    assert line.startswith("the output runs slower than the original: 1.20x") and "\n" not in line
    assert "1 thread, batch 1" in line
    # The same median ratio with rounds all over the place is not called slower.
    noisy = Latency.from_rounds([1.0] * 5, [0.7, 0.9, 1.2, 1.5, 1.7])
    assert noisy.ratio == pytest.approx(1.2) and noisy.noise == pytest.approx(0.6) and not noisy.slower


def test_report_object_round_trips_and_reads_as_one_line():
    lat = Latency.from_rounds([0.05] * 3, [0.041] * 3, form="default load form", runs=20)
    d = lat.to_dict()
    assert set(d) == LATENCY_KEYS and d["slower"] is False
    assert Latency.from_dict(json.loads(json.dumps(d))) == Latency.from_rounds([0.05] * 3, [0.041] * 3,
                                                                                 form="default load form", runs=20)
    assert lat.text() == "latency 0.82x the original (0.041 vs 0.050 ms, 1 thread, batch 1, default load form)"
    with pytest.raises(ValueError):
        Latency.from_rounds([1.0, 1.0], [1.0])


def _chain(size: int, layers: int) -> onnx.ModelProto:
    """x [1, size] through ``layers`` MatMuls of size x size (seeded)."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((size, size)) / size).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"y{i}"]))
        x = f"y{i}"
    nodes.append(helper.make_node("ReduceSum", [x], ["out"], keepdims=1))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", size])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_a_model_made_slower_on_purpose_measures_slower():
    """Real timings, wide margin: 24 layers of 256x256 against one of 16x16
    (~6000x the multiply-adds) cannot come out within the noise."""
    fast, slow = _chain(16, 1), _chain(256, 24)
    feed = {"x": np.ones((1, 16), np.float32)}
    slow.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 256
    lat = compare_latency(fast, _reshaped(slow), feed, rounds=3, runs=5)
    assert lat.slower and lat.ratio > 3 and lat.rounds == 3 and lat.threads == 1
    reverse = compare_latency(_reshaped(slow), fast, feed, rounds=3, runs=5)
    assert not reverse.slower and reverse.ratio < 0.5


def _reshaped(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` taking the [1, 16] input of the small chain (tiled to its width)."""
    width = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 16
    reps = numpy_helper.from_array(np.array([1, width // 16], np.int64), "reps")
    m.graph.initializer.append(reps)
    first = m.graph.node[0]
    tile = helper.make_node("Tile", ["x", "reps"], ["x_wide"])
    first.input[0] = "x_wide"
    m.graph.node.insert(0, tile)
    return m


def test_sample_feed_is_the_first_sample_or_random_inputs():
    model = onnx.load(str(MODELS / "digits_mlp.onnx"))
    feed = sample_feed(model, str(MODELS / "digits_mlp.eval.npz"))
    data = np.load(MODELS / "digits_mlp.eval.npz")
    name = model.graph.input[0].name
    assert list(feed) == [name] and np.array_equal(feed[name], data[name][:1])
    random = sample_feed(model, None)
    assert random[name].shape == (1,) + data[name].shape[1:]


def _json(tmp_path, *args):
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, [*args, "--json", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_quantize_prune_reports_carry_latency(tmp_path):
    m = str(MODELS / "digits_mlp")
    static = _json(tmp_path, "quantize", f"{m}.onnx", "-o", str(tmp_path / "s.onnx"), "--calib", f"{m}.calib.npz")
    dynamic = _json(tmp_path, "quantize", f"{m}.onnx", "-o", str(tmp_path / "d.onnx"), "--dynamic")
    weights = _json(tmp_path, "quantize", f"{m}.onnx", "-o", str(tmp_path / "w.onnx"), "--weights-only", "--bits", "4")
    pruned = _json(tmp_path, "prune", f"{m}.onnx", "-o", str(tmp_path / "p.onnx"), "--sparsity", "0.5")
    for report in (static, dynamic, weights, pruned):
        assert set(report["latency"]) == LATENCY_KEYS
        assert report["latency"]["threads"] == 1 and report["latency"]["batch"] == 1
        assert report["latency"]["form"] == "as written" and report["latency"]["reference_ms"] > 0
    # The weight-only model as written dequantizes every weight on every run: a
    # warning says so when that measures slower, naming the faster packed forms.
    if weights["latency"]["slower"]:
        assert any("slower than the original" in w and "unpack" in w for w in weights["warnings"])
    skipped = _json(tmp_path, "prune", f"{m}.onnx", "-o", str(tmp_path / "p2.onnx"), "--sparsity", "0.5", "--no-latency")
    assert skipped["latency"] is None


def test_quantize_warns_about_a_slowdown_only_beyond_the_noise(monkeypatch):
    """The slowdown warning (and its profile) follows Latency.slower: injected timings."""
    from onnxshrink.quantization import QuantizeOptions, check, quantize_model

    calls = {"n": 0}

    def fake(reference, candidate, data, *, shapes=None, form="as written"):
        calls["n"] += 1
        return Latency.from_rounds([1.0] * 5, ratios, form=form)

    monkeypatch.setattr(check, "time_result", fake)  # final_check times every quantize mode
    model = onnx.load(str(MODELS / "digits_mlp.onnx"))
    calib = str(MODELS / "digits_mlp.calib.npz")
    ratios = [1.02, 1.01, 1.03, 1.02, 1.02]
    within = quantize_model(model, calib, QuantizeOptions())
    assert within.report.latency["ratio"] == pytest.approx(1.02) and not within.report.latency["slower"]
    assert not any("slower than fp32" in w for w in within.report.warnings)
    ratios = [1.5, 1.5, 1.6, 1.5, 1.4]
    beyond = quantize_model(model, calib, QuantizeOptions())
    assert beyond.report.latency["slower"] and any("slower than fp32" in w for w in beyond.report.warnings)
    assert beyond.report.validation["latency_ms"]["candidate"] == pytest.approx(1.5)
    assert calls["n"] == 2


def test_large_or_slow_models_are_timed_one_at_a_time_with_fewer_runs(monkeypatch):
    """Above INTERLEAVE_MAX_BYTES one session at a time; runs longer than the
    round budget get MIN_RUNS runs and SLOW_ROUNDS rounds (thresholds lowered here)."""
    from onnxshrink import latency

    monkeypatch.setattr(latency, "INTERLEAVE_MAX_BYTES", 0)
    monkeypatch.setattr(latency, "ROUND_BUDGET_S", 1e-9)
    feed = {"x": np.ones((1, 16), np.float32)}
    lat = compare_latency(_chain(16, 1), _reshaped(_chain(256, 24)), feed)
    assert (lat.rounds, lat.runs) == (latency.SLOW_ROUNDS, latency.MIN_RUNS)
    assert lat.ratio > 3  # with 3 runs a round, the noise may be too wide to call it slower


def test_without_data_a_model_random_inputs_cannot_run_gets_no_latency():
    """Random int64 indices of the declared shape overrun a 2-row table: with no
    data to time on, the weight-only result carries no latency rather than failing."""
    from onnxshrink.lowbit import WeightOnlyOptions, quantize_weights

    table = numpy_helper.from_array(np.random.default_rng(1).standard_normal((2, 512)).astype(np.float32), "table")
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["out"])], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 512])], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    result = quantize_weights(model, WeightOnlyOptions(bits=8, min_size=0))
    assert result.modified and result.report.latency is None
    ids = {"ids": np.array([[0, 1] * 4], np.int64)}
    lat = compare_latency(model, result.model, ids, rounds=2, runs=3)  # with real indices it times fine
    assert lat.rounds == 2
