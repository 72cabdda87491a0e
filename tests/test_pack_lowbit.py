"""Sub-byte tensors coded one symbol per element, near their order-0 entropy,
bit-exact whatever their storage (raw_data, int32_data, odd counts, padding
bits); float16 storage of small float32 tensors (lossy, opt-in, reported);
the format version those parameters need."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxshrink.errors import PackError
from onnxshrink.packing import PackOptions, container, load_packed, pack_model, stream
from onnxshrink.packing.bytereader import ByteReader
from onnxshrink.packing.codebook import entropy_bits
from onnxshrink.packing.codecs import get_codec

SUB_BYTE = {TensorProto.INT4: (-8, 8, 4), TensorProto.UINT4: (0, 16, 4), TensorProto.INT2: (-2, 2, 2),
            TensorProto.UINT2: (0, 4, 2)}


def model_of(*tensors: TensorProto) -> onnx.ModelProto:
    nodes = [helper.make_node("Identity", [t.name], [t.name + "_out"]) for t in tensors]
    outs = [helper.make_tensor_value_info(t.name + "_out", t.data_type, list(t.dims)) for t in tensors]
    return helper.make_model(helper.make_graph(nodes, "g", [], outs, list(tensors)))


def sub_byte_values(dtype: int, n: int, zeros: float, seed: int = 0) -> np.ndarray:
    low, high, _ = SUB_BYTE[dtype]
    rng = np.random.default_rng(seed)
    v = np.clip(np.round(rng.normal((low + high) / 2, (high - low) / 7, n)), low, high - 1).astype(np.int64)
    v[rng.random(n) < zeros] = 0
    return v


def restored_bytes(blob: bytes) -> dict[str, tuple[bytes, bytes]]:
    return {t.name: (t.raw_data, numpy_helper.to_array(t).tobytes()) for t in load_packed(blob).graph.initializer}


@pytest.mark.parametrize("dtype", list(SUB_BYTE), ids=TensorProto.DataType.Name)
@pytest.mark.parametrize("codec", ["huffman", "rle", "rle+huffman"])
def test_sub_byte_tensors_round_trip_bit_exactly_as_symbols(dtype, codec):
    tensors = []
    for n, zeros in ((1, 0), (3, 0), (777, 0.0), (1001, 0.8), (4096, 0.5)):  # odd counts leave padding bits
        typed = helper.make_tensor(f"typed_{n}", dtype, [n], sub_byte_values(dtype, n, zeros).tolist())
        raw = numpy_helper.from_array(numpy_helper.to_array(typed), f"raw_{n}")
        assert typed.int32_data and raw.HasField("raw_data")
        tensors += [typed, raw]
    blob = pack_model(model_of(*tensors), PackOptions(codecs=(codec,), min_tensor_bytes=0)).data
    configs = [e.codec for e in container.read(blob).entries]
    if codec != "rle":  # plain zero runs store a byte per symbol: the packed bytes are smaller
        assert {"id": codec, "word": 1, "symbol_bits": SUB_BYTE[dtype][2]} in configs
    back = restored_bytes(blob)
    for t in tensors:
        expected = numpy_helper.to_array(t)
        assert back[t.name][0] == numpy_helper.from_array(expected).raw_data, t.name
        assert back[t.name][1] == expected.tobytes(), t.name


@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("codec", ["raw", "huffman", "rle", "rle+huffman"])
def test_every_codec_codes_symbols_exactly(codec, bits):
    rng = np.random.default_rng(bits)
    for data in (np.zeros(0, np.uint8), np.array([0xF0], np.uint8), rng.integers(0, 256, 999).astype(np.uint8),
                 np.where(rng.random(5000) < 0.7, 0, rng.integers(0, 256, 5000)).astype(np.uint8)):
        c = get_codec({"id": codec, "symbol_bits": bits})
        assert np.array_equal(c.decode(ByteReader(c.encode(data)), data.size), data)


def test_padding_bits_of_an_odd_int4_tensor_survive():
    t = helper.make_tensor("w", TensorProto.INT4, [3], [1, 2, 3], raw=False)
    t.ClearField("int32_data")
    t.raw_data = bytes([0x21, 0xF3])  # the last high nibble is padding, set here
    (row,) = restored_bytes(pack_model(model_of(t), PackOptions(codecs=("huffman",), min_tensor_bytes=0)).data).values()
    assert row[0] == bytes([0x21, 0xF3])


@pytest.mark.parametrize("zeros, bound", [(0.0, 1.03), (0.5, 1.04), (0.8, 1.05)])
def test_int4_costs_close_to_its_order0_entropy(zeros, bound):
    n = 1 << 16
    q = sub_byte_values(TensorProto.INT4, n, zeros, seed=3)
    blob = pack_model(model_of(helper.make_tensor("w", TensorProto.INT4, [n], q.tolist())))
    (row,) = blob.report.packed
    entropy = entropy_bits(np.bincount(q + 8, minlength=16)) / n
    assert abs(row.entropy_bytes * 8 / n - entropy) < 1e-3  # the report's bound is per int4 value
    assert row.bits_per_element <= bound * entropy, (row.codec, row.bits_per_element, entropy)


def test_a_decoded_symbol_that_is_not_a_nibble_is_corrupt_input():
    codec = get_codec({"id": "huffman", "word": 1, "symbol_bits": 4})
    payload = stream.encode(np.array([1, 2, 16, 3] * 50, np.uint8))
    with pytest.raises(PackError, match="does not fit in 4 bits"):
        codec.decode(ByteReader(payload), 100)


@pytest.mark.parametrize("config", [
    {"id": "huffman", "word": 2, "symbol_bits": 4}, {"id": "huffman", "symbol_bits": 3},
    {"id": "huffman", "symbol_bits": 4.0}, {"id": "raw", "word": 4, "cast": "float16"},
    {"id": "raw", "word": 2, "cast": "bfloat16"}, {"id": "raw", "word": 2, "cast": ["float16"]},
])
def test_bad_codec_parameters_are_refused(config):
    with pytest.raises(PackError):
        get_codec(config)


def test_version_2_only_when_a_file_needs_it():
    int8 = numpy_helper.from_array(np.arange(-128, 128, dtype=np.int8).repeat(4), "w8")
    int4 = helper.make_tensor("w4", TensorProto.INT4, [999], sub_byte_values(TensorProto.INT4, 999, 0).tolist())
    assert pack_model(model_of(int8)).data[8] == 1
    blob = bytearray(pack_model(model_of(int8, int4), PackOptions(codecs=("huffman",), min_tensor_bytes=0)).data)
    assert blob[8] == 2
    blob[8] = 1  # the prefix CRC covers the version: fix it up to reach the real check
    import struct
    import zlib
    stored_len = struct.unpack_from("<Q", blob, 16)[0]
    struct.pack_into("<I", blob, 32, zlib.crc32(bytes(blob[36:36 + stored_len]), zlib.crc32(bytes(blob[:32]))))
    with pytest.raises(PackError, match="version 1 file uses codecs or parameters of version 2"):
        load_packed(bytes(blob))


def small_float_model() -> onnx.ModelProto:
    rng = np.random.default_rng(5)
    inits = [
        numpy_helper.from_array(rng.normal(0, 1, 300).astype(np.float32), "bias"),
        numpy_helper.from_array(rng.normal(0, 1, 70000).astype(np.float32), "big"),
        numpy_helper.from_array(np.array([1e6, 1.0] * 100, np.float32), "beyond_fp16"),
        numpy_helper.from_array(rng.integers(-127, 128, (300, 4)).astype(np.int8), "wq"),
        numpy_helper.from_array((rng.random(300) * 0.01).astype(np.float32), "w_scale"),
    ]
    nodes = [helper.make_node("DequantizeLinear", ["wq", "w_scale"], ["w"], axis=0),
             *(helper.make_node("Identity", [n], [n + "_out"]) for n in ("bias", "big", "beyond_fp16", "w"))]
    outs = [helper.make_tensor_value_info(n + "_out", TensorProto.FLOAT, None) for n in ("bias", "big", "beyond_fp16", "w")]
    return helper.make_model(helper.make_graph(nodes, "g", [], outs, inits), opset_imports=[helper.make_opsetid("", 21)])


def test_float16_small_stores_only_small_plain_float_tensors_and_says_so():
    model = small_float_model()
    exact = pack_model(model)
    assert exact.report.float16_tensors == []
    assert not any("cast" in e.codec for e in container.read(exact.data).entries)
    result = pack_model(model, PackOptions(float16_small=True))
    assert result.report.float16_tensors == ["bias"]  # not big, not beyond float16's range, not a scale
    assert result.to_dict()["totals"]["float16_tensors"] == ["bias"]
    assert len(result.data) < len(exact.data) - 400
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in load_packed(result.data).graph.initializer}
    assert after["bias"].dtype == np.float32
    assert np.array_equal(after["bias"], before["bias"].astype(np.float16).astype(np.float32))
    for name in ("big", "beyond_fp16", "wq", "w_scale"):
        assert after[name].tobytes() == before[name].tobytes(), name
