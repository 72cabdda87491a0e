"""Writing a model as one protobuf with its large tensors streamed into place.

``model.SerializeToString()`` needs the whole model in memory, and then a
second copy of it as bytes: an unpacked model under protobuf's 2 GiB limit
took about 3x its size to write. Here the large tensors never sit in the
model. Each gets a unique 16-byte placeholder as its ``raw_data``, the model
(now small) is serialized once, and the bytes are walked as protobuf wire
format: every length-delimited field that contains a placeholder is a
message on the path to a tensor, and is re-emitted with its length grown by
what the real data adds. The file is then written front to back, asking for
each tensor's bytes when its turn comes. The result is byte for byte what
``SerializeToString`` of the filled model gives: ``raw_data`` sits where the
placeholder sat, in the same canonical field order.

The placeholders start with 8 random bytes drawn per call, so no name or
other string in a (possibly hostile) model can imitate one; each must be
found exactly once, else the caller falls back to the in-memory path.
"""

from __future__ import annotations

import bisect
import os
import struct
from typing import BinaryIO, Callable, Iterator, Sequence

import onnx

from onnxshrink.errors import PackError
from onnxshrink.packing.bytereader import ByteReader, varint

_RAW_DATA_FIELD = 9  # TensorProto.raw_data
_LENGTH_DELIMITED = 2
_MARKER_BYTES = 16


class SpliceError(Exception):
    """The serialized model could not be spliced (a placeholder not found exactly once)."""


class _Hole:
    """Where tensor ``index``'s ``length`` data bytes go."""

    __slots__ = ("index", "length")

    def __init__(self, index: int, length: int):
        self.index, self.length = index, length


Segment = bytes | _Hole


def _fields(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, field start, content start, field end) of each field in data[start:end]."""
    reader = ByteReader(data, "serialized model")
    reader.pos = start
    while reader.pos < end:
        field_start = reader.pos
        tag = reader.varint()
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            reader.varint()
            content = reader.pos
        elif wire in (1, 5):  # fixed64, fixed32
            content = reader.pos
            reader.take(8 if wire == 1 else 4)
        elif wire == _LENGTH_DELIMITED:
            length = reader.varint()
            content = reader.pos
            reader.take(length)
        else:
            raise SpliceError(f"unexpected wire type {wire}")
        if reader.pos > end:
            raise SpliceError("field runs past its message")
        yield number, wire, field_start, content, reader.pos


class _Splicer:
    def __init__(self, data: bytes, markers: dict[int, tuple[int, int]]):
        self.data = data
        self.by_position = markers  # placeholder position -> (tensor index, data length)
        self.positions = sorted(markers)

    def _holds_marker(self, start: int, end: int) -> bool:
        i = bisect.bisect_left(self.positions, start)
        return i < len(self.positions) and self.positions[i] < end

    def message(self, start: int, end: int) -> tuple[list[Segment], int]:
        """The segments of the message in data[start:end], with grown lengths, and their total size."""
        segments: list[Segment] = []
        size = 0
        run_start = start  # fields copied as they are, in one piece
        for number, wire, field_start, content, field_end in _fields(self.data, start, end):
            if wire != _LENGTH_DELIMITED or not self._holds_marker(content, field_end):
                continue
            if run_start < field_start:
                segments.append(self.data[run_start:field_start])
                size += field_start - run_start
            tag = varint((number << 3) | _LENGTH_DELIMITED)
            if number == _RAW_DATA_FIELD and field_end - content == _MARKER_BYTES and content in self.by_position:
                index, length = self.by_position[content]
                inner: list[Segment] = [_Hole(index, length)]
                inner_size = length
            else:
                inner, inner_size = self.message(content, field_end)
            head = tag + varint(inner_size)
            segments.append(head)
            segments.extend(inner)
            size += len(head) + inner_size
            run_start = field_end
        if run_start < end:
            segments.append(self.data[run_start:end])
            size += end - run_start
        return segments, size


def spliced_segments(model: onnx.ModelProto, tensors: Sequence[onnx.TensorProto], lengths: Sequence[int]
                     ) -> list[Segment]:
    """The serialized ``model`` as byte pieces and holes, one hole per tensor
    of ``tensors`` (tensors of ``model`` without data) for its ``lengths``
    bytes of ``raw_data``. ``model`` is left as it was."""
    prefix = os.urandom(8)
    for i, tensor in enumerate(tensors):
        tensor.raw_data = prefix + struct.pack("<Q", i)
    try:
        data = model.SerializeToString()
    finally:
        for tensor in tensors:
            tensor.ClearField("raw_data")
    markers: dict[int, tuple[int, int]] = {}
    for i, length in enumerate(lengths):
        marker = prefix + struct.pack("<Q", i)
        at = data.find(marker)
        if at < 0 or data.find(marker, at + 1) >= 0:
            raise SpliceError(f"placeholder {i} not found exactly once")
        markers[at] = (i, length)
    try:
        segments, _ = _Splicer(data, markers).message(0, len(data))
    except PackError as e:  # our own serialization did not parse as expected: serialize the usual way
        raise SpliceError(str(e)) from None
    if sum(isinstance(s, _Hole) for s in segments) != len(tensors):
        raise SpliceError("not every placeholder is a tensor's raw_data")
    return segments


def hole_order(segments: Sequence[Segment]) -> list[int]:
    """The tensor indices of the holes, in file order."""
    return [s.index for s in segments if isinstance(s, _Hole)]


def write_segments(out: BinaryIO, segments: Sequence[Segment], data_for: Callable[[int], bytes | memoryview]) -> None:
    """Write ``segments`` to ``out``, each hole filled with ``data_for(index)``
    (asked in file order; its length must be the hole's)."""
    for segment in segments:
        if isinstance(segment, _Hole):
            data = data_for(segment.index)
            if len(data) != segment.length:
                raise SpliceError(f"tensor {segment.index}: {len(data)} bytes for a hole of {segment.length}")
            out.write(data)
        else:
            out.write(segment)
