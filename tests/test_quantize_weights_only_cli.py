"""`quantize --weights-only`: the flags reach the pass, an all-zero channel stays finite, bad flags exit 2."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_cli


def _conv_with_zero_channel(path):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 4, 3, 3)).astype(np.float32)
    w[3] = 0
    g = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1], name="conv")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
                          [numpy_helper.from_array(w, "W")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key="labels", value="a,b,c")
    onnx.save(model, path)


@pytest.mark.parametrize("bits", ["8", "4"])
def test_zero_channel_stays_finite_and_zero(tmp_path, bits):
    src, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    _conv_with_zero_channel(src)
    result = run_cli("quantize", src, "-o", out, "--weights-only", "--bits", bits, "--min-size", "0",
                     "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    q = onnx.load(str(out))
    assert {p.key: p.value for p in q.metadata_props} == {"labels": "a,b,c"}
    codes = [numpy_helper.to_array(t) for t in q.graph.initializer if t.data_type in (TensorProto.INT8, TensorProto.INT4)]
    assert codes and all(np.all(c[3] == 0) for c in codes)
    x = np.random.default_rng(1).normal(size=(1, 4, 8, 8)).astype(np.float32)
    y = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.isfinite(y).all() and np.all(y[:, 3] == 0)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["weights"][0]["bits"] == int(bits)


@pytest.mark.parametrize("flags, message", [
    (["--bits", "9"], "--bits"),
    (["--granularity", "rows"], "--granularity"),
    (["--rounding", "gptq"], "--calib"),
    (["--dynamic"], "--dynamic"),
])
def test_bad_weight_only_flags_exit_2(tmp_path, flags, message):
    src = tmp_path / "m.onnx"
    _conv_with_zero_channel(src)
    result = run_cli("quantize", src, "-o", tmp_path / "q.onnx", "--weights-only", *flags)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "q.onnx").exists()


def test_narrow_weight_range_keeps_int8_kernels_and_packs_smaller(tmp_path):
    """--weight-range-bits 4: int8 weights whose codes lie in [-7, 7]; same graph, smaller packed size."""
    from conftest import MODELS

    src = MODELS / "digits_mlp.onnx"
    calib = MODELS / "digits_mlp.calib.npz"
    sizes = {}
    for bits in ("8", "4"):
        out = tmp_path / f"q{bits}.onnx"
        result = run_cli("quantize", src, "-o", out, "--calib", calib, "--weight-range-bits", bits, "--no-latency-guard")
        assert result.returncode == 0, result.stderr
        q = onnx.load(str(out))
        codes = [numpy_helper.to_array(t) for t in q.graph.initializer
                 if t.data_type == TensorProto.INT8 and t.name.endswith("_quantized")]
        # "8" is the full range within the default target's bound (x86-avx2: [-64, 64])
        assert codes and max(int(np.abs(c).max()) for c in codes) == (7 if bits == "4" else 64)
        packed = tmp_path / f"q{bits}.onnxz"
        assert run_cli("pack", out, "-o", packed).returncode == 0
        sizes[bits] = packed.stat().st_size
    assert sizes["4"] < 0.7 * sizes["8"]
