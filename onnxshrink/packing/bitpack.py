"""MSB-first bit packing of variable- and fixed-width codes, vectorised."""

from __future__ import annotations

import numpy as np


def place_codes(words: np.ndarray, base: int, pos: np.ndarray, size: np.ndarray, codes: np.ndarray) -> None:
    """Add codes (MSB first, ``size`` bits at bit ``pos``) into 32-bit ``words``.

    Each code goes into a 64-bit window starting at its 32-bit word: the high
    half lands in that word, the low half in the next. Codes never overlap, so
    summing the halves per word (bincount, exact in float64 below 2**53) is
    the same as OR-ing them. Zero-size entries add nothing.
    """
    shift = (64 - (pos & 31) - size).astype(np.uint64)
    window = np.left_shift(codes, shift)
    word = (pos >> 5) - base
    hi = (window >> np.uint64(32)).astype(np.float64)
    lo = (window & np.uint64(0xFFFFFFFF)).astype(np.float64)
    span = int(word[-1]) + 2
    words[base : base + span] += np.bincount(word, weights=hi, minlength=span)
    words[base + 1 : base + span] += np.bincount(word, weights=lo, minlength=span - 1)[: span - 1]


def pack_fixed_width(values: np.ndarray, width: int) -> bytes:
    """Pack unsigned ``values`` (< 2**width, width <= 32) into ``width`` bits
    each, MSB first; ``ceil(len * width / 8)`` bytes."""
    n = values.size
    if width == 0 or n == 0:
        return b""
    total = n * width
    n_words = (total + 31) // 32 + 2
    words = np.zeros(n_words, dtype=np.float64)
    pos = np.arange(n, dtype=np.int64) * width
    place_codes(words, 0, pos, np.full(n, width, dtype=np.int64), values.astype(np.uint64))
    out = words[: n_words - 1].astype(np.uint32).astype(">u4").tobytes()
    return out[: (total + 7) // 8]


def unpack_fixed_width(blob: bytes | memoryview, count: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_fixed_width`: ``count`` uint64 values."""
    if width == 0 or count == 0:
        return np.zeros(count, dtype=np.uint64)
    nbytes = len(blob)
    buf = np.zeros((nbytes + 3) // 4 * 4 + 8, dtype=np.uint8)
    buf[:nbytes] = np.frombuffer(blob, dtype=np.uint8)
    a = buf.view(">u4").astype(np.uint64)
    pos = np.arange(count, dtype=np.uint64) * np.uint64(width)
    word = (pos >> np.uint64(5)).astype(np.int64)
    window = (a[word] << np.uint64(32)) | a[word + 1]
    return (window << (pos & np.uint64(31))) >> np.uint64(64 - width)
