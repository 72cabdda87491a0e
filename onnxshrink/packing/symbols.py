"""What a codec codes when it is not the tensor's bytes as they are.

Sub-byte types (int4, uint4, float4e2m1, int2, uint2) pack two or four
elements to a byte, the first in the lowest bits (as onnx defines
``raw_data``). Coding those bytes would make Huffman see pairs of int4 values
(256 symbols, most rare) and zero runs miss every zero paired with a nonzero
value, so :func:`unpack` gives one byte symbol per element and :func:`pack`
puts them back. Every element slot of the bytes is a symbol, the padding
element of an odd-length int4 tensor included, so the round trip is exact
whatever the padding bits hold.

``cast="float16"``: float32 values that float16 represents exactly are coded
as float16 (:func:`narrow`) and widened back (:func:`widen`).
"""

from __future__ import annotations

import numpy as np

from onnxshrink.errors import PackError

CAST_WORDS = {"float16": 2}  # cast -> byte width of the narrowed values


def symbol_count(nbytes: int, bits: int) -> int:
    """Number of ``bits``-bit symbols in ``nbytes`` bytes."""
    return nbytes * (8 // bits)


def unpack(data: np.ndarray, bits: int) -> np.ndarray:
    """One uint8 symbol per ``bits``-bit element of ``data`` (uint8), lowest bits first."""
    shifts = np.arange(0, 8, bits, dtype=np.uint8)
    return ((data[:, None] >> shifts) & np.uint8((1 << bits) - 1)).reshape(-1)


def pack(values: np.ndarray, bits: int, what: str) -> np.ndarray:
    """Inverse of :func:`unpack`; a symbol that does not fit in ``bits`` is corrupt input."""
    per_byte = 8 // bits
    if values.size % per_byte or (values.size and int(values.max()) >> bits):
        raise PackError(f"corrupt {what}: a decoded symbol does not fit in {bits} bits")
    grid = values.reshape(-1, per_byte)
    out = grid[:, 0].copy()
    for k in range(1, per_byte):
        out |= grid[:, k] << np.uint8(k * bits)
    return out


def narrow(data: np.ndarray, cast: str) -> np.ndarray:
    """The float16 bytes of float32 bytes ``data``; PackError if that is not exact
    (the packer rounds a tensor to float16 first, so this never loses anything)."""
    wide = data.view("<f4")
    half = wide.astype("<f2")
    if not np.array_equal(half.astype("<f4").view("<u4"), wide.view("<u4")):
        raise PackError("cast to float16 would change the tensor; round it to float16 values first")
    return half.view(np.uint8)


def narrowed_nbytes(nbytes: int, cast: str, what: str) -> int:
    """Bytes of the float16 values that widen to ``nbytes`` bytes of float32."""
    if nbytes % 4:
        raise PackError(f"corrupt {what}: {nbytes} bytes is not a whole number of float32 values")
    return nbytes // 2


def widen(data: np.ndarray, cast: str) -> np.ndarray:
    """float32 bytes of float16 bytes ``data``."""
    return data.view("<f2").astype("<f4").view(np.uint8)


def round_to_float16(data: bytes) -> bytes | None:
    """float32 bytes rounded to the nearest float16 values (still float32), or
    None when a value is not finite or would not be finite in float16."""
    wide = np.frombuffer(data, dtype="<f4")
    if not np.isfinite(wide).all() or (wide.size and float(np.abs(wide).max()) > 65504.0):
        return None
    return wide.astype("<f2").astype("<f4").tobytes()
