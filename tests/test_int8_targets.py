"""int8 weights are exact on every x86 CPU by default (onnxshrink.cpu_targets).

x86 CPUs without VNNI multiply uint8 activations by int8 weights two at a time
into a saturating int16 (vpmaddubsw): 2 * 255 * |w| must stay <= 32767, so
|w| <= 64. These tests read the codes of the written models, so they fail on
any host, VNNI or not, when a code escapes [-64, 64]; ``avx2_u8s8`` replays
the AVX2 arithmetic in numpy to show what a full-range code does there.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import MODELS, ROOT, run_cli
from onnxshrink.errors import UsageError
from onnxshrink.pipeline import ShrinkOptions, shrink
from onnxshrink.search.stages import WEIGHT_RANGE_BITS
from onnxshrink.quantization import QuantizeOptions, quantize_model
from onnxshrink.recipes import load_recipe
from onnxshrink.validation import Gate

FAST = QuantizeOptions(latency_guard=False, gate_floor=False)  # random nets: codes under test, not answers
# The weight operand of onnxruntime's integer kernels, by op type.
KERNEL_WEIGHT_INPUT = {"ConvInteger": 1, "MatMulInteger": 1, "QLinearConv": 3, "QLinearMatMul": 3}


def int8_weight_codes(model: onnx.ModelProto) -> list[np.ndarray]:
    """Every int8 initializer that is an integer kernel's weight operand or is read by a
    DequantizeLinear, in the main graph and in subgraphs."""
    found = []

    def walk(graph: onnx.GraphProto) -> None:
        inits = {t.name: t for t in graph.initializer if t.data_type == TensorProto.INT8}
        for node in graph.node:
            index = 0 if node.op_type == "DequantizeLinear" else KERNEL_WEIGHT_INPUT.get(node.op_type)
            if index is not None and len(node.input) > index and node.input[index] in inits:
                found.append(numpy_helper.to_array(inits[node.input[index]]))
            for attr in node.attribute:
                for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                    walk(sub)

    walk(model.graph)
    return found


def max_code(model: onnx.ModelProto) -> int:
    codes = int8_weight_codes(model)
    assert codes, "the model has no int8 weights"
    return max(int(np.abs(c.astype(np.int32)).max()) for c in codes)


def avx2_u8s8(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``a @ w`` (uint8 [M, K] by int8 [K, N], K even) as AVX2 computes it: each
    pair of products along K is added into an int16 that saturates, then summed in int32."""
    a32, w32 = a.astype(np.int32), w.astype(np.int32)
    pairs = a32[:, 0::2, None] * w32[None, 0::2] + a32[:, 1::2, None] * w32[None, 1::2]
    return np.clip(pairs, -32768, 32767).sum(axis=1)


def gemm_model(weight: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", weight.shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", weight.shape[1]])],
                              [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_gemm_model(seed: int = 0) -> onnx.ModelProto:
    """x[N,4,6,6] -> Conv(bias) -> Relu -> Flatten -> Gemm(bias) -> MatMul -> y[N,3]."""
    rng = np.random.default_rng(seed)
    f32 = lambda shape, scale=1.0: (rng.normal(size=shape) * scale).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(f32((8, 4, 3, 3), 0.3), "wc"), numpy_helper.from_array(f32(8, 0.1), "bc"),
             numpy_helper.from_array(f32((16, 288), 0.1), "wg"), numpy_helper.from_array(f32(16, 0.1), "bg"),
             numpy_helper.from_array(f32((16, 3)), "wm")]
    nodes = [helper.make_node("Conv", ["x", "wc", "bc"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wg", "bg"], ["g"], transB=1, name="gemm"),
             helper.make_node("MatMul", ["g", "wm"], ["y"], name="matmul")]
    graph = helper.make_graph(nodes, "conv_gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_batches(n: int = 3, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(8, 4, 6, 6)).astype(np.float32)} for _ in range(n)]


def test_a_weight_that_would_saturate_avx2_gets_bounded_codes():
    """Two large positive weights side by side in one column: at full range they are
    codes 127 and 127, and an input at the top of its range (uint8 255) makes the
    pair 64,770, which AVX2 clips to 32,767. The default target writes codes AVX2
    adds exactly; x86-vnni keeps full range, which this same check catches."""
    rng = np.random.default_rng(0)
    weight = rng.uniform(-0.5, 0.5, size=(16, 4)).astype(np.float32)
    weight[0:2, :] = 1.0
    model = gemm_model(weight)
    calib = [{"x": rng.uniform(0.0, 1.0, size=(32, 16)).astype(np.float32)} for _ in range(2)]
    calib[0]["x"][0] = 1.0  # the calibrated range reaches 1.0: uint8 code 255
    worst_case = np.full((1, 16), 255, np.uint8)  # every activation at its top code
    for target, expected_max, exact_on_avx2 in (("x86-avx2", 64, True), ("x86-vnni", 127, False)):
        q = quantize_model(model, calib, dataclasses.replace(FAST, target=target)).model
        (codes,) = int8_weight_codes(q)
        assert int(np.abs(codes.astype(np.int32)).max()) == expected_max
        exact = worst_case.astype(np.int32) @ codes.astype(np.int32)
        assert np.array_equal(avx2_u8s8(worst_case, codes), exact) == exact_on_avx2, target


@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "per-tensor"])
@pytest.mark.parametrize("activations", ["uint8", "int8"])
def test_static_int8_codes_stay_within_64_unless_the_target_allows_more(per_channel, activations):
    """Per channel and per tensor, uint8 and int8 activations (onnxruntime shifts int8
    activations to uint8 on x86, so the same bound applies), with bias correction."""
    model, calib = conv_gemm_model(), conv_batches()
    options = QuantizeOptions(per_channel=per_channel, activations=activations, latency_guard=False,
                              gate_floor=False)  # a random net: the codes are under test, not its answers
    default = quantize_model(model, calib, options)
    assert max_code(default.model) == 64 and default.report.weight_code_max == 64
    assert default.report.cpu_target == "x86-avx2"
    assert any(n["weight"].get("bias") == "int32, corrected" for n in default.report.nodes if n["weight"])
    for target in ("x86-vnni", "arm"):
        full = quantize_model(model, calib, dataclasses.replace(options, target=target))
        assert max_code(full.model) == 127 and full.report.weight_code_max == 127
    # Both stay close to float on this CPU; the bounded one is exact on every x86 CPU too.
    feed = conv_batches(1, seed=7)[0]
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = ort.InferenceSession(default.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert float(reference.ravel() @ got.ravel() / np.linalg.norm(reference) / np.linalg.norm(got)) > 0.99


@pytest.mark.parametrize("bits, expected", [(b, min(2 ** (b - 1) - 1, 64)) for b in (3, 6, 7, 8)])
def test_narrow_weight_ranges_stay_within_the_bound(bits, expected):
    options = QuantizeOptions(weight_range_bits=bits, latency_guard=False, gate_floor=False)  # a random net
    q = quantize_model(conv_gemm_model(), conv_batches(), options)
    assert max_code(q.model) == expected


def test_dynamic_int8_codes_stay_within_64_unless_the_target_allows_more():
    rng = np.random.default_rng(0)
    model = gemm_model(rng.normal(size=(32, 8)).astype(np.float32))
    default = quantize_model(model, None, QuantizeOptions(dynamic=True, latency_guard=False))
    assert "MatMulInteger" in {n.op_type for n in default.model.graph.node}
    assert max_code(default.model) == 64 and default.report.weight_code_max == 64
    full = quantize_model(model, None, QuantizeOptions(dynamic=True, latency_guard=False, target="x86-vnni"))
    assert max_code(full.model) == 127


@pytest.mark.parametrize("name, dynamic", [("digits_cnn", False), ("digits_transformer", False), ("digits_mlp", True)])
def test_bundled_models_keep_the_bound_and_their_accuracy(name, dynamic):
    """What the README's first command and `quantize` write for the bundled models."""
    model = onnx.load(str(MODELS / f"{name}.onnx"))
    data = np.load(MODELS / f"{name}.eval.npz")
    feed = {"input": data["input"]}
    q = quantize_model(model, None if dynamic else str(MODELS / f"{name}.calib.npz"),
                       QuantizeOptions(dynamic=dynamic, latency_guard=False)).model
    assert max_code(q) <= 64
    a = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    b = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert float(a.ravel() @ b.ravel() / np.linalg.norm(a) / np.linalg.norm(b)) >= 0.995
    labels = data["labels"]
    assert (b.argmax(1) == labels).mean() >= (a.argmax(1) == labels).mean() - 0.01


@pytest.mark.parametrize("bits", WEIGHT_RANGE_BITS)
def test_shrink_keeps_the_bound_at_every_width_its_search_tries(bits):
    """shrink's static search tries the widths WEIGHT_RANGE_BITS; at each, the codes it
    writes stay within the default target's bound; a recipe's target lifts it."""
    base = load_recipe("int8")
    gate = Gate(max_accuracy_drop=5.0)
    for target, bound in (("x86-avx2", 64), ("x86-vnni", 127)):
        if target != "x86-avx2" and bits != 8:
            continue
        recipe = dataclasses.replace(base, quantize={**base.quantize, "weight_range_bits": bits, "target": target},
                                     pack=False)
        result = shrink(onnx.load(str(MODELS / "digits_mlp.onnx")), str(MODELS / "digits_mlp.calib.npz"),
                        ShrinkOptions(recipe=recipe, gate=gate), eval_data=str(MODELS / "digits_mlp.eval.npz"))
        assert max_code(result.model) == min(2 ** (bits - 1) - 1, bound)


def test_target_flag_on_the_cli(tmp_path):
    """`quantize --target` opts in to full range; a bad value is one line and exit 2,
    before any work; --help and the README name the choices."""
    src, calib = MODELS / "digits_mlp.onnx", MODELS / "digits_mlp.calib.npz"
    codes = {}
    for target in ("x86-avx2", "x86-vnni"):
        out = tmp_path / f"{target}.onnx"
        result = run_cli("quantize", src, "-o", out, "--calib", calib, "--target", target, "--no-latency-guard", "-q")
        assert result.returncode == 0, result.stderr
        codes[target] = max_code(onnx.load(str(out)))
    assert codes == {"x86-avx2": 64, "x86-vnni": 127}
    for command in (["quantize", src, "-o", tmp_path / "bad.onnx", "--calib", calib],
                    ["shrink", src, "-o", tmp_path / "bad.onnxz", "--calib", calib]):
        result = run_cli(*command, "--target", "skylake")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "x86-avx2, x86-vnni, arm" in result.stderr
        assert not (tmp_path / "bad.onnx").exists() and not (tmp_path / "bad.onnxz").exists()
    for command in ("quantize", "shrink"):
        text = run_cli(command, "--help").stdout
        assert "--target" in text and "x86-vnni" in text
    readme = (ROOT / "README.md").read_text()
    assert "--target x86-vnni" in readme and "[-64, 64]" in readme


def test_bad_target_in_the_api_is_a_usage_error():
    with pytest.raises(UsageError, match="x86-avx2, x86-vnni, arm"):
        QuantizeOptions(target="avx512")


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="needs qemu-user (apt-get install qemu-user)")
def test_avx2_emulation_script_runs_a_command_on_the_saturating_kernel():
    """scripts/avx2_emulation.sh: the emulated CPU has AVX2 and no VNNI, onnxruntime there
    saturates u8 x s8 pairs, and the command runs under it (its own Python sees no AVX-512)."""
    probe = "from numpy._core._multiarray_umath import __cpu_features__ as f; print('child AVX512F', f['AVX512F'])"
    result = subprocess.run(["bash", str(ROOT / "scripts" / "avx2_emulation.sh"), "python", "-c", probe],
                            capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable}, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "AVX2=yes" in result.stdout and "AVX512VNNI=no" in result.stdout
    assert "saturated pairs" in result.stdout and "child AVX512F False" in result.stdout
