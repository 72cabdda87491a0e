"""Symbol streams: a run of byte symbols stored raw, as one repeated symbol,
or Huffman-coded in lanes, whichever is smallest.

Codecs are built from streams (a byte plane, the zero-run lengths of a pruned
tensor, its nonzero values). The number of symbols is known from context and
not stored. Layout (little-endian), see docs/FORMAT.md:

    u8 mode           0 raw, 1 constant, 2 huffman
    raw:      n bytes
    constant: u8 symbol
    huffman:  table       code lengths of symbols 0..255 (codebook.write_lengths)
              varint      lane count K (1 <= K <= n)
              varint      base: bits of the shortest lane
              u8          width w (0..32) of each lane's extra bits
              ceil(K*w/8) lane bits minus base, w bits each, MSB first
              ceil(total_bits/8) bytes  the lanes' bit strings back to back
"""

from __future__ import annotations

import numpy as np

from onnxshrink.errors import PackError
from onnxshrink.packing import bitpack, codebook, lanes
from onnxshrink.packing.bytereader import ByteReader, u8, varint

RAW, CONSTANT, HUFFMAN = 0, 1, 2
# Encoder tuning; the decoder reads the lane count from the stream, so these
# can change without changing the format.
SYMBOLS_PER_LANE = 1024  # lane table ~0.1 % of the bits; more lanes decode faster
MAX_LANES = 1 << 16
# Decoder limits: a stream declaring more is corrupt, not merely large.
MAX_DECODE_LANES = 1 << 20
_HUFFMAN_FIXED = 1 + 1 + 1  # mode, width, and at least a byte each for K and base


def histogram(symbols: np.ndarray) -> np.ndarray:
    """Counts of the 256 byte values in ``symbols`` (int64)."""
    counts = np.zeros(256, dtype=np.int64)
    # bincount converts its input to intp; in chunks that copy stays in cache.
    for i in range(0, symbols.size, _HISTOGRAM_CHUNK):
        counts += np.bincount(symbols[i : i + _HISTOGRAM_CHUNK], minlength=256)
    return counts


_HISTOGRAM_CHUNK = 1 << 18


def estimate(counts: np.ndarray, max_code_length: int = codebook.MAX_CODE_LENGTH) -> int:
    """Size in bytes of the stream :func:`encode` writes for these counts
    (exact for raw and constant; for huffman the lane table is estimated at
    16 bits a lane)."""
    n = int(counts.sum())
    used = int(np.count_nonzero(counts))
    if used == 1:
        return 2
    if used == 0:
        return 1
    lengths = codebook.code_lengths(counts, max_code_length)
    k = lanes.lane_count(n, SYMBOLS_PER_LANE, MAX_LANES)
    bits = lanes.encoded_bits(counts, lengths)
    # Lane lengths vary by about sqrt(symbols in a lane) codes: ~10 bits each.
    lane_table = 0 if k == 1 else (k * 10 + 7) // 8
    huff = _HUFFMAN_FIXED + 6 + codebook.table_size(lengths) + lane_table + (bits + 7) // 8
    return min(1 + n, huff)


def encode(
    symbols: np.ndarray,
    entropy_coded: bool = True,
    counts: np.ndarray | None = None,
    max_code_length: int = codebook.MAX_CODE_LENGTH,
) -> bytes:
    """The smallest stream for ``symbols`` (uint8, 1-D); raw only if not
    ``entropy_coded``. ``counts``: their histogram, if already known."""
    n = symbols.size
    if not entropy_coded or n == 0:
        return u8(RAW) + symbols.tobytes()
    if counts is None:
        counts = histogram(symbols)
    used = np.flatnonzero(counts)
    if used.size == 1:
        return u8(CONSTANT) + u8(int(used[0]))
    lengths = codebook.code_lengths(counts, max_code_length)
    if _HUFFMAN_FIXED + codebook.table_size(lengths) + (lanes.encoded_bits(counts, lengths) + 7) // 8 >= 1 + n:
        return u8(RAW) + symbols.tobytes()
    k = lanes.lane_count(n, SYMBOLS_PER_LANE, MAX_LANES)
    lane_bits, bits = lanes.encode(symbols, lengths, k, counts)
    base = int(lane_bits.min())
    extra = (lane_bits - base).astype(np.uint64)
    width = int(extra.max()).bit_length()
    table = bitpack.pack_fixed_width(extra, width)
    out = b"".join([u8(HUFFMAN), codebook.write_lengths(lengths), varint(k), varint(base), u8(width), table, bits])
    if len(out) >= 1 + n:
        return u8(RAW) + symbols.tobytes()
    return out


def parse(reader: ByteReader, n: int) -> np.ndarray | lanes.LaneStream:
    """Read one stream of ``n`` symbols from ``reader``: the symbols (uint8,
    (n,)) for raw and constant streams, a :class:`lanes.LaneStream` still to
    decode for Huffman ones. Every field is checked before use; a corrupt
    stream raises PackError.
    """
    mode = reader.u8()
    if mode == RAW:
        return np.frombuffer(reader.take(n), dtype=np.uint8)
    if mode == CONSTANT:
        return np.full(n, reader.u8(), dtype=np.uint8)
    if mode != HUFFMAN:
        raise PackError(f"corrupt {reader.what}: unknown stream mode {mode}")
    lengths = codebook.read_lengths(reader)
    codebook.check_lengths(lengths, codebook.MAX_CODE_LENGTH)
    k = reader.varint()
    if not 1 <= k <= min(n, MAX_DECODE_LANES):
        raise PackError(f"corrupt {reader.what}: {k} lanes for {n} symbols")
    base = reader.varint()
    width = reader.u8()
    if width > 32:
        raise PackError(f"corrupt {reader.what}: lane width {width} bits")
    table = reader.take((k * width + 7) // 8)
    lane_bits = bitpack.unpack_fixed_width(table, k, width).astype(np.int64)
    # Lane j holds ceil((n - j) / k) symbols of 1..MAX_CODE_LENGTH bits each.
    held = (n - np.arange(k, dtype=np.int64) + k - 1) // k
    if base > codebook.MAX_CODE_LENGTH * -(-n // k):
        raise PackError(f"corrupt {reader.what}: lane lengths out of range")
    lane_bits += base
    if np.any(lane_bits < held) or np.any(lane_bits > held * codebook.MAX_CODE_LENGTH):
        raise PackError(f"corrupt {reader.what}: lane lengths out of range")
    total = int(lane_bits.sum())
    payload = reader.take((total + 7) // 8)
    return lanes.LaneStream(payload, lane_bits, n, lengths)


def pending(parsed: list[np.ndarray | lanes.LaneStream]) -> list[lanes.LaneStream]:
    """The streams among ``parsed`` that still need decoding."""
    return [p for p in parsed if isinstance(p, lanes.LaneStream)]


def symbols(parsed: np.ndarray | lanes.LaneStream) -> np.ndarray:
    """The symbols of a parsed stream (decoded by now)."""
    return parsed.result if isinstance(parsed, lanes.LaneStream) else parsed


def decode(reader: ByteReader, n: int) -> np.ndarray:
    """Read and decode one stream of ``n`` symbols; returns uint8 (n,)."""
    parsed = parse(reader, n)
    if isinstance(parsed, lanes.LaneStream):
        return lanes.decode(parsed.payload, parsed.lane_bits, n, parsed.lengths)
    return parsed
