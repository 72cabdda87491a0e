"""``huffman``: each byte plane as its own stream (Huffman-coded lanes, or
raw, or constant, whichever is smallest; see :mod:`onnxshrink.packing.stream`).

For int8 there is one plane, the values themselves. For float32 the plane of
top bytes (sign and exponent) codes to a few bits while mantissa planes stay
near 8 bits, which is where this beats general-purpose compressors on weights.
Payload: ``word`` streams of ``nbytes / word`` symbols, plane 0 (lowest byte)
first.
"""

from __future__ import annotations

import numpy as np

from onnxshrink.packing import stream
from onnxshrink.packing.bytereader import ByteReader
from onnxshrink.packing.codecs.abc import Analysis, Codec, DecodeSteps
from onnxshrink.packing.codecs.registry import register_codec


@register_codec
class Huffman(Codec):
    codec_id = "huffman"
    lanes = True

    def encode_values(self, data: np.ndarray, a: Analysis) -> bytes:
        return b"".join(stream.encode(p, counts=h) for p, h in zip(a.planes(self.word), a.histograms(self.word)))

    def estimate_values(self, data: np.ndarray, a: Analysis) -> int:
        return sum(stream.estimate(h) for h in a.histograms(self.word))

    def decode_values(self, reader: ByteReader, nbytes: int) -> DecodeSteps:
        n = self._check_size(reader, nbytes)
        planes = [stream.parse(reader, n) for _ in range(self.word)]
        yield stream.pending(planes)
        if self.word == 1:
            return stream.symbols(planes[0])
        out = np.empty((n, self.word), dtype=np.uint8)
        for b, plane in enumerate(planes):
            out[:, b] = stream.symbols(plane)
        return out.reshape(-1)
