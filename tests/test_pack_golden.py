"""Golden .onnxz files, decoded forever (numcodecs' check_backwards_compatibility):
a change that breaks reading an existing file fails here.

The files in tests/fixtures/pack/ were written once by ``make_fixtures``; the
expected tensors are stored as SHA-256 digests beside them. ``make_fixtures``
writes only files that do not exist yet: add a fixture for new codec
parameters or a new format version, and keep the old files:

    ONNXSHRINK_WRITE_GOLDEN=1 python -m pytest tests/test_pack_golden.py
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxshrink.packing import PackOptions, load_packed, pack_model
from onnxshrink.packing.codecs import codec_ids
from onnxshrink.packing.tensors import tensor_slots

FIXTURES = Path(__file__).parent / "fixtures" / "pack"


def golden_model() -> onnx.ModelProto:
    """Int8 dense and pruned, float32/float16/bfloat16 weights, int4, bool, a
    Constant node and an If with initializers in its branches; between them
    every codec and every kind of code-length table."""
    rng = np.random.default_rng(2024)
    dense = np.clip(np.round(rng.laplace(0, 9, (48, 64))), -127, 127).astype(np.int8)
    pruned = np.clip(np.round(rng.laplace(0, 9, (64, 64))), -127, 127).astype(np.int8)
    pruned[rng.random(pruned.shape) < 0.85] = 0
    inits = [
        numpy_helper.from_array(dense, "dense_int8"),
        numpy_helper.from_array(pruned, "pruned_int8"),
        numpy_helper.from_array(rng.normal(0, 0.05, (40, 24)).astype(np.float32), "w_fp32"),
        helper.make_tensor("w_fp16", TensorProto.FLOAT16, [300], rng.normal(0, 1, 300).astype(np.float16)),
        helper.make_tensor("w_bf16", TensorProto.BFLOAT16, [300], rng.normal(0, 1, 300).tolist()),
        helper.make_tensor("w_int4", TensorProto.INT4, [600], rng.integers(-8, 8, 600).tolist()),
        numpy_helper.from_array(rng.random(512) < 0.2, "mask"),
        # Only even bytes: its code-length table is the dense kind.
        numpy_helper.from_array((rng.integers(0, 128, 4000) * 2).astype(np.uint8), "even_uint8"),
        numpy_helper.from_array(np.float32(0), "zero"),
    ]
    branch = lambda name, init: helper.make_graph(  # noqa: E731
        [helper.make_node("Identity", [init.name], [name + "_out"])], name, [],
        [helper.make_tensor_value_info(name + "_out", TensorProto.FLOAT, [400])], [init])
    then_w = numpy_helper.from_array(rng.normal(0, 1, 400).astype(np.float32), "then_w")
    else_w = numpy_helper.from_array(np.zeros(400, np.float32), "else_w")
    nodes = [
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.arange(400, dtype=np.int64), "c_value")),
        helper.make_node("Greater", ["x", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", then_w), else_branch=branch("else", else_w)),
    ]
    graph = helper.make_graph(nodes, "golden", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [400]),
                               helper.make_tensor_value_info("c", TensorProto.INT64, [400])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxshrink-golden")


def golden_lowbit_model() -> onnx.ModelProto:
    """Version 2 parameters: int4 / uint4 / int2 coded one symbol per element
    (odd counts, typed int32_data storage, 90 % zeros) and small float32
    tensors stored as float16."""
    rng = np.random.default_rng(2025)
    int4 = np.clip(np.round(rng.normal(0, 2.2, 1001)), -8, 7).astype(np.int64)
    sparse4 = np.clip(np.round(rng.normal(0, 2.2, 8001)), -8, 7).astype(np.int64)
    sparse4[rng.random(sparse4.size) < 0.9] = 0
    inits = [
        helper.make_tensor("w_int4", TensorProto.INT4, [7, 143], int4.tolist()),
        helper.make_tensor("w_int4_sparse", TensorProto.INT4, [8001], sparse4.tolist()),
        helper.make_tensor("w_uint4", TensorProto.UINT4, [333], np.clip(np.round(rng.normal(8, 2, 333)), 0, 15).tolist()),
        helper.make_tensor("w_int2", TensorProto.INT2, [8001], np.where(rng.random(8001) < 0.95, 0, rng.integers(-2, 2, 8001)).tolist()),
        numpy_helper.from_array(rng.normal(0, 0.1, 96).astype(np.float32), "bias_fp32"),
    ]
    nodes = [helper.make_node("Identity", [t.name], [t.name + "_out"]) for t in inits]
    outputs = [helper.make_tensor_value_info(t.name + "_out", t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "golden_lowbit", [], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10,
                             producer_name="onnxshrink-golden")


FIXTURE_OPTIONS = {
    "v1_default": (golden_model, PackOptions(min_tensor_bytes=0)),
    "v1_rle": (golden_model, PackOptions(codecs=("rle",), min_tensor_bytes=0)),
    "v1_raw": (golden_model, PackOptions(codecs=("raw",))),
    "v2_lowbit": (golden_lowbit_model, PackOptions(min_tensor_bytes=0, float16_small=True)),
    "v3_deflate": (golden_model, PackOptions(codecs=("deflate",), min_tensor_bytes=0)),
    "v3_rle_deflate": (golden_model, PackOptions(codecs=("rle+deflate",), min_tensor_bytes=0)),
}


def digests(model: onnx.ModelProto) -> list[dict]:
    out = []
    for slot in tensor_slots(model):
        a = numpy_helper.to_array(slot.tensor)
        out.append({"where": slot.where, "name": slot.tensor.name, "dtype": a.dtype.str, "shape": list(a.shape),
                    "sha256": hashlib.sha256(a.tobytes()).hexdigest()})
    return out


def make_fixtures() -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name, (make_model, options) in FIXTURE_OPTIONS.items():
        if (FIXTURES / f"{name}.onnxz").exists():
            continue  # golden files are never rewritten
        model = make_model()
        result = pack_model(model, options)
        restored = load_packed(result.data)  # lossy options: the digests are of what decodes
        (FIXTURES / f"{name}.onnxz").write_bytes(result.data)
        codecs = sorted({t.codec for t in result.report.packed})
        (FIXTURES / f"{name}.json").write_text(json.dumps({"codecs": codecs, "tensors": digests(restored)}, indent=1) + "\n")


if os.environ.get("ONNXSHRINK_WRITE_GOLDEN"):
    make_fixtures()

GOLDEN = sorted(FIXTURES.glob("*.onnxz"))


def test_golden_files_exist_and_cover_every_codec():
    assert len(GOLDEN) >= 3
    seen = set()
    for path in GOLDEN:
        seen |= set(json.loads(path.with_suffix(".json").read_text())["codecs"])
    assert seen == set(codec_ids()), f"add a golden file for {set(codec_ids()) - seen}"


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_golden_files_decode_to_the_same_tensors(path):
    expected = json.loads(path.with_suffix(".json").read_text())
    model = load_packed(path)
    assert digests(model) == expected["tensors"]
    assert model.producer_name == "onnxshrink-golden"


def test_golden_model_is_what_the_fixtures_were_made_from():
    # If this fails, golden_model() changed: the files still hold the old one,
    # which the decode test above keeps checking.
    expected = json.loads((FIXTURES / "v1_default.json").read_text())
    assert digests(golden_model()) == expected["tensors"]
    lowbit = json.loads((FIXTURES / "v2_lowbit.json").read_text())["tensors"]
    assert [d for d in digests(golden_lowbit_model()) if d["name"] != "bias_fp32"] == lowbit[:-1]


def test_golden_files_cover_every_codec_parameter():
    from onnxshrink.packing import container

    seen = set()
    for path in GOLDEN:
        for e in container.read(path.read_bytes()).entries:
            seen |= {(k, v) for k, v in e.codec.items() if k in container.V2_CODEC_KEYS}
        assert path.read_bytes()[8] == int(path.stem[1]), "the name says the version"
    assert seen == {("symbol_bits", 4), ("symbol_bits", 2), ("cast", "float16")}


def test_golden_files_cover_every_code_length_table_kind(monkeypatch):
    from onnxshrink.packing import codebook

    seen = set()
    read = codebook.read_lengths

    def spy(reader):
        seen.add(reader.view[reader.pos])
        return read(reader)

    monkeypatch.setattr(codebook, "read_lengths", spy)
    for path in GOLDEN:
        load_packed(path)
    assert seen == {codebook.DENSE_TABLE, codebook.SPARSE_TABLE, codebook.DELTA_TABLE}
