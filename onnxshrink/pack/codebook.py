"""Canonical, length-limited Huffman codebooks over byte symbols (0..255).

A codebook is fully described by 256 code lengths (0 = symbol unused). From
the lengths alone, encoder and decoder derive the same canonical codes:
symbols sorted by (length, symbol) get consecutive codes, so the lengths are
all the container stores. Everything here works on 256-entry arrays, never on
the symbols of a tensor, so plain numpy on small arrays is plenty fast.
"""

from __future__ import annotations

import numpy as np

from onnxshrink.errors import PackError

ALPHABET = 256
# Longest code we ever emit. The decoder peeks MAX_CODE_LENGTH bits per symbol
# from a 64-bit window, and its lookup table has 2**length entries: 12 keeps the
# table in L1/L2 and costs < 0.1 % on the distributions of real weights.
MAX_CODE_LENGTH = 12


def code_lengths(counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Optimal code lengths for ``counts`` (256 symbol counts) with no code
    longer than ``max_length`` bits, by the package-merge algorithm.

    Returns uint8 lengths, 0 for symbols that never occur. With fewer than two
    used symbols there is nothing to code: the single used symbol (if any) gets
    length 0 too, and callers store such a stream as a constant.
    Deterministic: ties are broken by symbol value.
    """
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(ALPHABET, dtype=np.uint8)
    used = np.flatnonzero(counts)
    n = used.size
    if n < 2:
        return lengths
    if n > (1 << max_length):
        raise ValueError(f"{n} symbols cannot be coded in {max_length} bits")
    # Leaves sorted by (count, symbol); stable sort keeps the symbol order.
    order = used[np.argsort(counts[used], kind="stable")]
    leaf_w = counts[order]
    leaf_v = np.eye(n, dtype=np.int32)
    cur_w, cur_v = leaf_w, leaf_v
    for _ in range(max_length - 1):
        k = cur_w.size // 2 * 2
        pack_w = cur_w[0:k:2] + cur_w[1:k:2]
        pack_v = cur_v[0:k:2] + cur_v[1:k:2]
        w = np.concatenate([leaf_w, pack_w])
        v = np.concatenate([leaf_v, pack_v])
        pick = np.argsort(w, kind="stable")  # leaves before packages on ties
        cur_w, cur_v = w[pick], v[pick]
    lengths[order] = cur_v[: 2 * n - 2].sum(axis=0)
    return lengths


def canonical_order(lengths: np.ndarray) -> np.ndarray:
    """Used symbols sorted by (length, symbol): the canonical code order."""
    used = np.flatnonzero(lengths)
    return used[np.lexsort((used, lengths[used]))]


def check_lengths(lengths: np.ndarray, max_length: int) -> None:
    """Refuse lengths that do not form a complete prefix code (Kraft sum 1).

    Raises PackError: lengths come from the container and may be corrupt.
    """
    used = lengths[lengths > 0].astype(np.int64)
    if used.size < 2 or int(used.max()) > max_length:
        raise PackError("corrupt container: Huffman code lengths out of range")
    kraft = int(np.sum(np.left_shift(1, max_length - used)))
    if kraft != 1 << max_length:
        raise PackError("corrupt container: Huffman code lengths do not form a complete code")


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """uint64 code of each symbol (right-aligned, MSB first), 0 for unused."""
    codes = np.zeros(ALPHABET, dtype=np.uint64)
    order = canonical_order(lengths)
    if order.size == 0:
        return codes
    top = int(lengths.max())
    ls = lengths[order].astype(np.int64)
    # Left-justified to `top` bits, canonical codes are the running sum of the
    # code-space each earlier symbol takes.
    span = np.left_shift(1, top - ls)
    start = np.concatenate([[0], np.cumsum(span)[:-1]])
    codes[order] = (start >> (top - ls)).astype(np.uint64)
    return codes


def decode_tables(lengths: np.ndarray, table_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Lookup tables indexed by the next ``table_bits`` bits of a stream:
    (symbol as uint8, code length as int64). Lengths must already be checked.
    """
    order = canonical_order(lengths)
    ls = lengths[order].astype(np.int64)
    reps = np.left_shift(1, table_bits - ls)
    symbols = np.repeat(order.astype(np.uint8), reps)
    sizes = np.repeat(ls, reps)
    return symbols, sizes


def pack_lengths(lengths: np.ndarray) -> bytes:
    """256 lengths as 128 bytes, two 4-bit lengths per byte (high nibble first)."""
    ls = lengths.astype(np.uint8)
    return ((ls[0::2] << 4) | ls[1::2]).astype(np.uint8).tobytes()


def unpack_lengths(blob: bytes) -> np.ndarray:
    """Inverse of :func:`pack_lengths`."""
    b = np.frombuffer(blob, dtype=np.uint8)
    out = np.empty(ALPHABET, dtype=np.uint8)
    out[0::2] = b >> 4
    out[1::2] = b & 15
    return out


def entropy_bits(counts: np.ndarray) -> float:
    """Order-0 entropy, in bits, of a stream with these symbol counts."""
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]
    total = c.sum()
    if total == 0:
        return 0.0
    return float(-(c * np.log2(c / total)).sum())
