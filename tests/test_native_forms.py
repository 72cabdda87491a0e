"""materialize="native"/"auto": weight-only quantized MatMul, Gemm and Gather run
on onnxruntime's low-bit kernels (com.microsoft.MatMulNBits,
GatherBlockQuantized) and compute what the dequantized model computes, within
the kernel's documented rounding:

* GatherBlockQuantized dequantizes the gathered rows as DequantizeLinear does
  (one float32 rounding of ``(q - zero_point) * scale``): bit-exact.
* MatMulNBits at accuracy_level 0 dequantizes to float32 and accumulates in
  float32: within the float32 summation bound ``K * eps * sum|a||w|``.
* MatMulNBits at accuracy_level 4 (the default) quantizes each block of A to
  int8 (scale ``max|a| / 127``, round to nearest): within
  ``sum over blocks of scale_a / 2 * sum|w|``, plus the float32 bound.

A wrongly packed code, scale or zero point is off by a whole weight, far outside
these bounds.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxshrink
from onnxshrink.packing import deployed_model, load_packed, materialize, pack_model
from onnxshrink.packing.native import to_native

EPS32 = float(np.finfo(np.float32).eps)
RNG = np.random.default_rng(17)


def _int4(name: str, values: np.ndarray, signed: bool = True) -> TensorProto:
    return helper.make_tensor(name, TensorProto.INT4 if signed else TensorProto.UINT4, values.shape,
                              values.reshape(-1).tolist())


def _model(nodes, inits, inputs, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model)
    return model


def _f(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def matmul_model(k: int = 200, n: int = 48, m: int = 5, *, codes: str = "int4", block: int = 0,
                 op: str = "MatMul", trans_b: int = 0, bias: bool = False, zero_point: bool = False
                 ) -> onnx.ModelProto:
    """x[m, k] -> DequantizeLinear(w_q) -> MatMul or Gemm -> y[m, n]. ``block`` 0
    is per output channel, else scale blocks along K; the weight is (k, n),
    or (n, k) for Gemm with transB."""
    shape = (n, k) if trans_b else (k, n)
    k_axis, n_axis = (1, 0) if trans_b else (0, 1)
    lo, hi = {"int4": (-8, 8), "uint4": (0, 16), "int8": (-128, 128), "uint8": (0, 256)}[codes]
    q = RNG.integers(lo, hi, shape)
    if block:
        scale_shape = list(shape)
        scale_shape[k_axis] = -(-k // block)
        attrs = {"axis": k_axis, "block_size": block}
    else:
        scale_shape = [n]
        attrs = {"axis": n_axis}
    scale = (RNG.random(scale_shape) * 0.02 + 1e-3).astype(np.float32)
    inits = [numpy_helper.from_array(scale, "w_scale")]
    if codes.endswith("4"):
        inits.append(_int4("w_q", q, codes == "int4"))
    else:
        inits.append(numpy_helper.from_array(q.astype(np.int8 if codes == "int8" else np.uint8), "w_q"))
    dq_inputs = ["w_q", "w_scale"]
    if zero_point:
        zp = RNG.integers(lo, hi, scale_shape)
        inits.append(_int4("w_zp", zp, codes == "int4") if codes.endswith("4") else
                     numpy_helper.from_array(zp.astype(np.int8 if codes == "int8" else np.uint8), "w_zp"))
        dq_inputs.append("w_zp")
    nodes = [helper.make_node("DequantizeLinear", dq_inputs, ["w"], name="dq", **attrs)]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(RNG.normal(0, 1, n).astype(np.float32), "b"))
        inputs.append("b")
    extra = {"transB": trans_b} if op == "Gemm" else {}
    nodes.append(helper.make_node(op, inputs, ["y"], name="layer", **extra))
    return _model(nodes, inits, [_f("x", [m, k])], [_f("y", [m, n])])


def run(model: onnx.ModelProto, feeds: dict, optimize: bool = True) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if not optimize:  # onnxruntime would fuse DequantizeLinear + MatMul into MatMulNBits itself
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def dequantized_weight(model: onnx.ModelProto) -> np.ndarray:
    """The float32 weight DequantizeLinear computes, as onnxruntime computes it."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(_f("w", None))
    x = np.zeros([d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim], np.float32)
    return run(probe, {"x": x}, optimize=False)[1]


def int8_activation_bound(a: np.ndarray, w: np.ndarray, block: int) -> np.ndarray:
    """|MatMulNBits(level 4) - a @ w| <= this: each block of a row of ``a`` is
    rounded to int8 steps of max|a_block| / 127 (error <= half a step), plus
    float32 summation."""
    m, k = a.shape
    kb = -(-k // block)
    a64, w64 = np.abs(a.astype(np.float64)), np.abs(w.astype(np.float64))
    pad_a = np.zeros((m, kb * block))
    pad_a[:, :k] = a64
    pad_w = np.zeros((kb * block, w.shape[1]))
    pad_w[:k] = w64
    step = pad_a.reshape(m, kb, block).max(axis=2) / 127  # (m, kb)
    w_blocks = pad_w.reshape(kb, block, -1).sum(axis=1)  # (kb, n)
    return step / 2 @ w_blocks + float32_bound(a, w)


def float32_bound(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    k = a.shape[1]
    return 2 * (k + 2) * EPS32 * (np.abs(a.astype(np.float64)) @ np.abs(w.astype(np.float64))) + 1e-30


def check_matmul(model: onnx.ModelProto, bias: np.ndarray | None = None, level: int = 4, **native) -> dict:
    """Rewrite ``model`` natively, run both, check the bound; the rewrite's form."""
    x = RNG.normal(0, 1, [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]).astype(np.float32)
    w = dequantized_weight(model)
    if any(n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute) for n in model.graph.node):
        w = w.T
    native_model = onnx.ModelProto()
    native_model.CopyFrom(model)
    done, skipped = to_native(native_model, accuracy_level=level, **native)
    assert skipped == {} and len(done) == 1
    assert [n.op_type for n in native_model.graph.node] == ["MatMulNBits"]
    onnx.checker.check_model(native_model)
    (y,) = run(native_model, {"x": x})
    exact = x.astype(np.float64) @ w.astype(np.float64) + (0 if bias is None else bias)
    bound = int8_activation_bound(x, w, done[0].block_size) if level == 4 else float32_bound(x, w)
    err = np.abs(y - exact)
    assert (err <= bound).all(), f"max error / bound {np.max(err / bound):.3g}"
    assert err.max() > 0 or level == 0  # level 4 really quantizes A
    return done[0].to_dict()


@pytest.mark.parametrize("level", [4, 0])
@pytest.mark.parametrize("codes", ["int4", "int8", "uint4", "uint8"])
def test_matmul_per_channel_within_the_kernels_rounding(codes, level):
    form = check_matmul(matmul_model(codes=codes), level=level)
    assert (form["bits"], form["accuracy_level"]) == (int(codes[-1]), level)
    assert form["block_size"] == 128 and "K 200 padded to 256" in form["note"]


@pytest.mark.parametrize("block, kernel_block", [(32, 32), (16, 16), (48, 16), (64, 64)])
def test_blocked_scales_map_onto_kernel_blocks(block, kernel_block):
    """A scale block of 48 runs as kernel blocks of 16 with each scale repeated;
    K=200 leaves a partial last block."""
    form = check_matmul(matmul_model(block=block))
    assert form["block_size"] == kernel_block


@pytest.mark.parametrize("codes", ["int4", "uint4", "int8", "uint8"])
def test_zero_points_are_packed_for_the_kernel(codes):
    check_matmul(matmul_model(codes=codes, block=32, zero_point=True))
    check_matmul(matmul_model(codes=codes, zero_point=True))


@pytest.mark.parametrize("codes, zero_point", [("int4", False), ("int4", True), ("uint4", True), ("int8", False)])
@pytest.mark.parametrize("block", [0, 32])
def test_4_bit_codes_on_the_8_bit_kernel(codes, zero_point, block):
    """``wide``: the same codes and scales on the 8-bit kernel (faster at small
    blocks, docs/speed.md) compute what DequantizeLinear's weights do, within the
    same bound; 8-bit codes are already there."""
    model = matmul_model(k=64, n=48, m=8, codes=codes, block=block, zero_point=zero_point)
    form = check_matmul(model, wide=frozenset({"w"}))
    assert form["bits"] == 8 and form["block_size"] == (32 if block else 64)
    assert ("8-bit kernel" in form["note"]) == codes.endswith("4")


def test_gemm_with_bias_either_layout():
    for trans_b in (0, 1):
        model = matmul_model(op="Gemm", trans_b=trans_b, bias=True, block=32 if trans_b else 0)
        bias = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "b"))
        check_matmul(model, bias=bias)


def test_per_tensor_scale_and_three_d_input():
    model = matmul_model(k=64, n=32)
    dq = model.graph.node[0]
    del dq.attribute[:]
    scale = next(t for t in model.graph.initializer if t.name == "w_scale")
    scale.CopyFrom(numpy_helper.from_array(np.float32(0.0123), "w_scale"))
    model.graph.input[0].CopyFrom(_f("x", [2, 3, 64]))
    model.graph.output[0].CopyFrom(_f("y", [2, 3, 32]))
    x = RNG.normal(0, 1, (2, 3, 64)).astype(np.float32)
    (ref,) = run(model, {"x": x}, optimize=False)
    native = onnx.ModelProto()
    native.CopyFrom(model)
    done, _ = to_native(native, accuracy_level=0)
    assert done[0].block_size == 64
    (y,) = run(native, {"x": x})
    # |w| <= 8 * scale: a bound on the float32 summation error
    assert np.abs(y - ref).max() <= 4 * 64 * EPS32 * np.abs(x).sum(-1).max() * 8 * 0.0123


def test_unsupported_shapes_stay_and_say_why():
    for model, why in ((matmul_model(block=8), "multiple of 16"),
                       (matmul_model(block=24), "multiple of 16")):
        done, skipped = to_native(model)
        assert done == [] and why in skipped["w"]
        assert [n.op_type for n in model.graph.node] == ["DequantizeLinear", "MatMul"]
    # A K-axis per-channel scale (one scale per input feature) has no kernel form.
    model = matmul_model()
    model.graph.node[0].attribute[0].i = 0
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.full(200, 0.01, np.float32), "w_scale"))
    assert "per-input-channel" in to_native(model)[1]["w"]
    # The weight read as MatMul's first input, and a DequantizeLinear output that is a graph output.
    model = matmul_model(k=48, n=48, m=48)
    model.graph.node[1].input[:] = ["w", "x"]
    assert "first input" in to_native(model)[1]["w"]
    model = matmul_model()
    model.graph.output.append(_f("w", None))
    assert to_native(model) == ([], {})


def gather_model(codes: str = "int4", block: int = 0, rows: int = 50, width: int = 40) -> onnx.ModelProto:
    """ids[3, 4] -> Gather(DequantizeLinear(table_q)) -> e[3, 4, width]."""
    lo, hi = {"int4": (-8, 8), "int8": (-128, 128), "uint4": (0, 16)}[codes]
    q = RNG.integers(lo, hi, (rows, width))
    attrs = {"axis": 1, "block_size": block} if block else {"axis": 0}
    scale = (RNG.random((rows, -(-width // block)) if block else rows) * 0.1 + 1e-3).astype(np.float32)
    table = _int4("t_q", q, codes == "int4") if codes.endswith("4") else numpy_helper.from_array(q.astype(np.int8), "t_q")
    inits = [table, numpy_helper.from_array(scale, "t_scale")]
    dq_inputs = ["t_q", "t_scale"]
    if codes == "uint4":
        inits.append(_int4("t_zp", RNG.integers(0, 16, scale.shape), signed=False))
        dq_inputs.append("t_zp")
    nodes = [helper.make_node("DequantizeLinear", dq_inputs, ["t"], name="dq", **attrs),
             helper.make_node("Gather", ["t", "ids"], ["e"], name="embed")]
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [3, 4])
    return _model(nodes, inits, [ids], [_f("e", [3, 4, width])])


@pytest.mark.parametrize("codes, block", [("int4", 0), ("int4", 16), ("int8", 0), ("uint4", 32)])
def test_gather_block_quantized_is_bit_exact(codes, block):
    model = gather_model(codes, block)
    ids = RNG.integers(-50, 50, (3, 4)).astype(np.int64)  # negative indices count from the end, as in Gather
    (ref,) = run(model, {"ids": ids}, optimize=False)
    done, skipped = to_native(model)
    assert skipped == {} and done[0].form == "gather_block_quantized"
    assert [n.op_type for n in model.graph.node] == ["GatherBlockQuantized"]
    (y,) = run(model, {"ids": ids})
    assert np.array_equal(y, ref)


def conv_and_static_model() -> onnx.ModelProto:
    """A weight-only int4 Conv, then a static QDQ MatMul (its input dequantized
    from a QuantizeLinear) and a weight-only int4 MatMul sharing one weight
    with a second MatMul."""
    conv_q = RNG.integers(-8, 8, (4, 2, 3, 3))
    mm_q = RNG.integers(-127, 128, (64, 64)).astype(np.int8)
    wo_q = RNG.integers(-8, 8, (64, 64))
    inits = [_int4("conv_q", conv_q), numpy_helper.from_array(np.full(4, 0.05, np.float32), "conv_s"),
             numpy_helper.from_array(mm_q, "mm_q"), numpy_helper.from_array(np.full(64, 0.01, np.float32), "mm_s"),
             _int4("wo_q", wo_q), numpy_helper.from_array(np.full(64, 0.02, np.float32), "wo_s"),
             numpy_helper.from_array(np.float32(0.05), "a_s"), numpy_helper.from_array(np.uint8(128), "a_zp"),
             numpy_helper.from_array(np.array([-1, 64]), "flat")]
    nodes = [
        helper.make_node("DequantizeLinear", ["conv_q", "conv_s"], ["conv_w"], name="dq_conv", axis=0),
        helper.make_node("Conv", ["x", "conv_w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "flat"], ["f"], name="flatten"),
        helper.make_node("QuantizeLinear", ["f", "a_s", "a_zp"], ["f_q"], name="q_f"),
        helper.make_node("DequantizeLinear", ["f_q", "a_s", "a_zp"], ["f_dq"], name="dq_f"),
        helper.make_node("DequantizeLinear", ["mm_q", "mm_s"], ["mm_w"], name="dq_mm", axis=1),
        helper.make_node("MatMul", ["f_dq", "mm_w"], ["s"], name="static_mm"),
        helper.make_node("DequantizeLinear", ["wo_q", "wo_s"], ["wo_w"], name="dq_wo", axis=1),
        helper.make_node("MatMul", ["s", "wo_w"], ["h"], name="mm1"),
        helper.make_node("MatMul", ["h", "wo_w"], ["y"], name="mm2"),
    ]
    return _model(nodes, inits, [_f("x", [1, 2, 4, 4])], [_f("y", [1, 64])])


def test_forms_per_mode_conv_float_static_kept_shared_weight_once():
    model = conv_and_static_model()
    x = RNG.normal(0, 1, (1, 2, 4, 4)).astype(np.float32)
    forms = {}
    for mode in ("qdq", "native", "auto", "float"):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        forms[mode] = {f.weight: (f.form, f.op_types, f.note) for f in materialize(m, mode)}
        if mode == "auto":
            auto = m
    assert {k: v[0] for k, v in forms["qdq"].items()} == {"conv_w": "qdq", "mm_w": "qdq", "wo_w": "qdq"}
    assert {k: v[0] for k, v in forms["native"].items()} == {"conv_w": "qdq", "mm_w": "qdq", "wo_w": "matmulnbits"}
    assert "Conv" in forms["native"]["conv_w"][2] and "static QDQ" in forms["native"]["mm_w"][2]
    assert {k: v[0] for k, v in forms["auto"].items()} == {"conv_w": "float", "mm_w": "qdq", "wo_w": "matmulnbits"}
    assert {k: v[0] for k, v in forms["float"].items()} == {"conv_w": "float", "mm_w": "float", "wo_w": "float"}
    # The shared weight is packed once and read by both MatMulNBits nodes.
    nbits = [n for n in auto.graph.node if n.op_type == "MatMulNBits"]
    assert [n.name for n in nbits] == ["mm1", "mm2"] and nbits[0].input[1:] == nbits[1].input[1:]
    assert sum(t.data_type == TensorProto.UINT8 and len(t.dims) == 3 for t in auto.graph.initializer) == 1
    # The Conv's float32 weight is exactly what DequantizeLinear computes; the int8 pattern is untouched.
    assert [n.name for n in auto.graph.node if n.op_type == "DequantizeLinear"] == ["dq_f", "dq_mm"]
    (y_auto,) = run(auto, {"x": x})
    (y_ref,) = run(model, {"x": x}, optimize=False)
    assert np.allclose(y_auto, y_ref, rtol=0.05, atol=0.05 * np.abs(y_ref).max())


def test_auto_keeps_small_layers_float_and_native_mode_does_not():
    model = matmul_model(k=32, n=32)  # 1024 weights
    m = onnx.ModelProto()
    m.CopyFrom(model)
    (form,) = materialize(m, "auto")
    assert form.form == "float" and "under 4096" in form.note
    (form,) = materialize(model, "native")
    assert form.form == "matmulnbits"


def test_packed_round_trip_is_unchanged_and_session_defaults_to_native(tmp_path):
    """The container holds the DequantizeLinear form; only the load form changes."""
    model = matmul_model(k=256, n=64, m=2)
    path = tmp_path / "m.onnxz"
    path.write_bytes(pack_model(model).data)
    assert pack_model(load_packed(path)).data == path.read_bytes()  # qdq: the model as packed, bit for bit
    out = tmp_path / "m.onnx"
    forms: list = []
    onnxshrink.unpack(path, out)
    onnxshrink.packing.unpack_file(path, tmp_path / "again.onnx", materialize="auto", forms=forms)
    assert [f.form for f in forms] == ["matmulnbits"]
    assert (tmp_path / "again.onnx").read_bytes() == out.read_bytes()  # deterministic
    written = onnx.load(str(out))
    assert [n.op_type for n in written.graph.node] == ["MatMulNBits"]
    x = RNG.normal(0, 1, (2, 256)).astype(np.float32)
    (y,) = run(written, {"x": x})
    assert np.array_equal(onnxshrink.session(path).run(None, {"x": x})[0], y)
    deployed, dforms = deployed_model(model)
    assert deployed.SerializeToString() == written.SerializeToString() and dforms == forms


def test_cli_unpack_default_writes_the_native_form(tmp_path):
    from conftest import run_cli

    path, out = tmp_path / "m.onnxz", tmp_path / "m.onnx"
    path.write_bytes(pack_model(matmul_model(k=256, n=64)).data)
    result = run_cli("unpack", path, "-o", out)
    assert result.returncode == 0, result.stderr
    assert "quantized weights: 1 on MatMulNBits" in " ".join(result.stdout.split())
    assert [n.op_type for n in onnx.load(str(out)).graph.node] == ["MatMulNBits"]
    assert run_cli("unpack", path, "-o", tmp_path / "q.onnx", "--materialize", "qdq").returncode == 0
    assert [n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node] == ["DequantizeLinear", "MatMul"]


_RSS_AFTER_LOAD = """
import gc, sys
import onnxruntime as ort
def rss():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS:')) * 1024
before = rss()
so = ort.SessionOptions(); so.intra_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], so, providers=['CPUExecutionProvider'])
gc.collect()
print(rss() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_native_weights_stay_low_bit_in_memory(tmp_path):
    """Process RSS added by loading the unpacked default form, less a session's
    own (that of the same graph with 16x16 weights): <= 0.35x fp32's on four
    1024x1024 int4 layers (16 MB of fp32 weights)."""
    from onnxshrink.lowbit import WeightOnlyOptions, quantize_weights

    def chain(width: int, layers: int = 4) -> onnx.ModelProto:
        inits = [numpy_helper.from_array(RNG.normal(0, 0.03, (width, width)).astype(np.float32), f"w{i}")
                 for i in range(layers)]
        nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i - 1}", f"w{i}"], [f"h{i}"])
                 for i in range(layers)]
        return _model(nodes, inits, [_f("x", [1, width])], [_f(f"h{layers - 1}", [1, width])])

    fp32 = chain(1024)
    onnx.save(fp32, str(tmp_path / "fp32.onnx"))
    onnx.save(chain(16), str(tmp_path / "empty.onnx"))
    q = quantize_weights(fp32, WeightOnlyOptions(bits=4)).model
    (tmp_path / "q.onnxz").write_bytes(pack_model(q).data)
    onnxshrink.unpack(tmp_path / "q.onnxz", tmp_path / "native.onnx")

    def added(path):
        out = subprocess.run([sys.executable, "-c", _RSS_AFTER_LOAD, str(path)], capture_output=True, text=True,
                             check=True)
        return int(out.stdout)

    session = added(tmp_path / "empty.onnx")
    base, native = added(tmp_path / "fp32.onnx") - session, added(tmp_path / "native.onnx") - session
    assert base > 16e6 and native <= 0.35 * base, (session, base, native)


def test_gemm_bias_shapes():
    """A [1, N] bias is reshaped (the original dropped once unread), an [N] one reused,
    a broadcast [1] one refused."""
    for shape, native in (((1, 48), True), ((48,), True), ((1,), False)):
        model = matmul_model(op="Gemm", bias=True)
        b = next(t for t in model.graph.initializer if t.name == "b")
        b.CopyFrom(numpy_helper.from_array(RNG.normal(0, 1, shape).astype(np.float32), "b"))
        if native:
            check_matmul(model, bias=numpy_helper.to_array(b).reshape(-1))
            m = onnx.ModelProto()
            m.CopyFrom(model)
            to_native(m)
            names = [t.name for t in m.graph.initializer]
            assert ("b" in names) == (len(shape) == 1) and len(names) == 3
        else:
            assert "bias" in to_native(model)[1]["w"]


def test_unpack_streams_a_static_int8_model_in_auto_mode(tmp_path):
    """auto changes nothing in a static QDQ model, so unpack keeps streaming it
    (never the whole model in memory) and writes the same bytes as qdq."""
    import onnxshrink.packing.api as api
    from onnxshrink.packing.forms import changes

    model = conv_and_static_model()
    for node in model.graph.node:  # make every weight static: drop the weight-only pair
        if node.name == "mm1":
            node.input[1] = "mm_w"
    model.graph.node.remove(next(n for n in model.graph.node if n.name == "dq_wo"))
    model.graph.node.remove(next(n for n in model.graph.node if n.name == "mm2"))
    model.graph.node.remove(next(n for n in model.graph.node if n.name == "dq_conv"))
    model.graph.node.remove(next(n for n in model.graph.node if n.name == "conv"))
    model.graph.node.insert(0, helper.make_node("Identity", ["x"], ["c"], name="conv"))
    for name in ("wo_q", "wo_s", "conv_q", "conv_s"):
        model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == name))
    model.graph.input[0].CopyFrom(_f("x", [1, 64]))
    model.graph.output[0].CopyFrom(_f("h", [1, 64]))
    onnx.checker.check_model(model)
    path = tmp_path / "m.onnxz"
    path.write_bytes(pack_model(model).data)
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    for t in skeleton.graph.initializer:  # what unpack decides on: nodes and dtypes, no data
        t.ClearField("raw_data")
    assert not changes(skeleton, "auto") and not changes(skeleton, "native") and changes(skeleton, "float")
    assert changes(conv_and_static_model(), "auto") and not changes(conv_and_static_model(), "qdq")
    forms: list = []
    api.unpack_file(path, tmp_path / "auto.onnx", materialize="auto", forms=forms)
    api.unpack_file(path, tmp_path / "qdq.onnx", materialize="qdq")
    assert (tmp_path / "auto.onnx").read_bytes() == (tmp_path / "qdq.onnx").read_bytes()
    assert [f.form for f in forms] == ["qdq"] and "static" in forms[0].note
    assert api.unpack_file(path, tmp_path / "f.onnx", materialize="float") is not None
    assert [n.op_type for n in onnx.load(str(tmp_path / "f.onnx")).graph.node if n.op_type == "DequantizeLinear"] \
        == ["DequantizeLinear"]  # only the activation's


def test_layers_inside_an_if_branch_are_rewritten_there():
    """A weight-only MatMul in a subgraph (its weight and DequantizeLinear in the
    branch) runs on MatMulNBits inside the branch; the other branch is untouched."""
    inner = matmul_model(k=128, n=64, m=2)
    then_graph = helper.make_graph(list(inner.graph.node), "then", [], [_f("y", [2, 64])], list(inner.graph.initializer))
    else_graph = helper.make_graph([helper.make_node("Slice", ["x", "zero", "n64", "one"], ["y2"])], "else", [],
                                   [_f("y2", [2, 64])])
    inits = [numpy_helper.from_array(np.array([0]), "zero"), numpy_helper.from_array(np.array([64]), "n64"),
             numpy_helper.from_array(np.array([1]), "one")]
    node = helper.make_node("If", ["c"], ["out"], then_branch=then_graph, else_branch=else_graph)
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    model = _model([node], inits, [_f("x", [2, 128]), cond], [_f("out", [2, 64])])
    x = RNG.normal(0, 1, (2, 128)).astype(np.float32)
    feeds = {"x": x, "c": np.array(True)}
    (ref,) = run(model, feeds, optimize=False)
    forms = materialize(model, "auto")
    assert [f.form for f in forms] == ["matmulnbits"]
    branch = model.graph.node[0].attribute[0].g if model.graph.node[0].attribute[0].name == "then_branch" \
        else model.graph.node[0].attribute[1].g
    assert [n.op_type for n in branch.node] == ["MatMulNBits"]
    (y,) = run(model, feeds)
    w = numpy_helper.to_array(next(t for t in inner.graph.initializer if t.name == "w_q")).astype(np.float64)
    scale = numpy_helper.to_array(next(t for t in inner.graph.initializer if t.name == "w_scale"))
    bound = int8_activation_bound(x, w * scale, forms[0].block_size)
    assert (np.abs(y - ref) <= bound + np.abs(ref) * 4 * EPS32).all()
    assert np.array_equal(run(model, {"x": x, "c": np.array(False)})[0], x[:, :64])
