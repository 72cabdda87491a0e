"""``rle``: zero-run lengths and nonzero values, stored as plain bytes.

Payload: u64 number of run symbols, u64 tail (zeros after the last nonzero
value), the run stream, then the nonzero values as ``word`` byte-plane
streams. ``rle+huffman`` has the same layout with entropy-coded streams.
"""

from __future__ import annotations

import numpy as np

from onnxshrink.errors import PackError
from onnxshrink.pack import stream
from onnxshrink.pack.bytereader import ByteReader, u64
from onnxshrink.pack.codecs.abc import Codec
from onnxshrink.pack.codecs.registry import register_codec
from onnxshrink.pack.codecs.zero_runs import nonzero_positions, run_positions, zero_run_lengths


@register_codec
class RunLength(Codec):
    codec_id = "rle"
    entropy_coded = False

    def _split(self, data: np.ndarray) -> tuple[np.ndarray, int, list[np.ndarray]]:
        positions = nonzero_positions(data, self.word)
        runs, tail = zero_run_lengths(positions, data.size // self.word)
        values = data.reshape(-1, self.word)[positions].reshape(-1)
        return runs, tail, self.planes(values)

    def encode(self, data: np.ndarray) -> bytes:
        runs, tail, planes = self._split(data)
        parts = [u64(runs.size), u64(tail), stream.encode(runs, self.entropy_coded)]
        parts += [stream.encode(p, self.entropy_coded) for p in planes]
        return b"".join(parts)

    def estimate(self, data: np.ndarray) -> int:
        runs, tail, planes = self._split(data)
        if not self.entropy_coded:
            return 16 + 1 + runs.size + sum(1 + p.size for p in planes)
        return 16 + sum(stream.estimate(stream.histogram(s)) for s in [runs, *planes])

    def decode(self, reader: ByteReader, nbytes: int) -> np.ndarray:
        if nbytes % self.word:
            raise PackError(f"corrupt {reader.what}: {nbytes} bytes is not a whole number of {self.word}-byte values")
        n_values = nbytes // self.word
        n_runs = reader.bounded(reader.u64(), n_values, "number of zero runs")
        tail = reader.bounded(reader.u64(), n_values, "trailing zeros")
        runs = stream.decode(reader, n_runs)
        positions = run_positions(runs, tail, n_values, reader.what)
        out = np.zeros((n_values, self.word), dtype=np.uint8)
        for b in range(self.word):
            out[positions, b] = stream.decode(reader, positions.size)
        return out.reshape(-1)
