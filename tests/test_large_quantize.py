"""Quantizing models whose weights live in external data: mapped weights, and peak memory.

``load_model(map_external_data=True)`` (what ``onnxshrink quantize`` uses)
leaves large weights in their files; every pass and onnxruntime session then
reads them from one mapping instead of holding copies. These tests check the
results are the same as with the weights read into the proto, and that the
CLI's peak RSS stays near the weight bytes (issue 7: the old code peaked at
about 7x them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import child_peak_rss, load_script
from onnxshrink import runtime
from onnxshrink.model import is_mapped, load_model, save_model, serialized_size, tensor_array
from onnxshrink.quantization import QuantizeOptions, quantize_model

ROOT = Path(__file__).resolve().parent.parent


def _external_model(folder: Path, rows: int, cols: int, count: int, *, bias: bool = False) -> tuple[Path, int]:
    """y = Sum_i(x @ W_i (+ b_i)), W_i [rows, cols] fp32 in one external file."""
    return load_script("large_model_passes").external_matmul_model(folder, rows, cols, count, bias=bias, scale=0.05)


def test_mapped_weights_read_run_and_save_like_loaded_ones(tmp_path):
    path, _ = _external_model(tmp_path / "m", 512, 1024, 3, bias=True)
    loaded, mapped = load_model(path), load_model(path, map_external_data=True)
    weights = [t for t in mapped.graph.initializer if t.name.startswith("w")]
    assert weights and all(is_mapped(t) for t in weights)
    assert not any(is_mapped(t) for t in mapped.graph.initializer if t.name.startswith("b"))  # small: read in
    for a, b in zip(loaded.graph.initializer, mapped.graph.initializer):
        assert np.array_equal(tensor_array(a), tensor_array(b))
    assert serialized_size(mapped) == pytest.approx(serialized_size(loaded), rel=1e-3)
    x = np.random.default_rng(1).standard_normal((4, 512)).astype(np.float32)
    expected = runtime.create_session(loaded, optimize=False).run(None, {"x": x})[0]
    got = runtime.create_session(mapped, optimize=False).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    save_model(mapped, tmp_path / "out" / "model.onnx")  # reads the mapped data; the input is untouched
    again = load_model(tmp_path / "out" / "model.onnx")
    for a, b in zip(loaded.graph.initializer, again.graph.initializer):
        assert a.raw_data == b.raw_data


def test_session_from_a_temporary_weights_file_matches_the_serialized_one(tmp_path, monkeypatch):
    path, _ = _external_model(tmp_path / "m", 512, 1024, 2)
    model = load_model(path)
    x = np.random.default_rng(2).standard_normal((3, 512)).astype(np.float32)
    expected = runtime.create_session(model, optimize=False).run(None, {"x": x})[0]
    monkeypatch.setattr(runtime, "FILE_SESSION_BYTES", 1)  # this model's weights go through a mapped file
    session = runtime.create_session(model, optimize=False, extra_outputs=["h0"])
    y, h0 = session.run(None, {"x": x})
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert h0.shape == (3, 1024)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_quantizing_mapped_weights_gives_the_same_model(tmp_path, dynamic):
    path, _ = _external_model(tmp_path / "m", 512, 1024, 3, bias=True)
    calib = [{"x": np.random.default_rng(3).standard_normal((16, 512)).astype(np.float32)}]
    # No floor: a random net's answers on 16 random samples are what this test is not about.
    options = QuantizeOptions(dynamic=dynamic, latency_guard=False, gate_floor=False)
    loaded = quantize_model(load_model(path), None if dynamic else calib, options)
    mapped = quantize_model(load_model(path, map_external_data=True), None if dynamic else calib, options)
    assert mapped.model.SerializeToString() == loaded.model.SerializeToString()
    assert mapped.report.size_bytes["original"] == pytest.approx(loaded.report.size_bytes["original"], rel=1e-3)


def test_quantize_peak_memory_stays_near_the_weight_bytes(tmp_path):
    """Static and dynamic quantization of ~120 MB of external weights. The old
    code held the weights 6-7 times over (proto, prepared copy, shape-inference
    serializations, calibration copy, serialized bytes and onnxruntime's copy
    per session); now about once (mapped, shared with onnxruntime)."""
    path, weight_bytes = _external_model(tmp_path / "big", 1024, 7500, 4)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(1).standard_normal((8, 1024)).astype(np.float32))
    cli = ["from onnxshrink.cli import main; main()", "quantize", str(path)]
    idle = child_peak_rss("import onnxruntime, onnx, numpy, onnxshrink.cli, onnxshrink.quantization", tmp=tmp_path)
    for folder in ("q", "d"):  # the command makes no missing output folder
        (tmp_path / folder).mkdir()
    # --no-gate: a random net's answers are not the point here (the check still runs; only no verdict).
    static = child_peak_rss(*cli, "-o", tmp_path / "q" / "model.onnx", "--calib", calib, "--no-gate", "-q", tmp=tmp_path)
    dynamic = child_peak_rss(*cli, "-o", tmp_path / "d" / "model.onnx", "--dynamic", "--no-gate", "-q", tmp=tmp_path)
    for name, peak in (("static", static), ("dynamic", dynamic)):
        ratio = (peak - idle) / weight_bytes
        assert ratio < 3.0, f"{name}: peak RSS {peak / 1e6:.0f} MB, {ratio:.2f}x the {weight_bytes / 1e6:.0f} MB of weights"
