"""The nodes around the low-bit kernels (packing/kernel_fusion.py) and the
"auto" choice of float32 for small layers (packing/forms.py): fewer nodes,
the same outputs within the kernel's rounding, names kept, and the memory
share held."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxshrink.packing import deployed_model, materialize
from onnxshrink.packing.forms import (AUTO_MEMORY_SHARE, NATIVE_FAST_ELEMENTS, REFERENCE_KEY, float32_weight_bytes,
                                      record_reference, recorded_reference)
from onnxshrink.packing.kernel_fusion import fuse_around_matmul_nbits, value_shapes

RNG = np.random.default_rng(5)
TOKENS, K = 8, 64


def _int4_weight(name: str, k: int, n: int, block: int = 32) -> list[TensorProto]:
    q = RNG.integers(-8, 8, (k, n))
    scale = (RNG.random((k // block, n)) * 0.02 + 1e-3).astype(np.float32)
    return [helper.make_tensor(f"{name}_q", TensorProto.INT4, q.shape, q.reshape(-1).tolist()),
            numpy_helper.from_array(scale, f"{name}_scale")]


def _dq(name: str, block: int = 32) -> onnx.NodeProto:
    return helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_scale"], [name], axis=0, block_size=block)


def _const(name: str, values) -> TensorProto:
    array = np.asarray(values)
    return numpy_helper.from_array(array.astype(np.int64 if array.dtype.kind == "i" else np.float32), name)


def _model(nodes, inits, inputs, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _x(shape=("batch", TOKENS, K)):
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))


def _y(name="y"):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # what the graph says, not ORT's fusions
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})


def _close(native: list[np.ndarray], reference: list[np.ndarray]) -> None:
    """Within MatMulNBits' level-4 rounding of the input (a few hundredths of
    these outputs' scale), far below a misplaced bias or reshape."""
    for a, b in zip(native, reference):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 0.02 * np.abs(b).max()


def reshape_gemm_reshape(transposed_input: bool = False) -> onnx.ModelProto:
    """onnxsim's form of a 3-D layer: Reshape to rows, Gemm with bias, Reshape back."""
    nodes, inits = [_dq("w")], _int4_weight("w", K, 128) + [_const("b", RNG.normal(0, 1, 128)),
                                                               _const("rows", [-1, K]), _const("back", [-1, TOKENS, 128])]
    x = "x"
    if transposed_input:  # heads merged from [batch, heads, tokens, 16]: the reshape is real
        nodes.append(helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1, 3]))
        x = "xt"
    nodes += [helper.make_node("Reshape", [x, "rows"], ["r"]),
              helper.make_node("Gemm", ["r", "w", "b"], ["g"]),
              helper.make_node("Reshape", ["g", "back"], ["y"])]
    shape = ("batch", 4, TOKENS, 16) if transposed_input else ("batch", TOKENS, K)
    return _model(nodes, inits, [_x(shape)], [_y()])


def test_reshape_pair_and_bias_fold_into_the_kernel():
    model = reshape_gemm_reshape()
    native, _ = deployed_model(model, "native")
    assert [n.op_type for n in native.graph.node] == ["MatMulNBits"]
    (node,) = native.graph.node
    assert node.input[0] == "x" and node.output[0] == "y" and node.input[5] == "b"  # the graph output keeps its name
    x = RNG.normal(0, 1, (2, TOKENS, K)).astype(np.float32)
    _close(_run(native, x), _run(model, x))


def test_a_reshape_that_is_real_stays_as_one():
    model = reshape_gemm_reshape(transposed_input=True)
    native, _ = deployed_model(model, "native")
    assert [n.op_type for n in native.graph.node] == ["Transpose", "Reshape", "MatMulNBits"]
    shape = next(t for t in native.graph.initializer if t.name == native.graph.node[1].input[1])
    assert numpy_helper.to_array(shape).tolist() == [-1, TOKENS, K]
    x = RNG.normal(0, 1, (2, 4, TOKENS, 16)).astype(np.float32)
    _close(_run(native, x), _run(model, x))


def qkv_model(residual: bool = False) -> onnx.ModelProto:
    """One MatMul for Q, K and V, split along the last axis, each plus its bias
    (the third Add optionally a residual, which must stay)."""
    inits = _int4_weight("w", K, 3 * K) + [_const("split", [K, K, K])] + \
        [_const(f"b{i}", RNG.normal(0, 1, K)) for i in range(3)]
    nodes = [_dq("w"), helper.make_node("MatMul", ["x", "w"], ["qkv"]),
             helper.make_node("Split", ["qkv", "split"], ["q0", "k0", "v0"], axis=-1),
             helper.make_node("Add", ["b0", "q0"], ["q"]), helper.make_node("Add", ["k0", "b1"], ["k"]),
             helper.make_node("Add", ["v0", "x" if residual else "b2"], ["v"])]
    return _model(nodes, inits, [_x()], [_y("q"), _y("k"), _y("v")])


def test_split_biases_fold_as_one_concatenated_bias():
    model = qkv_model()
    native, _ = deployed_model(model, "native")
    assert [n.op_type for n in native.graph.node] == ["MatMulNBits", "Split"]
    kernel, split = native.graph.node
    bias = next(t for t in native.graph.initializer if t.name == kernel.input[5])
    expected = np.concatenate([numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == f"b{i}"))
                               for i in range(3)])
    assert np.array_equal(numpy_helper.to_array(bias), expected)
    assert list(split.output) == ["q", "k", "v"]
    assert not any(t.name in ("b0", "b1", "b2") for t in native.graph.initializer)  # nothing reads them now
    x = RNG.normal(0, 1, (3, TOKENS, K)).astype(np.float32)
    _close(_run(native, x), _run(model, x))


def test_an_add_of_a_non_constant_is_not_a_bias():
    model = qkv_model(residual=True)
    native, _ = deployed_model(model, "native")
    assert [n.op_type for n in native.graph.node].count("Add") == 3
    assert len(next(n for n in native.graph.node if n.op_type == "MatMulNBits").input) < 6
    x = RNG.normal(0, 1, (1, TOKENS, K)).astype(np.float32)
    _close(_run(native, x), _run(model, x))


def test_fusion_leaves_a_kernel_whose_output_two_nodes_read():
    model = reshape_gemm_reshape()
    extra = helper.make_node("Relu", ["g"], ["g_relu"])
    model.graph.node.append(extra)
    model.graph.output.append(_y("g_relu"))
    native, _ = deployed_model(model, "native")
    assert [n.op_type for n in native.graph.node].count("Reshape") == 2


def test_value_shapes_know_the_input_and_unknown_dims_are_none():
    shapes = value_shapes(reshape_gemm_reshape())
    assert shapes["x"] == [None, TOKENS, K] and shapes["r"] == [None, K]
    assert fuse_around_matmul_nbits(reshape_gemm_reshape()) == 0  # no kernel yet: nothing to fold


def chain_of_small_layers(layers: int = 8, width: int = 64) -> onnx.ModelProto:
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        inits += _int4_weight(f"w{i}", width, width)
        nodes += [_dq(f"w{i}"), helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"])]
        x = f"h{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    return _model(nodes, inits, [_x(("batch", width))], [_y()])


def _in_memory(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) or 4 * int(np.prod(t.dims)) for t in model.graph.initializer)


def test_auto_widens_small_layers_to_the_8_bit_kernel_within_the_memory_share():
    """Eight 64x64 layers in scale blocks of 32: the 4-bit kernel is slowest at
    this size and float32 for all would take 4x the memory; auto runs the same
    codes on the 8-bit kernel, smallest first, while the weights in memory stay
    within the share (here all eight, leaving no room for a float32 layer)."""
    model = chain_of_small_layers()
    deployed, forms = deployed_model(model, "auto")
    assert [(f.form, f.bits, f.block_size) for f in forms] == [("matmulnbits", 8, 32)] * 8
    assert all("4-bit codes on the 8-bit kernel" in f.note for f in forms)
    assert all(_attr_of(n, "bits") == 8 for n in deployed.graph.node if n.op_type == "MatMulNBits")
    float32_bytes = sum(4 * 64 * 64 for _ in forms)
    assert _in_memory(deployed) <= AUTO_MEMORY_SHARE * float32_bytes * 1.05  # scales' bytes are in both estimates
    assert deployed_model(model, "auto")[0].SerializeToString() == deployed.SerializeToString()  # deterministic
    x = RNG.normal(0, 1, (1, 64)).astype(np.float32)
    (y,), (ref,) = _run(deployed, x), _run(model, x)
    assert np.abs(y - ref).max() <= 0.05 * np.abs(ref).max()
    (native,) = _run(deployed_model(model, "native")[0], x)
    assert np.abs(y - native).max() <= 0.05 * np.abs(ref).max()  # 4- and 8-bit kernels: the same weights


def test_auto_runs_a_small_layer_float_beside_a_large_one():
    """A 64x64 layer beside a 256x256 one: the large one stays on the 4-bit
    kernel (not widened: its memory is what the share is for), the small one
    fits in the share as float32, and the weights in memory stay within it."""
    inits = _int4_weight("w0", 64, 256) + _int4_weight("w1", 256, 256) + _int4_weight("w2", 256, 64)
    nodes = [_dq("w0"), helper.make_node("MatMul", ["x", "w0"], ["h0"]),
             _dq("w1"), helper.make_node("MatMul", ["h0", "w1"], ["h1"]),
             _dq("w2"), helper.make_node("MatMul", ["h1", "w2"], ["y"])]
    model = _model(nodes, inits, [_x(("batch", 64))], [_y()])
    deployed, forms = deployed_model(model, "auto")
    kinds = {f.weight: (f.form, f.bits) for f in forms}
    assert kinds["w1"] == ("matmulnbits", 4)
    floats = [f for f in forms if f.form == "float"]
    assert floats and all("float32 runs faster" in f.note for f in floats)
    float32_bytes = 4 * (64 * 256 * 2 + 256 * 256)
    assert _in_memory(deployed) <= AUTO_MEMORY_SHARE * float32_bytes * 1.05
    x = RNG.normal(0, 1, (1, 64)).astype(np.float32)
    (y,), (ref,) = _run(deployed, x), _run(model, x)
    assert np.abs(y - ref).max() <= 0.05 * np.abs(ref).max()


def test_auto_bounds_memory_by_the_recorded_original_not_the_pruned_model():
    """A pruned model (what shrink writes) records its original's float32 bytes:
    the share is taken of those, so layers the pruned model's own third keeps on
    the kernel run as float32 (smallest first), and the weights in memory stay
    within a third of the original's; without the record, nothing changes."""
    model = chain_of_small_layers()
    own = float32_weight_bytes(model)
    assert own >= 8 * 4 * 64 * 64
    original = chain_of_small_layers(layers=16)  # stands for the unpruned model: twice the weights
    without = [f.form for f in deployed_model(model, "auto")[1]]
    record_reference(model, original)
    assert recorded_reference(model) == float32_weight_bytes(original) > 1.5 * own
    deployed, forms = deployed_model(model, "auto")
    assert without == ["matmulnbits"] * 8
    floats = [f for f in forms if f.form == "float"]
    assert 0 < len(floats) < 8 and all("the original model's float32 weight bytes" in f.note for f in floats)
    assert _in_memory(deployed) <= AUTO_MEMORY_SHARE * recorded_reference(model) * 1.05
    x = RNG.normal(0, 1, (1, 64)).astype(np.float32)
    (y,), (ref,) = _run(deployed, x), _run(model, x)
    assert np.abs(y - ref).max() <= 0.05 * np.abs(ref).max()


def test_record_reference_keeps_the_largest_and_ignores_what_is_not_a_count():
    small, large = chain_of_small_layers(layers=2), chain_of_small_layers(layers=6)
    record_reference(large, chain_of_small_layers(layers=12))  # large was itself made from a larger model
    twelve = recorded_reference(large)
    model = chain_of_small_layers(layers=2)
    record_reference(model, large)
    assert recorded_reference(model) == twelve  # the original's figure, not the intermediate's
    record_reference(model, small)
    assert recorded_reference(model) == twelve and [p.key for p in model.metadata_props] == [REFERENCE_KEY]
    for bad in ("-5", "12.5", "abc", "9" * 30, "", "²", " 7"):
        del model.metadata_props[:]
        model.metadata_props.add(key=REFERENCE_KEY, value=bad)
        assert recorded_reference(model) == 0
        assert [f.form for f in deployed_model(model, "auto")[1]] == ["matmulnbits"] * 2


def _attr_of(node: onnx.NodeProto, name: str):
    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def test_auto_keeps_large_layers_native():
    assert 256 * 256 >= NATIVE_FAST_ELEMENTS
    forms = materialize(chain_of_small_layers(layers=2, width=256), "auto")
    assert [f.form for f in forms] == ["matmulnbits", "matmulnbits"]


@pytest.mark.parametrize("mode", ["native", "auto"])
def test_deployed_digits_transformer_has_no_reshape_pairs_around_kernels(mode):
    """On the bundled transformer's shrink output form (onnxsim's Reshape-Gemm-Reshape
    layers), every MatMulNBits reads its 3-D input directly or through one Reshape."""
    from onnxshrink.lowbit import WeightOnlyOptions, quantize_weights
    from onnxshrink.simplify import simplify

    models = __import__("pathlib").Path(__file__).resolve().parent.parent / "models"
    base = simplify(onnx.load(str(models / "digits_transformer.onnx"))).model
    quantized = quantize_weights(base, WeightOnlyOptions(bits=4), measure_latency=False).model
    deployed, _ = deployed_model(quantized, mode)
    producers = {o: n for n in deployed.graph.node for o in n.output}
    readers = {}
    for n in deployed.graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    kernels = [n for n in deployed.graph.node if n.op_type == "MatMulNBits"]
    assert kernels
    vectors = {t.name for t in deployed.graph.initializer if len(t.dims) == 1}
    for n in kernels:
        after = readers.get(n.output[0], [])
        assert not any(r.op_type == "Reshape" for r in after), n.name
        assert not any(r.op_type == "Add" and set(r.input) & vectors for r in after), n.name  # biases folded
        before = producers.get(n.input[0])
        assert before is None or before.op_type != "Reshape" or producers.get(before.input[0]) is not None
    data = np.load(models / "digits_transformer.eval.npz")
    x = data["input"][:64]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    ours = ort.InferenceSession(deployed.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(quantized.SerializeToString(), so, providers=["CPUExecutionProvider"])
    a, b = ours.run(None, {"input": x})[0], ref.run(None, {"input": x})[0]
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.95 and np.abs(a - b).max() <= 0.1 * np.abs(b).max()
