"""``rle``: zero-run lengths and nonzero values, stored as plain bytes.

Payload: varint number of run symbols, varint tail (zeros after the last nonzero
value), the run stream, then the nonzero values as ``word`` byte-plane
streams. ``rle+huffman`` has the same layout with entropy-coded streams.
"""

from __future__ import annotations

import numpy as np

from onnxshrink.packing import stream
from onnxshrink.packing.bytereader import ByteReader, varint
from onnxshrink.packing.codecs import zero_runs
from onnxshrink.packing.codecs.abc import Analysis, Codec, DecodeSteps, byte_planes
from onnxshrink.packing.codecs.registry import register_codec


MIN_ZERO_SHARE = 0.25


@register_codec
class RunLength(Codec):
    codec_id = "rle"
    entropy_coded = False

    def _streams(self, a: Analysis) -> tuple[int, list[np.ndarray], list[np.ndarray]]:
        """(tail, [runs, *value planes], their histograms), computed once per tensor."""

        def split():
            runs, tail, values = zero_runs.split(a.data, self.word)
            return tail, [runs, *byte_planes(values, self.word)]

        tail, streams = a.fact(("zero_runs", self.word), split)
        if not self.entropy_coded:
            return tail, streams, []
        hists = a.fact(("zero_run_histograms", self.word), lambda: [stream.histogram(s) for s in streams])
        return tail, streams, hists

    def worth_trying_values(self, analysis: Analysis) -> bool:
        # A value is zero only if its byte in every plane is: the rarest zero
        # byte bounds the share of zero values. Below ~25 % zeros, Huffman of
        # the values themselves is always smaller (measured on Laplace data).
        n = analysis.data.size // self.word
        zero_bytes = min(int(h[0]) for h in analysis.histograms(self.word))
        return n > 0 and zero_bytes >= MIN_ZERO_SHARE * n

    def encode_values(self, data: np.ndarray, analysis: Analysis) -> bytes:
        tail, streams, hists = self._streams(analysis)
        if not self.entropy_coded:
            coded = [stream.encode(s, entropy_coded=False) for s in streams]
        else:
            coded = [stream.encode(s, counts=h) for s, h in zip(streams, hists)]
        return b"".join([varint(streams[0].size), varint(tail), *coded])

    def estimate_values(self, data: np.ndarray, analysis: Analysis) -> int:
        tail, streams, hists = self._streams(analysis)
        if not self.entropy_coded:
            return 20 + sum(1 + s.size for s in streams)
        return 20 + sum(stream.estimate(h) for h in hists)

    def decode_values(self, reader: ByteReader, nbytes: int) -> DecodeSteps:
        n_values = self._check_size(reader, nbytes)
        n_runs = reader.bounded(reader.varint(), n_values, "number of zero runs")
        tail = reader.bounded(reader.varint(), n_values, "trailing zeros")
        runs = stream.parse(reader, n_runs)
        yield stream.pending([runs])
        positions = zero_runs.run_positions(stream.symbols(runs), tail, n_values, reader.what)
        planes = [stream.parse(reader, positions.size) for _ in range(self.word)]
        yield stream.pending(planes)
        if self.word == 1:
            out = np.zeros(n_values, dtype=np.uint8)
            out[positions] = stream.symbols(planes[0])
            return out
        values = np.empty((positions.size, self.word), dtype=np.uint8)
        for b, plane in enumerate(planes):
            values[:, b] = stream.symbols(plane)
        out = np.zeros((n_values, self.word), dtype=np.uint8)
        out[positions] = values
        return out.reshape(-1)
