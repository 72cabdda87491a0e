"""Bounds-checked reading of untrusted container bytes.

Every read says how many bytes it wants; a read past the end raises
:class:`PackError` instead of returning short data, so parsers built on this
never index out of range and never trust a length they have not checked.
"""

from __future__ import annotations

import struct

from onnxshrink.errors import PackError

_U8, _U16, _U32, _U64, _I32 = (struct.Struct(f) for f in ("<B", "<H", "<I", "<Q", "<i"))


class ByteReader:
    """A cursor over a bytes-like object; ``what`` names it in error messages."""

    def __init__(self, data: bytes | memoryview, what: str = "container"):
        self.view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
        self.pos = 0
        self.what = what

    @property
    def remaining(self) -> int:
        return len(self.view) - self.pos

    def take(self, n: int) -> memoryview:
        """The next ``n`` bytes (a view, no copy)."""
        if n < 0 or n > self.remaining:
            raise PackError(f"corrupt {self.what}: truncated (wanted {n} bytes, {self.remaining} left)")
        out = self.view[self.pos : self.pos + n]
        self.pos += n
        return out

    def _unpack(self, s: struct.Struct) -> int:
        return s.unpack(self.take(s.size))[0]

    def fields(self, s: struct.Struct) -> tuple:
        """The next ``s.size`` bytes unpacked by ``s``: several fixed fields in one read."""
        return s.unpack(self.take(s.size))

    def u8(self) -> int:
        return self._unpack(_U8)

    def u16(self) -> int:
        return self._unpack(_U16)

    def u32(self) -> int:
        return self._unpack(_U32)

    def u64(self) -> int:
        return self._unpack(_U64)

    def i32(self) -> int:
        return self._unpack(_I32)

    def varint(self) -> int:
        """An unsigned LEB128 integer of at most 64 bits (10 bytes)."""
        view, pos, end = self.view, self.pos, len(self.view)
        value = shift = 0
        while True:
            if pos >= end:
                raise PackError(f"corrupt {self.what}: truncated (wanted 1 bytes, 0 left)")
            byte = view[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift >= 64:
                raise PackError(f"corrupt {self.what}: an integer longer than 64 bits")
        self.pos = pos
        if value >> 64:
            raise PackError(f"corrupt {self.what}: an integer longer than 64 bits")
        return value

    def bounded(self, value: int, limit: int, field: str) -> int:
        """Return ``value`` if it is at most ``limit``, else refuse the container."""
        if value > limit:
            raise PackError(f"corrupt {self.what}: {field} {value} exceeds the limit {limit}")
        return value

    def text(self, n: int, field: str) -> str:
        try:
            return bytes(self.take(n)).decode("utf-8")
        except UnicodeDecodeError:
            raise PackError(f"corrupt {self.what}: {field} is not UTF-8") from None

    def expect_end(self) -> None:
        if self.remaining:
            raise PackError(f"corrupt {self.what}: {self.remaining} unexpected trailing bytes")


def varint(v: int) -> bytes:
    """Unsigned LEB128: 7 bits a byte, low first, high bit set on all but the last."""
    out = bytearray()
    while True:
        byte = v & 0x7F
        v >>= 7
        if v:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def u8(v: int) -> bytes:
    return _U8.pack(v)


def u16(v: int) -> bytes:
    return _U16.pack(v)


def u32(v: int) -> bytes:
    return _U32.pack(v)


def u64(v: int) -> bytes:
    return _U64.pack(v)


def i32(v: int) -> bytes:
    return _I32.pack(v)
