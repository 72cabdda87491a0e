"""``deflate``: each byte plane as a raw deflate stream (RFC 1951) that the
writer makes Huffman-only (zlib's ``Z_HUFFMAN_ONLY``: literals and nothing
else, so order-0 Huffman coding like ``huffman``'s, in blocks of about 32 Ki
symbols each with its own code).

Why a second Huffman codec: decoding is zlib's inflate, C code in the
standard library, at ~290 MB/s a core on int8 weights against ~200 MB/s for
the lane-parallel numpy decoder of ``huffman`` on a large tensor, and with no
per-step overhead, which is what dominates on a model of many small tensors
(digits_resnet int8: 48 MB/s). Sizes are within ~0.1 % of ``huffman``'s
either way (deflate's code lengths are limited to 15 bits as ours are); the
encoder prefers it within ``PackOptions.speed_tolerance`` plus
``speed_slack_bytes`` of the smallest.

Payload: ``word`` times (varint length L, then L bytes of raw deflate that
inflate to exactly ``n`` bytes: plane b of the values), plane 0 first.
Inflation is bounded by the declared size (``max_length``), so a hostile
stream cannot make it allocate more or run longer than its input allows.
"""

from __future__ import annotations

import zlib

import numpy as np

from onnxshrink.errors import PackError
from onnxshrink.packing.bytereader import ByteReader, varint
from onnxshrink.packing.codecs.abc import Analysis, Codec, DecodeSteps
from onnxshrink.packing.codecs.registry import register_codec

# Fixed writer settings: the same zlib gives the same bytes for the same
# input (docs/FORMAT.md section 6). Level and window do not matter to
# Huffman-only output; memLevel 9 gives the longest blocks (32 Ki literals).
_LEVEL, _WBITS, _MEM_LEVEL = 9, -15, 9


def deflate_plane(plane: np.ndarray) -> bytes:
    """``plane`` (uint8, 1-D) as one raw, Huffman-only deflate stream."""
    c = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WBITS, _MEM_LEVEL, zlib.Z_HUFFMAN_ONLY)
    return c.compress(plane) + c.flush()


def inflate_plane(data: bytes | memoryview, n: int, what: str) -> bytes:
    """Exactly ``n`` bytes from the raw deflate stream ``data``, which must
    end exactly with its last block (no more output, no trailing bytes)."""
    d = zlib.decompressobj(_WBITS)
    try:
        out = d.decompress(data, max(n, 1))  # max_length 0 would mean no limit
        if len(out) > n:
            raise PackError(f"corrupt {what}: a deflate stream holds more than its {n} bytes")
        if not d.eof:
            # The output is complete but the final block's end code (or an
            # empty last block) may still be unread: read it, allowing one
            # byte of output, which would mean the stream is too long.
            if d.decompress(d.unconsumed_tail, 1):
                raise PackError(f"corrupt {what}: a deflate stream holds more than its {n} bytes")
    except zlib.error as e:
        raise PackError(f"corrupt {what}: bad deflate stream ({e})") from None
    if not d.eof:
        raise PackError(f"corrupt {what}: a deflate stream is truncated")
    if len(out) != n or d.unused_data:
        raise PackError(f"corrupt {what}: a deflate stream does not hold exactly {n} bytes")
    return out


def read_plane(reader: ByteReader, n: int) -> bytes:
    """One deflate plane of ``n`` bytes from ``reader``: varint length, stream."""
    size = reader.bounded(reader.varint(), reader.remaining, "deflate stream length")
    return inflate_plane(reader.take(size), n, reader.what)


@register_codec
class Deflate(Codec):
    codec_id = "deflate"

    def _payload(self, a: Analysis) -> bytes:
        def make() -> bytes:
            return b"".join(varint(len(z)) + z for z in map(deflate_plane, a.planes(self.word)))

        return a.fact(("deflate", self.word), make)

    def encode_values(self, data: np.ndarray, a: Analysis) -> bytes:
        return self._payload(a)

    def estimate_values(self, data: np.ndarray, a: Analysis) -> int:
        return len(self._payload(a))  # exact; kept for encode_values

    def decode_values(self, reader: ByteReader, nbytes: int) -> DecodeSteps:
        n = self._check_size(reader, nbytes)
        planes = [read_plane(reader, n) for _ in range(self.word)]
        yield []
        if self.word == 1:
            return np.frombuffer(planes[0], dtype=np.uint8)
        out = np.empty((n, self.word), dtype=np.uint8)
        for b, plane in enumerate(planes):
            out[:, b] = np.frombuffer(plane, dtype=np.uint8)
        return out.reshape(-1)
