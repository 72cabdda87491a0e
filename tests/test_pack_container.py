"""The container refuses what it cannot trust: truncated, bit-flipped and
field-mangled files raise PackError (never another exception, never a hang,
never an allocation beyond the limits); unknown versions and codecs are named."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxshrink.errors import PackError
from onnxshrink.packing import Limits, PackOptions, container, load_packed, pack_model
from onnxshrink.packing.bytereader import u32

FUZZ = settings(max_examples=int(__import__("os").environ.get("PACK_FUZZ_EXAMPLES", 150)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def mixed_model() -> onnx.ModelProto:
    """One tensor per coding path: dense int8, sparse int8, float32 planes, noise, a constant."""
    rng = np.random.default_rng(0)
    dense = np.clip(np.round(rng.laplace(0, 10, (64, 40))), -127, 127).astype(np.int8)
    sparse = np.clip(np.round(rng.laplace(0, 10, (100, 80))), -127, 127).astype(np.int8)
    sparse[rng.random(sparse.shape) < 0.9] = 0
    tensors = [
        numpy_helper.from_array(dense, "dense"),
        numpy_helper.from_array(sparse, "sparse"),
        numpy_helper.from_array(rng.normal(0, 0.1, (30, 20)).astype(np.float32), "float"),
        numpy_helper.from_array(rng.integers(0, 256, 700).astype(np.uint8), "noise"),
        numpy_helper.from_array(np.full(500, 7, np.int16), "constant"),
    ]
    nodes = [helper.make_node("Identity", [t.name], [t.name + "_out"]) for t in tensors]
    outputs = [helper.make_tensor_value_info(t.name + "_out", t.data_type, list(t.dims)) for t in tensors]
    return helper.make_model(helper.make_graph(nodes, "g", [], outputs, tensors),
                             opset_imports=[helper.make_opsetid("", 17)])


MODEL = mixed_model()
BLOB = pack_model(MODEL).data
RLE_BLOB = pack_model(MODEL, PackOptions(codecs=("rle",))).data
LANES = PackOptions(codecs=("raw", "huffman", "rle+huffman"))  # the codecs decoded through numpy lanes
LANES_BLOB = pack_model(MODEL, LANES).data
SMALL = Limits(max_header_bytes=1 << 20, max_entries=64, max_tensor_bytes=1 << 16, max_total_bytes=1 << 18)


def test_the_fixture_uses_every_codec():
    codecs = {t.codec for t in pack_model(MODEL).report.packed}
    assert {"deflate", "rle+deflate", "raw"} <= codecs
    assert {t.codec for t in pack_model(MODEL, LANES).report.packed} == {"huffman", "rle+huffman", "raw"}
    assert {t.codec for t in pack_model(MODEL, PackOptions(codecs=("rle",))).report.packed} == {"rle"}


def split(blob: bytes) -> tuple[tuple, bytes, bytes]:
    """(prefix fields, decompressed header, payloads) of a container."""
    fields = container._PREFIX.unpack(blob[: container._PREFIX.size])
    stored_len, header_len = fields[4], fields[5]
    stored = blob[container.PREFIX_SIZE : container.PREFIX_SIZE + stored_len]
    header = container._decompress(fields[3], memoryview(stored), header_len)
    return fields, header, blob[container.PREFIX_SIZE + stored_len :]


def reframe(header: bytes, payloads: bytes, version: int = container.VERSION) -> bytes:
    """A container around ``header`` (stored uncompressed) with a valid header CRC:
    what a mangled-but-consistent file looks like."""
    prefix = container._PREFIX.pack(container.MAGIC, version, 0, container.NONE, len(header), len(header))
    return prefix + u32(zlib.crc32(header, zlib.crc32(prefix))) + header + payloads


def explicitly_refused(error: PackError) -> None:
    """The refusal came from a check, not from load_packed's last-resort net
    (which turns an unexpected exception into "... while decoding")."""
    assert "while decoding" not in str(error), str(error)


def same_model(restored: onnx.ModelProto) -> bool:
    return restored.SerializeToString(deterministic=True) == MODEL.SerializeToString(deterministic=True)


def test_reframing_an_untouched_header_still_loads():
    _, header, payloads = split(BLOB)
    assert same_model(load_packed(reframe(header, payloads)))
    assert same_model(load_packed(BLOB)) and same_model(load_packed(RLE_BLOB)) and same_model(load_packed(LANES_BLOB))


@FUZZ
@given(st.data())
def test_truncated_containers_raise_pack_error(data):
    blob = data.draw(st.sampled_from([BLOB, RLE_BLOB, LANES_BLOB]))
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(PackError) as refused:
        load_packed(blob[:cut], SMALL)
    explicitly_refused(refused.value)


@FUZZ
@given(st.data())
def test_bit_flips_raise_pack_error_or_change_nothing(data):
    blob = bytearray(data.draw(st.sampled_from([BLOB, RLE_BLOB, LANES_BLOB])))
    for _ in range(data.draw(st.integers(1, 4))):
        blob[data.draw(st.integers(0, len(blob) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    try:
        restored = load_packed(bytes(blob), SMALL)
    except PackError as e:
        return explicitly_refused(e)
    assert same_model(restored)  # only padding bits may flip unnoticed


@FUZZ
@given(st.data())
def test_mangled_header_fields_raise_pack_error_or_parse(data):
    """With the header CRC recomputed, the parser itself must hold: any
    exception but PackError (or an allocation beyond SMALL) fails the test."""
    _, header, payloads = split(data.draw(st.sampled_from([BLOB, RLE_BLOB, LANES_BLOB])))
    header = bytearray(header)
    skeleton_end = 8 + struct.unpack("<Q", header[:8])[0]
    for _ in range(data.draw(st.integers(1, 3))):
        # Mostly the table of entries, where the sizes and codec configs live.
        at = data.draw(st.integers(skeleton_end, len(header) - 1) | st.integers(0, len(header) - 1))
        header[at] = data.draw(st.integers(0, 255))
    try:
        load_packed(reframe(bytes(header), payloads), SMALL)
    except PackError as e:
        explicitly_refused(e)


@FUZZ
@given(st.data())
def test_mangled_payloads_raise_pack_error_or_change_nothing(data):
    _, header, payloads = split(data.draw(st.sampled_from([BLOB, RLE_BLOB, LANES_BLOB])))
    payloads = bytearray(payloads)
    for _ in range(data.draw(st.integers(1, 8))):
        payloads[data.draw(st.integers(0, len(payloads) - 1))] = data.draw(st.integers(0, 255))
    try:
        restored = load_packed(reframe(header, bytes(payloads)), SMALL)
    except PackError as e:
        return explicitly_refused(e)
    assert same_model(restored)


def rebuilt(**changes) -> bytes:
    """BLOB with the first entry's fields replaced (and a valid CRC)."""
    parsed = container.read(BLOB)
    entries = list(parsed.entries)
    entries[0] = container.Entry(**{**entries[0].__dict__, **changes})
    return container.write(parsed.skeleton, entries, [bytes(p) for p in parsed.payloads])


@pytest.mark.parametrize("changes, message", [
    ({"codec": {"id": "brotli-11"}}, "unknown codec 'brotli-11'"),
    ({"codec": {"id": "huffman", "word": 5}}, "word width"),
    ({"codec": {"id": ["deflate"]}}, "a codec config without an id"),
    ({"codec": {"id": "deflate", "word": 1, "level": 9}}, "unknown parameters"),
    ({"decoded_length": 1 << 40}, "exceeds the limit"),
    ({"decoded_length": 10}, "wrong size"),
    ({"encoded_length": 1 << 40}, "exceeds the limit"),
    ({"encoded_length": 3}, "truncated|trailing"),
    ({"dims": (1 << 20, 1 << 20)}, "does not match"),
    ({"ordinal": 999}, "does not exist"),
    ({"name": "other"}, "does not match"),
    ({"data_type": TensorProto.FLOAT}, "does not match"),
    ({"crc32": 0}, "CRC32"),
])
def test_inconsistent_entries_are_refused_by_name(changes, message):
    with pytest.raises(PackError, match=message):
        load_packed(rebuilt(**changes), SMALL)


def test_unknown_version_is_refused_with_a_clear_message():
    _, header, payloads = split(BLOB)
    with pytest.raises(PackError, match="unsupported .onnxz version 4"):
        load_packed(reframe(header, payloads, version=4))


def test_not_a_container_and_empty_input():
    for blob in (b"", b"\x89ONNX", MODEL.SerializeToString()):
        with pytest.raises(PackError, match="not an onnxshrink packed model"):
            load_packed(blob)


def test_limits_are_checked_before_decoding():
    with pytest.raises(PackError, match="limit"):
        load_packed(BLOB, Limits(max_tensor_bytes=1000))
    with pytest.raises(PackError, match="limit"):
        load_packed(BLOB, Limits(max_total_bytes=5000))
    with pytest.raises(PackError, match="limit"):
        load_packed(BLOB, Limits(max_entries=2))
    with pytest.raises(PackError, match="limit"):
        load_packed(BLOB, Limits(max_header_bytes=100))


def test_a_decompression_bomb_within_declared_sizes_stops_at_the_limit():
    """A constant stream can declare any length in 2 bytes: the limit is what stops it."""
    zeros = numpy_helper.from_array(np.zeros(1 << 16, np.uint8), "z")
    model = helper.make_model(helper.make_graph([], "g", [], [], [zeros]))
    blob = pack_model(model).data
    assert len(blob) < 400
    assert load_packed(blob, Limits(max_tensor_bytes=1 << 16)).graph.initializer[0].raw_data == bytes(1 << 16)
    with pytest.raises(PackError, match="limit"):
        load_packed(blob, Limits(max_tensor_bytes=(1 << 16) - 1))


def test_payloads_must_fill_the_file_exactly():
    with pytest.raises(PackError, match="trailing"):
        load_packed(BLOB + b"\x00")
