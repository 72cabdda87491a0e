"""``raw``: the bytes as they are."""

from __future__ import annotations

import numpy as np

from onnxshrink.pack.bytereader import ByteReader
from onnxshrink.pack.codecs.abc import Analysis, Codec, DecodeSteps
from onnxshrink.pack.codecs.registry import register_codec


@register_codec
class Raw(Codec):
    codec_id = "raw"

    def encode(self, data: np.ndarray, analysis: Analysis | None = None) -> bytes:
        return data.tobytes()

    def estimate(self, data: np.ndarray, analysis: Analysis | None = None) -> int:
        return data.size

    def decode_steps(self, reader: ByteReader, nbytes: int) -> DecodeSteps:
        data = np.frombuffer(reader.take(nbytes), dtype=np.uint8)
        yield []
        return data
