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
from onnxshrink.packing import bitpack

ALPHABET = 256
# Longest code we ever emit (and the 4-bit length tables can hold). The decoder
# peeks this many bits per symbol from a 64-bit window, two symbols per read,
# through a table of 2**15 entries. Measured on Laplace int8 weights: a limit
# of 12 costs 0.45 % over unlimited Huffman, 15 costs 0.1 %, at 10 % of the
# decoding speed.
MAX_CODE_LENGTH = 15


def code_lengths(counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Optimal code lengths for ``counts`` (256 symbol counts) with no code
    longer than ``max_length`` bits.

    Plain Huffman (two-queue, linear in the alphabet) when its longest code
    fits, else the package-merge algorithm. Returns uint8 lengths, 0 for
    symbols that never occur. With fewer than two used symbols there is
    nothing to code: the single used symbol (if any) gets length 0 too, and
    callers store such a stream as a constant. Deterministic: ties are broken
    by symbol value.
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
    weights = counts[order]
    depth = _huffman_depths(weights.tolist())
    if max(depth) > max_length:
        depth = _package_merge(weights, max_length)
    lengths[order] = depth
    return lengths


def _huffman_depths(weights: list[int]) -> list[int]:
    """Huffman code lengths of ascending ``weights``: the two-queue method
    (leaves in order, merged nodes in the order made), leaves first on ties."""
    n = len(weights)
    node_w = weights + [0] * (n - 1)
    parent = [0] * (2 * n - 1)
    leaf, made = 0, n
    for k in range(n, 2 * n - 1):
        pair = []
        for _ in range(2):
            if leaf < n and (made >= k or node_w[leaf] <= node_w[made]):
                pair.append(leaf)
                leaf += 1
            else:
                pair.append(made)
                made += 1
        node_w[k] = node_w[pair[0]] + node_w[pair[1]]
        parent[pair[0]] = parent[pair[1]] = k
    depth = [0] * (2 * n - 1)
    for node in range(2 * n - 3, -1, -1):
        depth[node] = depth[parent[node]] + 1
    return depth[:n]


def _package_merge(weights: np.ndarray, max_length: int) -> np.ndarray:
    """Optimal lengths of at most ``max_length`` bits for ascending ``weights``."""
    n = weights.size
    leaf_v = np.eye(n, dtype=np.int32)
    cur_w, cur_v = weights, leaf_v
    for _ in range(max_length - 1):
        k = cur_w.size // 2 * 2
        pack_w = cur_w[0:k:2] + cur_w[1:k:2]
        pack_v = cur_v[0:k:2] + cur_v[1:k:2]
        w = np.concatenate([weights, pack_w])
        v = np.concatenate([leaf_v, pack_v])
        pick = np.argsort(w, kind="stable")  # leaves before packages on ties
        cur_w, cur_v = w[pick], v[pick]
    return cur_v[: 2 * n - 2].sum(axis=0)


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


# How the 256 code lengths are stored (docs/FORMAT.md, section 5).
DENSE_TABLE, SPARSE_TABLE, DELTA_TABLE = 0, 1, 2
_DELTA_STEP = np.array([0, 1, -1, 0], dtype=np.int64)  # 2-bit codes; 3: a 4-bit literal follows


def write_lengths(lengths: np.ndarray) -> bytes:
    """The code-length table, in whichever of three layouts is smallest.

    Dense: u8 kind 0, u8 shortest length, u8 width w (1..4), then 256 values
    of w bits (0 = unused, else length - shortest + 1). Sparse: u8 kind 1,
    u8 count - 1, the used symbols (ascending), their lengths 4 bits each.
    Delta: u8 kind 2, 256 2-bit steps from the previous symbol's length
    (0 same, 1 up one, 2 down one, 3 literal), then the literals, 4 bits each.
    Near-uniform int8 weights need 2-3 bits a length, a float's exponent
    plane uses a handful of symbols, and int8 weights' lengths change by at
    most one between neighbouring values: all far below 4 bits x 256.
    """
    used = np.flatnonzero(lengths)
    shortest = int(lengths[used].min())
    values = np.where(lengths > 0, lengths.astype(np.int64) - shortest + 1, 0)
    width = max(1, int(values.max()).bit_length())
    dense = bytes([DENSE_TABLE, shortest, width]) + bitpack.pack_fixed_width(values.astype(np.uint64), width)
    sparse = bytes([SPARSE_TABLE, used.size - 1]) + used.astype(np.uint8).tobytes() + bitpack.pack_fixed_width(
        lengths[used].astype(np.uint64), 4)
    return min((dense, sparse, _delta_table(lengths)), key=len)  # first on ties


def _delta_table(lengths: np.ndarray) -> bytes:
    ls = lengths.astype(np.int64)
    step = ls - np.concatenate([[0], ls[:-1]])
    codes = np.full(ALPHABET, 3, dtype=np.uint64)
    codes[step == 0], codes[step == 1], codes[step == -1] = 0, 1, 2
    literals = ls[codes == 3].astype(np.uint64)
    return bytes([DELTA_TABLE]) + bitpack.pack_fixed_width(codes, 2) + bitpack.pack_fixed_width(literals, 4)


def _read_delta_table(reader) -> np.ndarray:
    codes = bitpack.unpack_fixed_width(reader.take(ALPHABET * 2 // 8), ALPHABET, 2).astype(np.int64)
    literal = codes == 3
    count = int(literal.sum())
    literals = bitpack.unpack_fixed_width(reader.take((count * 4 + 7) // 8), count, 4).astype(np.int64)
    # Length i = the last literal at or before i (0 before any) + the steps since it.
    segment = np.cumsum(literal)
    base = np.concatenate([[0], literals])[segment]
    walked = np.cumsum(_DELTA_STEP[codes])
    at_literal = np.concatenate([[0], walked[literal]])[segment]
    lengths = base + walked - at_literal
    if lengths.min() < 0 or lengths.max() > 15:
        raise PackError(f"corrupt {reader.what}: code-length table steps out of range")
    return lengths.astype(np.uint8)


def read_lengths(reader) -> np.ndarray:
    """Read a table written by :func:`write_lengths` from a ByteReader; the
    result still needs :func:`check_lengths`."""
    kind = reader.u8()
    lengths = np.zeros(ALPHABET, dtype=np.uint8)
    if kind == DELTA_TABLE:
        return _read_delta_table(reader)
    if kind == DENSE_TABLE:
        shortest, width = reader.u8(), reader.u8()
        if not 1 <= width <= 4 or not 1 <= shortest <= MAX_CODE_LENGTH:
            raise PackError(f"corrupt {reader.what}: code-length table of width {width} from {shortest}")
        values = bitpack.unpack_fixed_width(reader.take(ALPHABET * width // 8), ALPHABET, width).astype(np.int64)
        lengths[:] = np.where(values > 0, np.minimum(values + shortest - 1, 255), 0)
        return lengths
    if kind != SPARSE_TABLE:
        raise PackError(f"corrupt {reader.what}: unknown code-length table kind {kind}")
    count = reader.u8() + 1
    symbols = np.frombuffer(reader.take(count), dtype=np.uint8)
    if count > 1 and np.any(np.diff(symbols.astype(np.int64)) <= 0):
        raise PackError(f"corrupt {reader.what}: code-length table symbols not in order")
    lengths[symbols] = bitpack.unpack_fixed_width(reader.take((count * 4 + 7) // 8), count, 4)
    if np.any(lengths[symbols] == 0):
        raise PackError(f"corrupt {reader.what}: a listed symbol without a code length")
    return lengths


def table_size(lengths: np.ndarray) -> int:
    """Bytes :func:`write_lengths` takes, without building it."""
    used = int(np.count_nonzero(lengths))
    span = int(lengths.max()) - int(lengths[lengths > 0].min()) + 1
    ls = lengths.astype(np.int64)
    literals = int(np.count_nonzero(np.abs(ls - np.concatenate([[0], ls[:-1]])) > 1))
    return min(3 + 32 * max(1, span.bit_length()), 2 + used + (used + 1) // 2, 65 + (literals + 1) // 2)


def entropy_bits(counts: np.ndarray) -> float:
    """Order-0 entropy, in bits, of a stream with these symbol counts."""
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]
    total = c.sum()
    if total == 0:
        return 0.0
    return float(-(c * np.log2(c / total)).sum())
