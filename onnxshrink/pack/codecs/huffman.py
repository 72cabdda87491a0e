"""``huffman``: each byte plane as its own stream (Huffman-coded lanes, or
raw, or constant, whichever is smallest; see :mod:`onnxshrink.pack.stream`).

For int8 there is one plane, the values themselves. For float32 the plane of
top bytes (sign and exponent) codes to a few bits while mantissa planes stay
near 8 bits, which is where this beats general-purpose compressors on weights.
Payload: ``word`` streams of ``nbytes / word`` symbols, plane 0 (lowest byte)
first.
"""

from __future__ import annotations

import numpy as np

from onnxshrink.pack import stream
from onnxshrink.pack.bytereader import ByteReader
from onnxshrink.pack.codecs.abc import Analysis, Codec
from onnxshrink.pack.codecs.registry import register_codec


@register_codec
class Huffman(Codec):
    codec_id = "huffman"

    def encode(self, data: np.ndarray, analysis: Analysis | None = None) -> bytes:
        a = analysis or Analysis(data)
        return b"".join(stream.encode(p, counts=h) for p, h in zip(a.planes(self.word), a.histograms(self.word)))

    def estimate(self, data: np.ndarray, analysis: Analysis | None = None) -> int:
        a = analysis or Analysis(data)
        return sum(stream.estimate(h) for h in a.histograms(self.word))

    def decode(self, reader: ByteReader, nbytes: int) -> np.ndarray:
        n = self._check_size(reader, nbytes)
        if self.word == 1:
            return stream.decode(reader, n)
        out = np.empty((n, self.word), dtype=np.uint8)
        for b in range(self.word):
            out[:, b] = stream.decode(reader, n)
        return out.reshape(-1)
