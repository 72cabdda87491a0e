"""pack_file and unpack_file stream tensor by tensor, and write exactly what
the in-memory path writes: the same container bytes and report for a model
with external data, the same .onnx and data file for an unpacked model too
large for one protobuf; a failure half-way leaves nothing behind."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_pack_roundtrip import EVERYTHING, control_flow_model, snapshot

from onnxshrink import model as model_io
from onnxshrink.errors import PackError
from onnxshrink.model import load_model, save_model, serialized_size
from onnxshrink.packing import PackOptions, load_packed, pack_file, pack_model, unpack_file
from onnxshrink.packing.tensors import loaded_byte_size, tensor_slots


def mixed_model() -> onnx.ModelProto:
    """control_flow_model plus main-graph weights of several sizes (some too small to pack), an int8 one,
    a sparse initializer and a model function with a Constant."""
    model = control_flow_model()
    rng = np.random.default_rng(7)
    weights = [
        numpy_helper.from_array(rng.normal(size=(64, 48)).astype(np.float32), "w_big"),
        numpy_helper.from_array(rng.normal(size=(3,)).astype(np.float32), "w_tiny"),
        numpy_helper.from_array(rng.integers(-20, 20, size=(300, 7)).astype(np.int8), "w_int8"),
        numpy_helper.from_array(rng.normal(size=(2000,)).astype(np.float32), "w_vector"),
    ]
    model.graph.initializer.extend(weights)
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.arange(1, 300, dtype=np.float32), "sv"),
                                       numpy_helper.from_array(np.arange(299, dtype=np.int64) * 3, "si"), [900])
    model.graph.sparse_initializer.append(sparse)
    function = helper.make_function(
        "local", "AddK", ["a"], ["b"],
        [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(rng.normal(size=(16,)).astype(
            np.float32), "fk")), helper.make_node("Add", ["a", "k"], ["b"])],
        [helper.make_opsetid("", 17)])
    model.functions.append(function)
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.graph.node.append(helper.make_node("AddK", ["y"], ["z"], domain="local"))
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 16]))
    return model


def saved_with_external_data(model: onnx.ModelProto, folder) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0)
    return path


@pytest.mark.parametrize("options", [PackOptions(), EVERYTHING, PackOptions(float16_small=True)],
                         ids=["default", "all packed", "float16"])
def test_pack_file_streams_external_data_into_the_same_bytes(tmp_path, options):
    src = saved_with_external_data(mixed_model(), tmp_path / "src")
    stored = onnx.load(src, load_external_data=False)
    assert sum(t.data_location == TensorProto.EXTERNAL for t in stored.graph.initializer) >= 4
    report = pack_file(src, tmp_path / "m.onnxz", options)
    expected = pack_model(load_model(src), options)
    assert (tmp_path / "m.onnxz").read_bytes() == expected.data
    assert report.to_dict() == expected.report.to_dict()
    if not options.float16_small:  # lossy by request
        assert snapshot(load_packed(tmp_path / "m.onnxz")) == snapshot(load_model(src))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnxz", "src"]


def test_pack_model_reads_mapped_tensors_from_their_files(tmp_path):
    model = mixed_model()
    model.graph.initializer.append(numpy_helper.from_array(
        np.random.default_rng(2).normal(size=(600, 500)).astype(np.float32), "w_mapped"))
    src = saved_with_external_data(model, tmp_path)
    mapped = load_model(src, map_external_data=True)
    assert model_io.has_mapped(mapped)
    before = mapped.SerializeToString()
    expected = pack_model(load_model(src))
    result = pack_model(mapped)
    assert result.data == expected.data and result.report.to_dict() == expected.report.to_dict()
    assert mapped.SerializeToString() == before


def test_loaded_byte_size_is_the_loaded_models_byte_size(tmp_path):
    src = saved_with_external_data(mixed_model(), tmp_path)
    stored = load_model(src, load_external_data=False)
    lengths = {s.ordinal: int({e.key: e.value for e in s.tensor.external_data}["length"])
               for s in tensor_slots(stored) if s.tensor.data_location == TensorProto.EXTERNAL}
    assert len(lengths) > 5
    assert loaded_byte_size(stored, lengths) == serialized_size(load_model(src))
    assert loaded_byte_size(stored, {}) == stored.ByteSize()


@pytest.fixture
def external_output(monkeypatch):
    """Every unpacked model counts as too large for one protobuf."""
    monkeypatch.setattr(model_io, "INLINE_LIMIT_BYTES", 100)


def test_unpack_streams_into_the_same_files_as_save_model(tmp_path, external_output):
    model = mixed_model()
    packed = tmp_path / "m.onnxz"
    packed.write_bytes(pack_model(model).data)
    streamed, reference = tmp_path / "a" / "m.onnx", tmp_path / "b" / "m.onnx"
    written = unpack_file(packed, streamed)
    save_model(load_packed(packed), reference)
    assert sorted(p.name for p in streamed.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    for name in ("m.onnx", "m.onnx.data"):
        assert (streamed.parent / name).read_bytes() == (reference.parent / name).read_bytes(), name
    assert written.SerializeToString() == streamed.read_bytes()
    assert snapshot(onnx.load(streamed)) == snapshot(model)


@pytest.fixture
def splice_everything(monkeypatch):
    """Every packed tensor counts as large enough to be spliced into the output as it decodes."""
    from onnxshrink.packing import api

    monkeypatch.setattr(api, "STREAM_MIN_BYTES", 1)


@pytest.mark.parametrize("options", [PackOptions(), EVERYTHING], ids=["default", "all packed"])
def test_unpack_splices_tensors_into_exactly_what_serialization_writes(tmp_path, splice_everything, options):
    # Tensors in the main graph, a sparse initializer, If/Loop bodies, Constant
    # nodes and a model function: each lands where SerializeToString puts it.
    model = mixed_model()
    packed = tmp_path / "m.onnxz"
    result = pack_model(model, options)
    packed.write_bytes(result.data)
    out = tmp_path / "m.onnx"
    written = unpack_file(packed, out)
    assert out.read_bytes() == load_packed(packed).SerializeToString()
    assert snapshot(onnx.load(out)) == snapshot(model)
    # The returned model is the skeleton as written: spliced tensors come back without data.
    spliced = {t.name for t in result.report.packed}
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    returned = {t.name: t for t in written.graph.initializer}
    assert returned.keys() == original.keys() and "w_big" in spliced
    for name, tensor in returned.items():
        if name in spliced:
            assert tensor.raw_data == b"" and not tensor.HasField("data_location"), name
        else:
            assert np.array_equal(numpy_helper.to_array(tensor), original[name]), name


def test_unpack_falls_back_to_serializing_when_splicing_fails(tmp_path, splice_everything, monkeypatch):
    from onnxshrink.packing import splice

    def refuse(*args, **kwargs):
        raise splice.SpliceError("placeholder 0 not found exactly once")

    monkeypatch.setattr(splice, "spliced_segments", refuse)
    packed, out = tmp_path / "m.onnxz", tmp_path / "m.onnx"
    packed.write_bytes(pack_model(mixed_model()).data)
    unpack_file(packed, out)
    assert out.read_bytes() == load_packed(packed).SerializeToString()


@pytest.mark.parametrize("writer", ["external_output", "splice_everything"], ids=["data file", "spliced"])
def test_a_corrupt_payload_mid_stream_leaves_nothing_behind(tmp_path, request, writer):
    request.getfixturevalue(writer)
    rng = np.random.default_rng(1)
    weights = [numpy_helper.from_array(rng.normal(size=(600, 500)).astype(np.float32), f"w{i}") for i in range(2)]
    blob = bytearray(pack_model(helper.make_model(helper.make_graph([], "g", [], [], weights))).data)
    # A byte of the second tensor's payload: the first is already written when the second fails.
    blob[-1000] ^= 0x55
    packed = tmp_path / "bad.onnxz"
    packed.write_bytes(bytes(blob))
    out = tmp_path / "out" / "m.onnx"
    with pytest.raises(PackError, match="bad.onnxz"):
        unpack_file(packed, out)
    assert list(out.parent.iterdir()) == []


def test_a_refused_pack_leaves_nothing_behind(tmp_path):
    """An external tensor in a model function is not read by load_model: pack refuses it by name."""
    src = saved_with_external_data(mixed_model(), tmp_path / "src")
    stored = onnx.load(src, load_external_data=False)
    fk = stored.functions[0].node[0].attribute[0].t
    onnx.external_data_helper.set_external_data(fk, "weights.bin", offset=0, length=64)
    fk.ClearField("raw_data")
    fk.data_location = TensorProto.EXTERNAL
    onnx.save(stored, src)
    with pytest.raises(PackError, match="'fk' still refers to external data"):
        pack_file(src, tmp_path / "out" / "m.onnxz")
    assert list((tmp_path / "out").iterdir()) == []
