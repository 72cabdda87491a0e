"""The latency warning names what was measured and the CPU's flags, not a guess."""

from __future__ import annotations

import numpy as np
import onnx

from conftest import MODELS
from onnxshrink.quantization import QuantizeOptions, quantize_model
from onnxshrink.quantization import slowdown
from onnxshrink.quantization.slowdown import cpu_flags, kernel_kind, lacks_vnni, one_input, slowdown_warning


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx2 fma\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\n")
    assert cpu_flags(x86) == {"fpu", "sse2", "avx2", "fma"} and lacks_vnni(cpu_flags(x86))
    assert cpu_flags(arm) is None and not lacks_vnni(None)  # not x86: VNNI is not the question
    assert cpu_flags(tmp_path / "missing") is None
    assert not lacks_vnni(frozenset({"avx2", "avx512_vnni"})) and not lacks_vnni(frozenset({"avx2", "avx_vnni"}))


def test_kernels_are_sorted_by_kind():
    assert [kernel_kind(op) for op in ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "MatMulInteger",
                                       "DynamicQuantizeMatMul", "Conv", "Add")] == \
        ["conversion", "conversion", "integer", "integer", "integer", "float", "float"]


def test_the_warning_names_the_profiled_kernels_and_a_cpu_without_vnni(monkeypatch):
    model = onnx.load(str(MODELS / "digits_cnn.onnx"))
    calib = str(MODELS / "digits_cnn.calib.npz")
    q = quantize_model(model, calib, QuantizeOptions(latency_guard=False)).model
    feed = one_input(model, calib)
    assert slowdown_warning(model, q, feed, {"reference": 2.0, "candidate": 1.0}) is None
    monkeypatch.setattr(slowdown, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    text = slowdown_warning(model, q, feed, {"reference": 1.0, "candidate": 2.0})
    assert text.startswith("the int8 model is slower than fp32 on this CPU (2.000 ms vs 1.000 ms")
    assert "no VNNI" in text and "QLinearConv" in text and "conversions" in text
    assert "too small" not in text
    monkeypatch.setattr(slowdown, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni"}))
    assert "VNNI" not in slowdown_warning(model, q, feed, {"reference": 1.0, "candidate": 2.0})
    assert np.asarray(feed["input"] if "input" in feed else next(iter(feed.values()))).shape[0] == 1
