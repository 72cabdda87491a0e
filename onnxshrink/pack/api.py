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

from onnxshrink.errors import OnnxShrinkError, PackError, UsageError
from onnxshrink.pack import container, tensors
from onnxshrink.pack.bytereader import ByteReader
from onnxshrink.pack.codecs import codec_ids, get_codec
from onnxshrink.pack.container import Limits
from onnxshrink.pack.report import PackReport, TensorReport, entropy_bound_bytes

DEFAULT_CODECS = ("raw", "huffman", "rle", "rle+huffman")


@dataclasses.dataclass(frozen=True)
class PackOptions:
    """How to pack.

    ``codecs``: the candidates tried on each tensor (the smallest result wins).
    ``min_tensor_bytes``: smaller tensors stay inline in the graph, which the
    container compresses as a whole. ``close_call``: when the runner-up's
    estimate is within this fraction of the best, both are encoded and the
    smaller kept.
    """

    codecs: tuple[str, ...] = DEFAULT_CODECS
    min_tensor_bytes: int = 256
    close_call: float = 0.02

    def __post_init__(self):
        unknown = [c for c in self.codecs if c not in codec_ids()]
        if unknown or not self.codecs:
            raise UsageError(f"unknown codec(s) {unknown or '(none given)'}; choose from {', '.join(codec_ids())}")
        if self.min_tensor_bytes < 0:
            raise UsageError("min_tensor_bytes must be >= 0")


@dataclasses.dataclass(frozen=True)
class PackResult:
    """The container bytes and what went into them."""

    data: bytes
    report: PackReport


def pack_model(model: onnx.ModelProto, options: PackOptions = PackOptions()) -> PackResult:
    """Pack ``model`` (all tensor data in memory) into container bytes.

    The model is not modified. Deterministic: the same model and options give
    byte-identical output. Raises PackError for a tensor that still refers to
    external data (load models with :func:`onnxshrink.model.load_model`).
    """
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    entries, payloads, rows = [], [], []
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
        word = layout.word if layout.bits >= 8 else 1
        arr = np.frombuffer(data, dtype=np.uint8)
        config, payload = _best_encoding(arr, word, options)
        entries.append(container.Entry(
            slot.ordinal, slot.kind, t.name, t.data_type, tuple(t.dims), config,
            len(data), len(payload), zlib.crc32(data)))
        payloads.append(payload)
        rows.append(TensorReport(t.name, slot.where, dtype, tuple(t.dims), config["id"], len(data), len(payload),
                                 entropy_bound_bytes(arr, word)))
        tensors.strip_data(t)
    blob = container.write(skeleton.SerializeToString(deterministic=True), entries, payloads)
    header = len(blob) - sum(len(p) for p in payloads)
    report = PackReport(rows, model.ByteSize(), len(blob), header)
    return PackResult(blob, report)


def _best_encoding(arr: np.ndarray, word: int, options: PackOptions) -> tuple[dict[str, Any], bytes]:
    """The config and payload of the candidate codec whose output is smallest."""
    codecs = [get_codec({"id": c, "word": word}) for c in options.codecs]
    ranked = sorted(((c.estimate(arr), i, c) for i, c in enumerate(codecs)), key=lambda x: (x[0], x[1]))
    best_estimate = ranked[0][0]
    tried = [c for est, _, c in ranked if est <= best_estimate * (1 + options.close_call)][:2]
    results = [(c, c.encode(arr)) for c in tried]
    codec, payload = min(results, key=lambda r: len(r[1]))
    if len(payload) > arr.size and "raw" in options.codecs:
        codec = get_codec({"id": "raw", "word": word})
        payload = codec.encode(arr)
    return codec.get_config(), payload


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


def load_packed(source: str | os.PathLike | bytes | bytearray | memoryview, limits: Limits = Limits()) -> onnx.ModelProto:
    """Read a packed model (a path or the container bytes) into a ModelProto
    whose tensors are bit-identical to those packed.

    Every size is checked against ``limits`` and the real bytes before it is
    allocated, and every tensor against its CRC32. Anything wrong raises
    PackError, never another exception.
    """
    data, name = _read_source(source)
    try:
        return _restore(data, limits)
    except OnnxShrinkError as e:
        raise PackError(f"{name}: {e}") from None
    except Exception as e:  # anything else a corrupt file provokes is still a corrupt file
        raise PackError(f"{name}: corrupt container ({type(e).__name__} while decoding)") from None


def _restore(data: bytes | memoryview, limits: Limits) -> onnx.ModelProto:
    parsed = container.read(data, limits)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(parsed.skeleton)
    except Exception:
        raise PackError("corrupt container: the model graph does not parse") from None
    slots = tensors.tensor_slots(model)
    previous = -1
    for entry, payload in zip(parsed.entries, parsed.payloads):
        if not previous < entry.ordinal < len(slots):
            raise PackError(f"corrupt container: tensor '{entry.name}' refers to a slot that does not exist")
        previous = entry.ordinal
        t = slots[entry.ordinal].tensor
        if (slots[entry.ordinal].kind, t.name, t.data_type, tuple(t.dims)) != (
            entry.kind, entry.name, entry.data_type, entry.dims
        ) or tensors.has_data(t) or t.data_location == onnx.TensorProto.EXTERNAL:
            raise PackError(f"corrupt container: tensor '{entry.name}' does not match the graph")
        if tensors.expected_nbytes(entry.data_type, entry.dims) != entry.decoded_length:
            raise PackError(f"corrupt container: tensor '{entry.name}' has the wrong size for its shape")
        codec = get_codec(entry.codec)
        reader = ByteReader(payload, f"payload of tensor '{entry.name}'")
        out = codec.decode(reader, entry.decoded_length)
        reader.expect_end()
        if out.size != entry.decoded_length or zlib.crc32(out) != entry.crc32:
            raise PackError(f"corrupt container: tensor '{entry.name}' fails its CRC32 check")
        t.raw_data = out.tobytes()
    return model
