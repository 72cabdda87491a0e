"""Encoding a model's tensors one at a time, each payload written out as soon
as it is made.

:func:`encode_tensors` walks the tensor slots (docs/FORMAT.md section 2),
codes each large tensor with the codec that measures smallest, writes the
payload to a sink and strips the tensor's data from the model, which becomes
the container's skeleton. A tensor stored in an external file is read only
when its turn comes, so memory holds one tensor and its payload at a time
besides the model itself.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, BinaryIO, Mapping

import numpy as np
import onnx

from onnxshrink import external_data
from onnxshrink.errors import UsageError
from onnxshrink.external_data import ExternalReference
from onnxshrink.packing import codebook, container, symbols, tensors
from onnxshrink.packing.codecs import codec_ids, get_codec
from onnxshrink.packing.codecs.abc import Analysis, Codec
from onnxshrink.packing.report import TensorReport

DEFAULT_CODECS = ("raw", "deflate", "rle+deflate", "huffman", "rle", "rle+huffman")


# float16_small_below for "every float tensor": the shrink pipeline tries float16 storage of every
# float tensor first (weights the search kept float included), and the width mix checks its mixes so.
FLOAT16_ALL_BELOW = 1 << 62


@dataclasses.dataclass(frozen=True)
class PackOptions:
    """How to pack.

    ``codecs``: the candidates tried on each tensor (the smallest result wins).
    They are listed fastest to decode first: an earlier codec wins when its
    output is at most ``speed_tolerance`` (a fraction) larger than the
    smallest (Huffman decodes 30 % faster than zero runs on a half-zero
    tensor that zero runs code 0.5 % smaller), and a codec decoded in C
    (``deflate``, ``rle+deflate``, ``raw``) wins over one decoded through
    numpy lanes (``huffman``, ``rle+huffman``) when it is at most
    ``speed_tolerance`` plus ``speed_slack_bytes`` larger: on a tensor of a
    few hundred bytes deflate's block header costs 10-30 bytes more, while
    the lanes' fixed cost per step is what made small tensors slow
    (digits_resnet int8: 20 small tensors took 40 % of its load time).
    ``min_tensor_bytes``: smaller tensors stay inline in the graph, which the
    container compresses as a whole.

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
    speed_slack_bytes: int = 32
    float16_small: bool = False
    float16_small_below: int = 65536

    def __post_init__(self):
        unknown = [c for c in self.codecs if c not in codec_ids()]
        if unknown or not self.codecs:
            raise UsageError(f"unknown codec(s) {unknown or '(none given)'}; choose from {', '.join(codec_ids())}")
        if (self.min_tensor_bytes < 0 or not 0 <= self.speed_tolerance < 1 or self.float16_small_below < 0
                or self.speed_slack_bytes < 0):
            raise UsageError("min_tensor_bytes, speed_slack_bytes and float16_small_below must be >= 0 "
                             "and speed_tolerance in [0, 1)")


def encode_tensors(model: onnx.ModelProto, options: PackOptions, sink: BinaryIO,
                   external: Mapping[int, ExternalReference] | None = None
                   ) -> tuple[list[container.Entry], list[TensorReport]]:
    """Encode every large tensor of ``model``, writing the payloads to ``sink``
    in slot order; returns the container entries and a report row per tensor
    that holds data.

    Changes ``model`` in place into the skeleton: packed tensors lose their
    data. ``external``: slot ordinal -> checked reference, for tensors whose
    data is still in a file (``load_model(..., load_external_data=False)``);
    each of them, and each mapped tensor, is read when encoded and no longer
    refers to the file afterwards
    (tensors that stay inline get their bytes as ``raw_data``, exactly as
    ``load_model`` would have left them).
    """
    external = external or {}
    entries, rows = [], []
    exact = quantization_parameters(model) if options.float16_small else set()
    for slot in tensors.tensor_slots(model):
        entry, row = _encode_slot(slot, external.get(slot.ordinal), options, exact, sink)
        if entry is not None:
            entries.append(entry)
        if row is not None:
            rows.append(row)
    return entries, rows


def _encode_slot(slot: tensors.TensorSlot, ref: ExternalReference | None, options: PackOptions, exact: set[str],
                 sink: BinaryIO) -> tuple[container.Entry | None, TensorReport | None]:
    """One tensor: its entry (None if it stays inline) and report row (None if it holds no data).
    A function of its own so that the tensor's bytes and payload die with it."""
    t = slot.tensor
    raw = _stored_bytes(t, ref)
    if raw is not None:
        external_data.detach(t)
        data = tensors.tensor_bytes(t, raw)
        if data is None or len(data) < options.min_tensor_bytes:
            t.raw_data = raw
        del raw
    else:
        data = tensors.tensor_bytes(t)
    dtype = onnx.TensorProto.DataType.Name(t.data_type) if t.data_type in onnx.TensorProto.DataType.values() else str(t.data_type)
    if data is None or len(data) < options.min_tensor_bytes:
        if not tensors.has_data(t):
            return None, None
        size = len(data) if data is not None else t.ByteSize()
        return None, TensorReport(t.name, slot.where, dtype, tuple(t.dims), "inline", size, size, 0.0)
    layout = tensors.DTYPE_LAYOUTS[t.data_type]
    cast = None
    rounded = float16_stored(t, data, options, exact)
    if rounded is not None:
        data, cast = rounded, "float16"
    config, payload, entropy = _best_encoding(np.frombuffer(data, dtype=np.uint8), _codec_params(layout, cast), options)
    sink.write(payload)
    entry = container.Entry(slot.ordinal, slot.kind, t.name, t.data_type, tuple(t.dims), config,
                            len(data), len(payload), zlib.crc32(data))
    tensors.strip_data(t)
    return entry, TensorReport(t.name, slot.where, dtype, tuple(t.dims), config["id"], len(data), len(payload),
                               entropy, cast or "")


def float16_stored(t: onnx.TensorProto, data: bytes, options: PackOptions, exact: set[str]) -> bytes | None:
    """The float32 bytes ``data`` of ``t`` rounded to the float16 values packing
    stores for it, or None when it stores them as they are: float16 storage is
    on, ``t`` is float32, packed (at least ``min_tensor_bytes``), not a
    quantization parameter (``exact``), under ``float16_small_below`` elements,
    and float16 can hold its values."""
    if not (options.float16_small and t.data_type == onnx.TensorProto.FLOAT and t.name not in exact
            and options.min_tensor_bytes <= len(data) and len(data) // 4 < options.float16_small_below):
        return None
    return symbols.round_to_float16(data)


def round_as_stored(model: onnx.ModelProto, options: PackOptions) -> None:
    """Round, in place, every tensor of ``model`` that packing with ``options``
    would store as float16 to the values it would store (the same tensors and
    rule as :func:`encode_tensors`): a model checked after this is checked as
    it will unpack."""
    if not options.float16_small:
        return
    exact = quantization_parameters(model)
    for slot in tensors.tensor_slots(model):
        t = slot.tensor
        if t.data_type != onnx.TensorProto.FLOAT or t.data_location == onnx.TensorProto.EXTERNAL:
            continue
        data = tensors.tensor_bytes(t)
        rounded = float16_stored(t, data, options, exact) if data is not None else None
        if rounded is not None and rounded != data:
            tensors.strip_data(t)
            t.raw_data = rounded


def _stored_bytes(t: onnx.TensorProto, ref: ExternalReference | None) -> bytes | None:
    """The bytes of a tensor whose data is not in the proto: read through its
    checked reference, or from the file a mapped tensor (``load_model(...,
    map_external_data=True)``) is mapped from; None for data in the proto."""
    from onnxshrink.model import is_mapped, tensor_array

    if ref is not None:
        return external_data.read_reference(ref)
    if is_mapped(t):
        return tensor_array(t).tobytes()
    return None


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
    is within ``options.speed_tolerance`` of the smallest estimate. If that
    one decodes through numpy lanes (``Codec.lanes``), the first listed of
    the others within the tolerance of their own smallest takes its place
    when that smallest is within the tolerance plus
    ``options.speed_slack_bytes`` of the overall one: the slack buys out the
    lanes' fixed cost on small tensors, never a larger codec over a smaller
    C-decoded one. Estimates are exact but for the lane tables (~0.1 %), so
    only the chosen codec encodes. ``raw`` is only tried with the first
    parameters (raw symbols would only be larger).
    """
    analysis = Analysis(arr)
    codecs: list[Codec] = [get_codec({"id": c, **p}) for c in options.codecs
                           for p in (params[:1] if c == "raw" else params)]
    worth = [c for c in codecs if c.worth_trying(analysis)] or codecs
    estimates = [(c.estimate(arr, analysis), c) for c in worth]
    codec, best = _first_within(estimates, options.speed_tolerance)
    if codec.lanes:
        others = [(e, c) for e, c in estimates if not c.lanes]
        if others:
            other, other_best = _first_within(others, options.speed_tolerance)
            if other_best <= best * (1 + options.speed_tolerance) + options.speed_slack_bytes:
                codec = other
    payload = codec.encode(arr, analysis)
    raw = get_codec({"id": "raw", **params[0]})
    if "raw" in options.codecs and len(payload) > raw.estimate(arr, analysis):
        codec = raw
        payload = codec.encode(arr, analysis)
    finest = get_codec({"id": "raw", **params[-1]}).values_analysis(arr, analysis)
    word = params[-1]["word"]
    entropy = sum(codebook.entropy_bits(h) for h in finest.histograms(word)) / 8
    return codec.get_config(), payload, entropy


def _first_within(estimates: list[tuple[int, Codec]], tolerance: float) -> tuple[Codec, int]:
    """The first codec whose estimate is within ``tolerance`` of the smallest, and that smallest."""
    best = min(e for e, _ in estimates)
    return next(c for e, c in estimates if e <= best * (1 + tolerance)), best


def quantization_parameters(model: onnx.ModelProto) -> set[str]:
    """Names read as scales or zero points by QuantizeLinear/DequantizeLinear
    nodes anywhere in ``model``: tensors a lossy cast must not touch."""
    from onnxshrink.model import iter_graphs

    graphs = [g for g, _ in iter_graphs(model.graph)]
    nodes = [n for g in graphs for n in g.node] + [n for f in model.functions for n in f.node]
    return {name for n in nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")
            for name in n.input[1:3] if name}


