"""``raw``: the bytes as they are."""

from __future__ import annotations

import numpy as np

from onnxshrink.packing.bytereader import ByteReader
from onnxshrink.packing.codecs.abc import Analysis, Codec, DecodeSteps
from onnxshrink.packing.codecs.registry import register_codec


@register_codec
class Raw(Codec):
    codec_id = "raw"

    def encode_values(self, data: np.ndarray, analysis: Analysis) -> bytes:
        return data.tobytes()

    def estimate_values(self, data: np.ndarray, analysis: Analysis) -> int:
        return data.size

    def decode_values(self, reader: ByteReader, nbytes: int) -> DecodeSteps:
        data = np.frombuffer(reader.take(nbytes), dtype=np.uint8)
        yield []
        return data
