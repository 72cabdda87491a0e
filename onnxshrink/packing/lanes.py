"""Lane-parallel Huffman bit streams: encode and decode without a Python loop
over symbols.

A stream of ``n`` byte symbols is dealt round-robin into ``K`` lanes: symbol
``i`` goes to lane ``i % K`` as that lane's symbol number ``i // K``. Each lane
is an independent MSB-first bit string; the lanes are concatenated with no
padding, and the container stores each lane's length in bits. The decoder
walks all lanes at once, one symbol per lane per step: it peeks the next
``table_bits`` bits of every lane (a 64-bit gather), looks up (symbol, length)
in a table of ``2**table_bits`` entries and advances each lane by its length.
Step ``t`` yields symbols ``t*K .. t*K+K-1``, a contiguous row of the output.

Numbers of interest: with K in the thousands the per-step numpy overhead is
amortised, and a lane's next bits live in one 64-bit window made of two
consecutive 32-bit big-endian words: a lane position is at most 31 bits into
its word, so 33 bits are always there, two codes of at most 15 bits.
"""

from __future__ import annotations

import numpy as np

from onnxshrink.errors import PackError
from onnxshrink.packing import bitpack, codebook


def lane_count(n: int, symbols_per_lane: int, max_lanes: int, short_lanes: int = 256, short_symbols: int = 256) -> int:
    """How many lanes to deal ``n`` symbols into (>= 1).

    Decoding costs a fixed ~10 us per step plus a few ns per symbol, so long
    streams get ``symbols_per_lane`` a lane (the lane table, ~10 bits a lane,
    stays ~0.1 % of the bits); shorter ones get up to ``short_lanes`` lanes
    of ``short_symbols``, trading a little size for far fewer steps.
    """
    k = max(-(-n // symbols_per_lane), min(-(-n // short_symbols), short_lanes))
    return int(max(1, min(max_lanes, k)))


def encoded_bits(counts: np.ndarray, lengths: np.ndarray) -> int:
    """Exact number of payload bits for a stream with these symbol counts."""
    return int(np.dot(counts.astype(np.int64), lengths.astype(np.int64)))


def encode(symbols: np.ndarray, lengths: np.ndarray, n_lanes: int, counts: np.ndarray | None = None
           ) -> tuple[np.ndarray, bytes]:
    """Huffman-code ``symbols`` (uint8, 1-D) into ``n_lanes`` lanes.

    Returns (bits of each lane as int64, the concatenated bit strings as
    bytes, ``ceil(total_bits / 8)`` long with zero padding bits at the end).
    Every symbol must have a nonzero length in ``lengths``; ``counts`` is
    their histogram if the caller has it.
    """
    n = symbols.size
    k = n_lanes
    steps = -(-n // k)
    full = n - (steps - 1) * k  # lanes holding `steps` symbols
    padded = np.zeros(steps * k, dtype=np.uint8)
    padded[:n] = symbols
    grid = padded.reshape(steps, k)
    if counts is None:
        counts = np.bincount(symbols, minlength=256)
    total = encoded_bits(counts, lengths)
    n_words = (total + 31) // 32 + 2
    words = np.zeros(n_words, dtype=np.float64)
    codes = codebook.canonical_codes(lengths)
    len64 = lengths.astype(np.int64)
    lane_bits = np.empty(k, dtype=np.int64)
    start = 0
    group = max(1, _CHUNK_SYMBOLS // steps)
    for j0 in range(0, k, group):
        j1 = min(k, j0 + group)
        # The lanes j0..j1 are one contiguous run of bits: code them together,
        # lane after lane, which is the order of the bits in the stream.
        sub = np.ascontiguousarray(grid[:, j0:j1].T)
        size = len64[sub]
        code = codes[sub]
        if full < j1:
            # Padding cells are not symbols: no bits, and no code either.
            size[max(0, full - j0):, steps - 1] = 0
            code[max(0, full - j0):, steps - 1] = 0
        lane_bits[j0:j1] = size.sum(axis=1)
        size, code = size.reshape(-1), code.reshape(-1)
        if size.size % 2:
            size, code = np.append(size, 0), np.append(code, np.uint64(0))
        # Join neighbouring codes in pairs (at most 30 bits): half the codes to place.
        pair_size = size[0::2] + size[1::2]
        pair_code = (code[0::2] << size[1::2].astype(np.uint64)) | code[1::2]
        pos = np.cumsum(pair_size)
        pos -= pair_size
        pos += start
        bitpack.place_codes(words, start >> 5, pos, pair_size, pair_code)
        start += int(lane_bits[j0:j1].sum())
    out = words[: n_words - 1].astype(np.uint32).astype(">u4").tobytes()
    return lane_bits, out[: (total + 7) // 8]


# Symbols coded per chunk: small enough that the chunk's arrays stay in cache.
_CHUNK_SYMBOLS = 1 << 17


def decode(payload: bytes | memoryview, lane_bits: np.ndarray, n: int, lengths: np.ndarray) -> np.ndarray:
    """Decode ``n`` symbols from lanes of ``lane_bits`` bits each in ``payload``.

    ``lengths`` must pass :func:`codebook.check_lengths`; ``payload`` must be
    exactly ``ceil(sum(lane_bits) / 8)`` bytes. A corrupt stream cannot read
    out of bounds (gathers are clipped) and is refused with PackError when a
    lane does not end exactly where its declared length says.
    """
    k = int(lane_bits.size)
    steps = -(-n // k)
    full = n - (steps - 1) * k  # lanes that hold `steps` symbols; the rest hold steps-1
    table_bits = int(lengths.max())
    symtab, lentab = codebook.decode_tables(lengths, table_bits)
    nbytes = len(payload)
    buf = np.zeros((nbytes + 3) // 4 * 4 + 8, dtype=np.uint8)
    buf[:nbytes] = np.frombuffer(payload, dtype=np.uint8)
    # window[w] = 32-bit words w and w+1 as one 64-bit integer (built in place:
    # a second 64-bit temporary would double the decoder's peak memory).
    words = buf.view(">u4")
    window = words[:-1].astype(np.uint64)
    window <<= np.uint64(32)
    window |= words[1:]
    del words, buf
    lane_start = np.cumsum(lane_bits) - lane_bits
    pos = lane_start.astype(np.uint64)
    out = np.empty((steps, k), dtype=np.uint8)
    # One 64-bit gather serves several symbols: a lane sits at most 31 bits
    # into its window, so 33 bits are always there to peek at.
    per_gather = max(1, min(4, 33 // table_bits))
    state = _DecodeState(k, table_bits, symtab, lentab.astype(np.uint64))
    full_rows = steps - 1 if full < k else steps
    t = 0
    while t < full_rows:
        g = min(per_gather, full_rows - t)
        state.run(window, pos, out, t, g, k)
        t += g
    if full < k:
        state.run(window, pos, out, steps - 1, 1, full)
    if not np.array_equal(pos, (lane_start + lane_bits).astype(np.uint64)):
        raise PackError("corrupt container: a Huffman lane does not end where its length says")
    return out.reshape(-1)[:n]


class _DecodeState:
    """Scratch arrays reused by every step of :func:`decode` (no allocation in the loop)."""

    def __init__(self, k: int, table_bits: int, symtab: np.ndarray, lentab: np.ndarray):
        self.symtab, self.lentab = symtab, lentab
        self.drop = np.uint64(64 - table_bits)
        self.idx = np.empty(k, dtype=np.uint64)
        self.off = np.empty(k, dtype=np.uint64)
        self.bits = np.empty(k, dtype=np.uint64)
        self.code = np.empty(k, dtype=np.uint64)
        self.size = np.empty(k, dtype=np.uint64)

    def run(self, window: np.ndarray, pos: np.ndarray, out: np.ndarray, row: int, rows: int, m: int) -> None:
        """Decode output rows ``row .. row+rows-1`` for the first ``m`` lanes."""
        p, i, o, b, c, s = pos[:m], self.idx[:m], self.off[:m], self.bits[:m], self.code[:m], self.size[:m]
        np.right_shift(p, 5, out=i)
        np.bitwise_and(p, 31, out=o)
        window.take(i.view(np.int64), out=b, mode="clip")
        np.left_shift(b, o, out=b)
        ci = c.view(np.int64)
        symtab, lentab, drop = self.symtab, self.lentab, self.drop
        for r in range(rows):
            np.right_shift(b, drop, out=c)
            symtab.take(ci, out=out[row + r, :m], mode="clip")
            lentab.take(ci, out=s, mode="clip")
            np.add(p, s, out=p)
            if r + 1 < rows:
                np.left_shift(b, s, out=b)


class LaneStream:
    """A Huffman stream parsed but not yet decoded: what :func:`decode_batch` needs.

    ``result`` is filled by the decode.
    """

    __slots__ = ("payload", "lane_bits", "n", "lengths", "result")

    def __init__(self, payload: bytes | memoryview, lane_bits: np.ndarray, n: int, lengths: np.ndarray):
        self.payload, self.lane_bits, self.n, self.lengths = payload, lane_bits, n, lengths
        self.result: np.ndarray | None = None


# Streams up to this many symbols are decoded together (their lanes side by
# side in one loop); longer ones have lanes enough of their own.
BATCH_MAX_SYMBOLS = 1 << 18


def decode_batch(streams: list[LaneStream]) -> None:
    """Decode every stream, filling ``.result``. Short streams share one
    lane-parallel loop: a model's hundred small tensors cost about what one
    tensor of their total size does, not a hundred loops of per-step overhead."""
    short = [s for s in streams if s.n <= BATCH_MAX_SYMBOLS]
    for s in streams:
        if s.n > BATCH_MAX_SYMBOLS:
            s.result = decode(s.payload, s.lane_bits, s.n, s.lengths)
    if len(short) == 1:
        s = short[0]
        s.result = decode(s.payload, s.lane_bits, s.n, s.lengths)
    elif short:
        _decode_together(short)


def _decode_together(streams: list[LaneStream]) -> None:
    """:func:`decode` for several streams at once: their lanes, sorted by how
    many symbols they hold (longest first), advance together; lane j of a
    stream reads that stream's table through a per-lane table offset and shift."""
    sizes = [len(s.payload) for s in streams]
    offsets = np.concatenate([[0], np.cumsum([(n + 3) // 4 * 4 for n in sizes])])
    buf = np.zeros(int(offsets[-1]) + 8, dtype=np.uint8)
    for s, off, n in zip(streams, offsets, sizes):
        buf[off : off + n] = np.frombuffer(s.payload, dtype=np.uint8)
    words = buf.view(">u4")
    window = words[:-1].astype(np.uint64)
    window <<= np.uint64(32)
    window |= words[1:]
    del words, buf
    starts, ends, counts, table_base, drops, symtabs, lentabs = [], [], [], [], [], [], []
    table_at, widest = 0, 1
    for s, off in zip(streams, offsets):
        k = s.lane_bits.size
        rows = -(-s.n // k)
        full = s.n - (rows - 1) * k
        start = np.cumsum(s.lane_bits) - s.lane_bits + 8 * int(off)
        starts.append(start)
        ends.append(start + s.lane_bits)
        counts.append(np.where(np.arange(k) < full, rows, rows - 1))
        table_bits = int(s.lengths.max())
        widest = max(widest, table_bits)
        symtab, lentab = codebook.decode_tables(s.lengths, table_bits)
        symtabs.append(symtab)
        lentabs.append(lentab)
        table_base.append(np.full(k, table_at))
        drops.append(np.full(k, 64 - table_bits))
        table_at += symtab.size
    count = np.concatenate(counts)
    order = np.argsort(-count, kind="stable")
    count = count[order]
    pos = np.concatenate(starts)[order].astype(np.uint64)
    end = np.concatenate(ends)[order].astype(np.uint64)
    base = np.concatenate(table_base)[order].astype(np.uint64)
    drop = np.concatenate(drops)[order].astype(np.uint64)
    symtab, lentab = np.concatenate(symtabs), np.concatenate(lentabs).astype(np.uint64)
    rows_max = int(count[0])
    # active[t]: lanes holding more than t symbols, a prefix of the sorted lanes.
    active = np.searchsorted(-count, -np.arange(rows_max + 1), side="left")
    n_lanes = count.size
    out = np.empty((rows_max, n_lanes), dtype=np.uint8)
    bits, code, size = (np.empty(n_lanes, dtype=np.uint64) for _ in range(3))
    per_gather = max(1, min(4, 33 // widest))
    for t in range(0, rows_max, per_gather):
        m = int(active[t])
        p, b = pos[:m], bits[:m]
        window.take((p >> np.uint64(5)).view(np.int64), out=b, mode="clip")
        np.left_shift(b, p & np.uint64(31), out=b)
        for r in range(t, min(t + per_gather, rows_max)):
            m = int(active[r])
            p, b, c, s = pos[:m], bits[:m], code[:m], size[:m]
            np.right_shift(b, drop[:m], out=c)
            c += base[:m]
            ci = c.view(np.int64)
            symtab.take(ci, out=out[r, :m], mode="clip")
            lentab.take(ci, out=s, mode="clip")
            p += s
            np.left_shift(b, s, out=b)
    if not np.array_equal(pos, end):
        raise PackError("corrupt container: a Huffman lane does not end where its length says")
    column = np.empty(n_lanes, dtype=np.int64)
    column[order] = np.arange(n_lanes)
    first = 0
    for s in streams:
        k = s.lane_bits.size
        cols = column[first : first + k]
        first += k
        rows = -(-s.n // k)
        s.result = out[:rows, cols].reshape(-1)[: s.n]
