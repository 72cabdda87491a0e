"""`onnxshrink quantize` end to end: options, exit codes, reports, bundled and public models."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import typer
from typer.testing import CliRunner

from onnxshrink.cli.quantize import quantize_command
from onnxshrink.quantization import QuantizeOptions, quantize_model

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command("quantize")(quantize_command)
app.command("noop")(lambda: None)  # a second command keeps `quantize` as a subcommand


def invoke(*args) -> "typer.testing.Result":
    return CliRunner().invoke(app, ["quantize", *map(str, args)], env={"COLUMNS": "200"})


@pytest.fixture
def conv_files(tmp_path: Path) -> tuple[Path, Path]:
    from test_quantize import batches, conv_net

    model, data = tmp_path / "net.onnx", tmp_path / "calib.npz"
    onnx.save(conv_net(), model)
    x = np.concatenate([b["x"] for b in batches(4)])
    np.savez(data, x=x, labels=np.zeros(len(x), np.int64))
    return model, data


def accuracy(model: onnx.ModelProto | str, data: Path) -> float:
    session = ort.InferenceSession(model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model),
                                   providers=["CPUExecutionProvider"])
    d = np.load(data)
    return float((session.run(None, {"input": d["input"]})[0].argmax(1) == d["labels"]).mean())


def test_every_option_has_a_flag():
    params = set(inspect.signature(quantize_command).parameters)
    assert {f.name for f in dataclasses.fields(QuantizeOptions)} <= params
    help_text = invoke("--help").output
    for flag in ("--calib", "--method", "--per-channel", "--activations", "--exclude-nodes", "--exclude-ops",
                 "--min-cosine", "--max-accuracy-drop", "--eval", "--dynamic", "--json", "--quiet"):
        assert flag in help_text


def test_quantize_writes_model_and_json_report(conv_files, tmp_path):
    model, data = conv_files
    out, report = tmp_path / "q.onnx", tmp_path / "q.json"
    result = invoke(model, "-o", out, "--calib", data, "--json", report, "--method", "mse", "--no-latency-guard")
    assert result.exit_code == 0, result.output
    assert "QLinearConv" in result.output and "size:" in result.output
    saved = json.loads(report.read_text())
    assert saved["method"] == "mse" and saved["size_ratio"] > 0  # a tiny net: Q/DQ metadata outweighs its weights
    assert {n["name"] for n in saved["nodes"]} >= {"conv1", "conv2", "fc"}
    assert saved["validation"]["outputs"]["y"]["cosine"] > 0.99
    onnx.checker.check_model(onnx.load(out))


def test_usage_errors_exit_2_and_unmet_targets_exit_1_writing_nothing(conv_files, tmp_path):
    model, data = conv_files
    out = tmp_path / "q.onnx"
    assert invoke(model, "-o", out).exit_code == 2  # no --calib
    assert invoke(model, "-o", out, "--calib", data, "--method", "nope").exit_code == 2
    assert invoke(model, "-o", out, "--calib", data, "--dynamic").exit_code == 2
    result = invoke(model, "-o", out, "--calib", data, "--min-cosine", "1.0", "--no-latency-guard")
    assert result.exit_code == 1 and "nothing written" in result.output
    assert not out.exists()


@pytest.mark.skipif(not (MODELS / "digits_cnn.onnx").exists(), reason="bundled models not built yet")
def test_bundled_cnn_default_loses_at_most_half_a_point_and_beats_onnxruntime(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    src, calib, ev = (MODELS / f"digits_cnn{s}" for s in (".onnx", ".calib.npz", ".eval.npz"))
    ours = quantize_model(onnx.load(src), calib, QuantizeOptions(latency_guard=False)).model

    class Reader(CalibrationDataReader):
        def __init__(self):
            d = np.load(calib)
            self.items = iter({"input": d["input"][k:k + 1]} for k in range(len(d["input"])))

        def get_next(self):
            return next(self.items, None)

    theirs = tmp_path / "ort.onnx"
    quantize_static(str(src), str(theirs), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
    base, a_ours, a_theirs = accuracy(str(src), ev), accuracy(ours, ev), accuracy(str(theirs), ev)
    assert base - a_ours <= 0.005
    assert a_ours >= a_theirs


@pytest.mark.skipif(not (MODELS / "digits_mlp.onnx").exists(), reason="bundled models not built yet")
def test_bundled_mlp_accuracy_aware_reaches_its_target(tmp_path):
    src, calib, ev = (MODELS / f"digits_mlp{s}" for s in (".onnx", ".calib.npz", ".eval.npz"))
    out, report = tmp_path / "q.onnx", tmp_path / "q.json"
    result = invoke(src, "-o", out, "--calib", calib, "--eval", ev, "--max-accuracy-drop", "0.2", "--json", report, "-q")
    assert result.exit_code == 0, result.output
    saved = json.loads(report.read_text())
    assert saved["target"]["met"] and saved["target"]["accuracy_drop_points"] <= 0.2
    assert accuracy(str(src), ev) - accuracy(str(out), ev) <= 0.002


@pytest.mark.skipif(not (LIGHT / "light_squeezenet.onnx").exists(), reason="onnx test data not installed")
def test_light_model_with_computed_weights_quantizes_and_runs():
    model = onnx.load(LIGHT / "light_squeezenet.onnx")  # opset 9, weights made by ConstantOfShape
    feed = [{"data_0": np.random.default_rng(0).random((1, 3, 224, 224), np.float32)}]
    result = quantize_model(model, feed, QuantizeOptions(latency_guard=False))
    assert result.report.prepared["opset_upgraded_from"] == 9
    assert sum(1 for n in result.report.nodes if n["op_type"] == "Conv") >= 20
    session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.isfinite(session.run(None, feed[0])[0]).all()


@pytest.mark.skipif(not (MODELS / "digits_mlp.onnx").exists(), reason="bundled models not built yet")
def test_benchmark_script_writes_its_table(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "bench.md"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_quantize.py"), "--models", "digits_mlp",
                           "--no-light", "--no-memory", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| digits_mlp")]
    assert len(rows) == 2 and "onnxshrink" in rows[0] and "onnxruntime" in rows[1]


def test_dynamic_takes_shape_for_symbolic_dims_of_its_check_inputs(tmp_path):
    """x [batch, n] @ W [16, 8]: random inputs with n = 1 cannot run; --shape x=2x16 can."""
    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "sym",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", "n"])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 8])], [w])
    path = tmp_path / "sym.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), path)
    refused = invoke(path, "-o", tmp_path / "a.onnx", "--dynamic", "-q")
    assert refused.exit_code == 2 and not (tmp_path / "a.onnx").exists()
    done = invoke(path, "-o", tmp_path / "b.onnx", "--dynamic", "--shape", "x=2x16", "--json", tmp_path / "b.json", "-q")
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["validation"]["synthetic_inputs"] and report["nodes"][0]["name"] == "mm"
    bad = invoke(path, "-o", tmp_path / "c.onnx", "--dynamic", "--shape", "x=2by16")
    assert bad.exit_code == 2 and "--shape" in bad.output
