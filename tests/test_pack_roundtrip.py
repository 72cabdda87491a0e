"""pack -> unpack is bit-exact: every dtype and storage field, Constant nodes,
subgraphs, functions, external data, the bundled models and onnx's own
backend test models; onnxruntime outputs are identical."""

from __future__ import annotations

import glob

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import BUNDLED, MODELS, ONNX_TEST_DATA
from onnx import TensorProto, helper, numpy_helper

import onnxshrink
from onnxshrink.packing import (
    PackOptions, inference_session_from_packed, is_packed_file, load_packed, pack_file, pack_model, unpack_file,
)
from onnxshrink.packing.tensors import tensor_slots

EVERYTHING = PackOptions(min_tensor_bytes=0)  # every tensor through a codec, even tiny ones


def snapshot(model: onnx.ModelProto) -> list[tuple]:
    """Every tensor of the model as (where, name, dtype, shape, bytes)."""
    out = []
    for slot in tensor_slots(model):
        a = numpy_helper.to_array(slot.tensor)
        data = a.tolist() if a.dtype == object else a.tobytes()
        out.append((slot.where, slot.tensor.name, a.dtype.str, a.shape, data))
    return out


def assert_roundtrip(model: onnx.ModelProto, options: PackOptions = PackOptions()) -> bytes:
    before = snapshot(model)
    original = model.SerializeToString()
    blob = pack_model(model, options).data
    assert model.SerializeToString() == original, "pack_model changed its input"
    restored = load_packed(blob)
    assert snapshot(restored) == before
    return blob


def opset() -> list:
    return [helper.make_opsetid("", 17)]


def identity_model(tensors: list[TensorProto]) -> onnx.ModelProto:
    nodes = [helper.make_node("Identity", [t.name], [t.name + "_out"]) for t in tensors]
    outputs = [helper.make_tensor_value_info(t.name + "_out", t.data_type, list(t.dims)) for t in tensors]
    graph = helper.make_graph(nodes, "g", [], outputs, tensors)
    return helper.make_model(graph, opset_imports=opset())


DTYPES = [
    TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE, TensorProto.INT8,
    TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16, TensorProto.INT32, TensorProto.UINT32,
    TensorProto.INT64, TensorProto.UINT64, TensorProto.BOOL, TensorProto.INT4, TensorProto.UINT4,
    TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2, TensorProto.FLOAT4E2M1, TensorProto.COMPLEX64,
    TensorProto.COMPLEX128,
]


def sample(dtype: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    if dtype == TensorProto.BOOL:
        return np.asarray(rng.random(shape) < 0.3)
    values = np.round(rng.laplace(0, 3, shape)) * (rng.random(shape) < 0.5)
    if dtype in (TensorProto.UINT4, TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64):
        values = np.abs(values)
    if dtype in (TensorProto.INT4, TensorProto.UINT4):
        values = np.clip(values, -8 if dtype == TensorProto.INT4 else 0, 7)
    if dtype in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16):
        values = values * 0.01 + (values != 0) * rng.normal(0, 1e-3, shape)
    if dtype in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
        values = values + 1j * rng.normal(size=shape)
    return np.asarray(values).astype(np_dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: TensorProto.DataType.Name(d))
@pytest.mark.parametrize("storage", ["raw_data", "typed fields"])
@pytest.mark.parametrize("options", [PackOptions(), EVERYTHING], ids=["default", "all packed"])
def test_every_dtype_and_storage_roundtrips(dtype, storage, options):
    tensors = []
    for i, shape in enumerate([(33, 31), (7,), (), (0, 4), (3001,)]):
        a = sample(dtype, shape, seed=i)
        if storage == "raw_data":
            t = numpy_helper.from_array(a, f"t{i}")
        else:
            vals = a.reshape(-1)
            t = helper.make_tensor(f"t{i}", dtype, shape, vals if dtype in (TensorProto.COMPLEX64, TensorProto.COMPLEX128) else vals.tolist())
            assert not t.HasField("raw_data")
        tensors.append(t)
    assert_roundtrip(identity_model(tensors), options)


def test_strings_segments_and_odd_tensors_stay_inline():
    strings = helper.make_tensor("s", TensorProto.STRING, [3], [b"a", b"bc", b"\x00\xff"])
    short = numpy_helper.from_array(np.arange(4, dtype=np.float32), "short")
    short.raw_data = short.raw_data[:-1]  # wrong length: not ours to fix, kept as it is
    big = numpy_helper.from_array(np.arange(1000, dtype=np.float32), "big")
    model = identity_model([strings, big])
    model.graph.initializer.append(short)
    result = pack_model(model, EVERYTHING)
    codecs = {t.name: t.codec for t in result.report.tensors}
    assert codecs["s"] == "inline" and codecs["short"] == "inline" and codecs["big"] != "inline"
    restored = load_packed(result.data)
    assert [t.raw_data for t in restored.graph.initializer] == [t.raw_data for t in model.graph.initializer]
    assert list(restored.graph.initializer[0].string_data) == [b"a", b"bc", b"\x00\xff"]


def control_flow_model() -> onnx.ModelProto:
    """x -> Add(Constant) -> If(sum > 0: MatMul with a subgraph initializer, else: Mul by a Constant) -> y."""
    rng = np.random.default_rng(3)
    w_then = numpy_helper.from_array(rng.normal(size=(16, 16)).astype(np.float32), "w_then")
    then_graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w_then"], ["then_out"])], "then", [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [4, 16])], [w_then])
    else_graph = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(
            rng.normal(size=(16,)).astype(np.float32), "k_value")),
         helper.make_node("Mul", ["a", "k"], ["else_out"])], "else", [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [4, 16])])
    bias = numpy_helper.from_array(rng.normal(size=(4, 16)).astype(np.float32), "bias_value")
    nodes = [
        helper.make_node("Constant", [], ["bias"], value=bias),
        helper.make_node("Add", ["x", "bias"], ["a"]),
        helper.make_node("ReduceSum", ["a"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph),
    ]
    graph = helper.make_graph(
        nodes, "cf", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])],
        [numpy_helper.from_array(np.float32(0), "zero")])
    model = helper.make_model(graph, opset_imports=opset())
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("options", [PackOptions(), EVERYTHING], ids=["default", "all packed"])
def test_constants_and_subgraph_initializers_roundtrip_and_run_identically(options):
    model = control_flow_model()
    blob = assert_roundtrip(model, options)
    kinds = {(s.where, s.tensor.name) for s in tensor_slots(model)}
    assert any("then_branch" in w for w, _ in kinds) and any("else_branch" in w for w, _ in kinds)
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    packed = inference_session_from_packed(blob)
    for sign in (1, -1):
        x = {"x": sign * np.abs(np.random.default_rng(0).normal(size=(4, 16))).astype(np.float32) * 10}
        assert np.array_equal(reference.run(None, x)[0], packed.run(None, x)[0])


def test_function_bodies_roundtrip():
    body = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.arange(300, dtype=np.int64), "cv"))
    fn = helper.make_function("local", "F", [], ["c"], [body], opset_imports=opset())
    graph = helper.make_graph([helper.make_node("F", [], ["y"], domain="local")], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [300])])
    model = helper.make_model(graph, opset_imports=opset() + [helper.make_opsetid("local", 1)], functions=[fn])
    assert_roundtrip(model, EVERYTHING)


def test_large_model_session_takes_initializers_as_ortvalues():
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.normal(size=(512, 600)).astype(np.float32), "w")  # 1.2 MB: moved out
    b = numpy_helper.from_array(rng.normal(size=(600,)).astype(np.float32), "b")  # small: stays inline
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])], "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 600])], [w, b])
    model = helper.make_model(graph, opset_imports=opset())
    blob = pack_model(model).data
    x = {"x": rng.normal(size=(2, 512)).astype(np.float32)}
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    session = inference_session_from_packed(blob, inline_limit=1)
    assert [v.shape() for v in session._onnxshrink_initializers] == [[512, 600]]
    assert np.array_equal(reference.run(None, x)[0], session.run(None, x)[0])


def test_pack_is_deterministic():
    model = control_flow_model()
    assert pack_model(model).data == pack_model(model).data


def test_external_data_model_packs_and_unpacks(tmp_path):
    model = control_flow_model()
    src = tmp_path / "src" / "m.onnx"
    src.parent.mkdir()
    onnx.save(model, src, save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0)
    assert (src.parent / "weights.bin").exists()
    packed, out = tmp_path / "m.onnxz", tmp_path / "out" / "m.onnx"
    report = pack_file(src, packed)
    assert report.packed and is_packed_file(packed) and not is_packed_file(src)
    unpack_file(packed, out)
    assert snapshot(onnx.load(out)) == snapshot(onnx.load(src))
    assert snapshot(onnxshrink.load(packed)) == snapshot(onnx.load(src))


def test_unpack_writes_external_data_beside_a_large_output(tmp_path, monkeypatch):
    from onnxshrink import model as model_io

    monkeypatch.setattr(model_io, "INLINE_LIMIT_BYTES", 100)
    packed, out = tmp_path / "m.onnxz", tmp_path / "big.onnx"
    packed.write_bytes(pack_model(control_flow_model()).data)
    unpack_file(packed, out)
    assert any(p.name != "big.onnx" for p in tmp_path.iterdir() if p.suffix != ".onnxz")
    assert snapshot(onnx.load(out)) == snapshot(control_flow_model())


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_models_roundtrip_and_run_identically(name, tmp_path):
    src = MODELS / f"{name}.onnx"
    packed, out = tmp_path / "m.onnxz", tmp_path / "m.onnx"
    report = pack_file(src, packed)
    assert report.container_bytes < src.stat().st_size
    unpack_file(packed, out)
    reference = onnx.load(src)
    assert snapshot(onnx.load(out)) == snapshot(reference)
    ref_session = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    feed = {}
    for i in ref_session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        dtype = np.float32 if "float" in i.type else np.int64
        feed[i.name] = np.random.default_rng(0).normal(size=shape).astype(dtype)
    packed_session = inference_session_from_packed(packed)
    for a, b in zip(ref_session.run(None, feed), packed_session.run(None, feed)):
        assert np.array_equal(a, b)


def backend_models() -> list[str]:
    folders = ["light", "pytorch-converted", "pytorch-operator", "simple", "node"]
    paths = []
    for folder in folders:
        paths += glob.glob(str(ONNX_TEST_DATA / folder / "*" / "model.onnx"))
        paths += glob.glob(str(ONNX_TEST_DATA / folder / "*.onnx"))
    keep = []
    for p in sorted(paths):
        m = onnx.load(p, load_external_data=False)
        if any(True for _ in tensor_slots(m)):
            keep.append(p)
    return keep


BACKEND = backend_models()


def test_backend_models_are_there():
    assert len(BACKEND) >= 50


@pytest.mark.parametrize("path", BACKEND, ids=lambda p: "/".join(p.split("/")[-3:-1]) if p.endswith("model.onnx") else p.split("/")[-1])
def test_onnx_backend_models_roundtrip(path):
    model = onnx.load(path)
    assert_roundtrip(model)
    assert_roundtrip(model, EVERYTHING)


def test_the_load_path_imports_no_cli_or_simplifier_modules():
    code = ("import sys, onnxshrink.packing as p; p.load_packed(sys.argv[1]); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'typer', 'rich', 'click', 'onnxsim'}))")
    import subprocess
    import sys
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".onnxz") as f:
        f.write(pack_model(control_flow_model()).data)
        f.flush()
        out = subprocess.run([sys.executable, "-c", code, f.name], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
