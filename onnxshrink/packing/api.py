"""Packing a model into an .onnxz container and reading it back.

``pack_model`` leaves the caller's model alone: it works on a copy, encodes
each large tensor with the codec that measures smallest, strips the data from
the copy and writes container bytes. ``load_packed`` checks and restores
every tensor bit for bit. The read side imports only numpy, onnx and the
standard library (onnxruntime only to build a session).
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxshrink.model import serialized_size
from onnxshrink.errors import OnnxShrinkError, PackError, UsageError
from onnxshrink.packing import codebook, container, symbols, tensors
from onnxshrink.packing.bytereader import ByteReader
from onnxshrink.packing.codecs import codec_ids, get_codec
from onnxshrink.packing.codecs.abc import Analysis, Codec, decode_all
from onnxshrink.packing.container import Limits
from onnxshrink.packing.materialize import check_mode, materialize_float
from onnxshrink.packing.report import PackReport, TensorReport

DEFAULT_CODECS = ("raw", "huffman", "rle", "rle+huffman")


@dataclasses.dataclass(frozen=True)
class PackOptions:
    """How to pack.

    ``codecs``: the candidates tried on each tensor (the smallest result wins).
    They are listed fastest to decode first: ``speed_tolerance`` lets an
    earlier codec win when its output is at most that fraction larger than the
    smallest (Huffman decodes 30 % faster than zero runs on a half-zero tensor
    that zero runs code 0.5 % smaller). ``min_tensor_bytes``: smaller tensors
    stay inline in the graph, which the container compresses as a whole.

    ``float16_small`` (lossy, off by default): packed float32 tensors of fewer
    than ``float16_small_below`` elements (biases, norms, positional
    embeddings) are rounded to float16 values, stored as float16 and restored
    as float32. Tensors with values float16 cannot hold (non-finite, beyond
    65504) and the scales and zero points of Quantize/DequantizeLinear nodes
    stay exact. The report names every tensor stored this way.
    """

    codecs: tuple[str, ...] = DEFAULT_CODECS
    min_tensor_bytes: int = 256
    speed_tolerance: float = 0.01
    float16_small: bool = False
    float16_small_below: int = 65536

    def __post_init__(self):
        unknown = [c for c in self.codecs if c not in codec_ids()]
        if unknown or not self.codecs:
            raise UsageError(f"unknown codec(s) {unknown or '(none given)'}; choose from {', '.join(codec_ids())}")
        if self.min_tensor_bytes < 0 or not 0 <= self.speed_tolerance < 1 or self.float16_small_below < 0:
            raise UsageError("min_tensor_bytes and float16_small_below must be >= 0 and speed_tolerance in [0, 1)")


@dataclasses.dataclass(frozen=True)
class PackResult:
    """The container bytes and what went into them."""

    data: bytes
    report: PackReport

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return self.report.to_dict()


def pack_model(model: onnx.ModelProto, options: PackOptions = PackOptions()) -> PackResult:
    """Pack ``model`` (all tensor data in memory) into container bytes.

    The model is not modified. Deterministic: the same model and options give
    byte-identical output. Raises PackError for a tensor that still refers to
    external data (load models with :func:`onnxshrink.model.load_model`).
    """
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    entries, payloads, rows = [], [], []
    exact = quantization_parameters(skeleton) if options.float16_small else set()
    for slot in tensors.tensor_slots(skeleton):
        t = slot.tensor
        data = tensors.tensor_bytes(t)
        dtype = onnx.TensorProto.DataType.Name(t.data_type) if t.data_type in onnx.TensorProto.DataType.values() else str(t.data_type)
        if data is None or len(data) < options.min_tensor_bytes:
            if tensors.has_data(t):
                size = len(data) if data is not None else t.ByteSize()
                rows.append(TensorReport(t.name, slot.where, dtype, tuple(t.dims), "inline", size, size, 0.0))
            continue
        layout = tensors.DTYPE_LAYOUTS[t.data_type]
        cast = None
        if (options.float16_small and t.data_type == onnx.TensorProto.FLOAT and t.name not in exact
                and len(data) // 4 < options.float16_small_below):
            rounded = symbols.round_to_float16(data)
            if rounded is not None:
                data, cast = rounded, "float16"
        arr = np.frombuffer(data, dtype=np.uint8)
        config, payload, entropy = _best_encoding(arr, _codec_params(layout, cast), options)
        entries.append(container.Entry(
            slot.ordinal, slot.kind, t.name, t.data_type, tuple(t.dims), config,
            len(data), len(payload), zlib.crc32(data)))
        payloads.append(payload)
        rows.append(TensorReport(t.name, slot.where, dtype, tuple(t.dims), config["id"], len(data), len(payload),
                                 entropy, cast or ""))
        tensors.strip_data(t)
    blob = container.write(skeleton.SerializeToString(deterministic=True), entries, payloads)
    header = len(blob) - sum(len(p) for p in payloads)
    report = PackReport(rows, serialized_size(model), len(blob), header)
    return PackResult(blob, report)


def _codec_params(layout: tensors.DtypeLayout, cast: str | None) -> list[dict[str, Any]]:
    """The codec parameters to try on a tensor of this layout, the faster to decode first.

    Sub-byte tensors are tried both as bytes (a pair of int4 values per
    symbol: half the symbols to decode) and as one symbol per element (what
    gets them near their per-element entropy, and what zero runs need); the
    last entry is the one whose order-0 entropy the report states.
    """
    if cast is not None:
        return [{"word": symbols.CAST_WORDS[cast], "cast": cast}]
    if layout.bits < 8:
        return [{"word": 1}, {"word": 1, "symbol_bits": layout.bits}]
    return [{"word": layout.word}]


def _best_encoding(arr: np.ndarray, params: list[dict[str, Any]], options: PackOptions
                   ) -> tuple[dict[str, Any], bytes, float]:
    """The config and payload of the codec to use, and the tensor's entropy bound.

    The codec is the first listed (the faster to decode) whose estimated size
    is within ``options.speed_tolerance`` of the smallest estimate; estimates
    are exact but for the lane tables (~0.1 %), so only that codec encodes.
    ``raw`` is only tried with the first parameters (raw symbols would only
    be larger).
    """
    analysis = Analysis(arr)
    codecs: list[Codec] = [get_codec({"id": c, **p}) for c in options.codecs
                           for p in (params[:1] if c == "raw" else params)]
    worth = [c for c in codecs if c.worth_trying(analysis)] or codecs
    estimates = [(c.estimate(arr, analysis), c) for c in worth]
    best = min(e for e, _ in estimates)
    codec = next(c for e, c in estimates if e <= best * (1 + options.speed_tolerance))
    payload = codec.encode(arr, analysis)
    raw = get_codec({"id": "raw", **params[0]})
    if "raw" in options.codecs and len(payload) > raw.estimate(arr, analysis):
        codec = raw
        payload = codec.encode(arr, analysis)
    finest = get_codec({"id": "raw", **params[-1]}).values_analysis(arr, analysis)
    word = params[-1]["word"]
    entropy = sum(codebook.entropy_bits(h) for h in finest.histograms(word)) / 8
    return codec.get_config(), payload, entropy


def quantization_parameters(model: onnx.ModelProto) -> set[str]:
    """Names read as scales or zero points by QuantizeLinear/DequantizeLinear
    nodes anywhere in ``model``: tensors a lossy cast must not touch."""
    from onnxshrink.model import iter_graphs

    graphs = [g for g, _ in iter_graphs(model.graph)]
    nodes = [n for g in graphs for n in g.node] + [n for f in model.functions for n in f.node]
    return {name for n in nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")
            for name in n.input[1:3] if name}


def write_packed(result: PackResult, path: str | os.PathLike) -> None:
    """Write the container atomically: ``path`` is whole or untouched."""
    from onnxshrink.fileio import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_bytes(result.data)


def _read_source(source: str | os.PathLike | bytes | bytearray | memoryview) -> tuple[bytes | memoryview, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return source, "packed model"
    path = Path(source)
    if not path.is_file():
        raise PackError(f"{path}: no such file")
    try:
        return path.read_bytes(), str(path)
    except OSError as e:
        raise PackError(f"{path}: cannot read ({e.strerror})") from None


def load_packed(source: str | os.PathLike | bytes | bytearray | memoryview, limits: Limits = Limits(),
                materialize: str = "qdq") -> onnx.ModelProto:
    """Read a packed model (a path or the container bytes) into a ModelProto
    whose tensors are bit-identical to those packed.

    Every size is checked against ``limits`` and the real bytes before it is
    allocated, and every tensor against its CRC32. Anything wrong raises
    PackError, never another exception.

    ``materialize``: ``"qdq"`` (default) gives the model as packed;
    ``"float"`` replaces each quantized weight's DequantizeLinear node by a
    float32 initializer of exactly the values the node computes (see
    :mod:`onnxshrink.packing.materialize`): no dequantization at run time.
    """
    check_mode(materialize)
    data, name = _read_source(source)
    try:
        model = _restore(data, limits)
    except OnnxShrinkError as e:
        raise PackError(f"{name}: {e}") from None
    except Exception as e:  # anything else a corrupt file provokes is still a corrupt file
        raise PackError(f"{name}: corrupt container ({type(e).__name__} while decoding)") from None
    if materialize == "float":
        materialize_float(model)
    return model


# Tensors up to this size are decoded together, in groups of up to
# _BATCH_TOTAL_BYTES (bounding the extra memory); larger ones one at a time.
_BATCH_BYTES = 1 << 20
_BATCH_TOTAL_BYTES = 1 << 26


def _restore(data: bytes | memoryview, limits: Limits) -> onnx.ModelProto:
    parsed = container.read(data, limits)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(parsed.skeleton)
    except Exception:
        raise PackError("corrupt container: the model graph does not parse") from None
    slots = tensors.tensor_slots(model)
    jobs = [(entry, payload, _slot_for(entry, slots, previous))
            for entry, payload, previous in zip(parsed.entries, parsed.payloads, [None, *parsed.entries])]
    small = [job for job in jobs if job[0].decoded_length <= _BATCH_BYTES]
    group: list = []
    for job in small + [None]:
        if job is None or (group and sum(j[0].decoded_length for j in group) + job[0].decoded_length > _BATCH_TOTAL_BYTES):
            readers = [_payload_reader(entry, payload) for entry, payload, _ in group]
            steps = [get_codec(entry.codec).decode_steps(r, entry.decoded_length) for (entry, _, _), r in zip(group, readers)]
            for (entry, _, tensor), reader, out in zip(group, readers, decode_all(steps)):
                _finish(entry, reader, out, tensor)
            group = []
        if job is not None:
            group.append(job)
    for entry, payload, tensor in jobs:
        if entry.decoded_length > _BATCH_BYTES:
            reader = _payload_reader(entry, payload)
            _finish(entry, reader, get_codec(entry.codec).decode(reader, entry.decoded_length), tensor)
    return model


def _slot_for(entry: container.Entry, slots: list[tensors.TensorSlot], previous: container.Entry | None
              ) -> onnx.TensorProto:
    """The skeleton tensor ``entry`` restores, after checking that they match."""
    if not (previous.ordinal if previous else -1) < entry.ordinal < len(slots):
        raise PackError(f"corrupt container: tensor '{entry.name}' refers to a slot that does not exist")
    slot = slots[entry.ordinal]
    t = slot.tensor
    if (slot.kind, t.name, t.data_type, tuple(t.dims)) != (entry.kind, entry.name, entry.data_type, entry.dims) or (
            tensors.has_data(t) or t.data_location == onnx.TensorProto.EXTERNAL):
        raise PackError(f"corrupt container: tensor '{entry.name}' does not match the graph")
    if tensors.expected_nbytes(entry.data_type, entry.dims) != entry.decoded_length:
        raise PackError(f"corrupt container: tensor '{entry.name}' has the wrong size for its shape")
    get_codec(entry.codec)  # refuse unknown codecs before decoding anything
    return t


def _payload_reader(entry: container.Entry, payload: memoryview) -> ByteReader:
    return ByteReader(payload, f"payload of tensor '{entry.name}'")


def _finish(entry: container.Entry, reader: ByteReader, out: np.ndarray, tensor: onnx.TensorProto) -> None:
    """Check a decoded tensor (whole payload used, size, CRC32) and put it in place."""
    reader.expect_end()
    if out.size != entry.decoded_length or zlib.crc32(out) != entry.crc32:
        raise PackError(f"corrupt container: tensor '{entry.name}' fails its CRC32 check")
    tensor.raw_data = out.tobytes()


def pack_file(src: str | os.PathLike, dst: str | os.PathLike, options: PackOptions = PackOptions()) -> PackReport:
    """Pack the model at ``src`` into ``dst`` (atomic; ``src`` is only read).

    Raises ModelLoadError/UnsafeModelError for a bad input, UsageError when
    ``dst`` is ``src``.
    """
    from onnxshrink.model import load_model

    _refuse_same_file(src, dst)
    result = pack_model(load_model(src), options)
    write_packed(result, dst)
    return result.report


def unpack_file(src: str | os.PathLike, dst: str | os.PathLike, limits: Limits = Limits(),
                materialize: str = "qdq") -> onnx.ModelProto:
    """Restore the packed model at ``src`` as a plain .onnx at ``dst`` (atomic;
    external data beside it when the model is too large for one protobuf).
    ``materialize`` as for :func:`load_packed`. Returns the restored model."""
    from onnxshrink.model import save_model

    _refuse_same_file(src, dst)
    model = load_packed(src, limits, materialize)
    save_model(model, dst)
    return model


def _refuse_same_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    if Path(dst).exists() and Path(src).exists() and Path(dst).resolve() == Path(src).resolve():
        raise UsageError(f"{dst}: the output would overwrite the input; choose another -o")
