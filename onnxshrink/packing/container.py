"""The .onnxz container: every field checked, and never more than the header
held in memory by the container code itself.

Layout (docs/FORMAT.md has it byte by byte): a 36-byte prefix (magic,
version, header compression, header sizes, CRC32), the header (the model
without the packed tensors' data, then the table of entries), then the
payloads back to back in table order, up to the end of the file.

Writing: :func:`head` is everything before the payloads, so a writer can
stream payloads from wherever it keeps them; :func:`write` joins all in
memory. Reading: :func:`read_layout` parses and checks the head through a
``read_at(offset, size)`` callable and says where each payload starts, so a
file is read one payload at a time; :func:`read` does it on bytes in memory.
Neither knows about codecs or ONNX beyond carrying the model bytes;
:mod:`onnxshrink.packing.api` builds on them.
"""

from __future__ import annotations

import dataclasses
import json
import lzma
import struct
import zlib
from typing import Any, Callable

from onnxshrink.errors import PackError
from onnxshrink.packing.bytereader import ByteReader, i32, u8, u16, u32, u64

MAGIC = b"\x89ONNXZ\r\n"
VERSION = 3  # the newest version this build reads and writes
VERSIONS = (1, 2, 3)
# Codec parameters version 2 added (sub-byte symbols, float16 storage) and
# codecs version 3 added (deflate, rle+deflate); a container is written with
# the lowest version whose features it uses, so older readers read what they can.
V2_CODEC_KEYS = frozenset({"symbol_bits", "cast"})
V3_CODEC_IDS = frozenset({"deflate", "rle+deflate"})
_PREFIX = struct.Struct("<8sHHB3xQQ")  # magic, version, flags, compression, stored, length
PREFIX_SIZE = _PREFIX.size + 4  # + CRC32
NONE, ZLIB, LZMA = 0, 1, 2
MAX_NDIM = 64
MAX_NAME_BYTES = 65535
MAX_CONFIG_BYTES = 4096
_LZMA_MEMLIMIT = 1 << 28  # we write dictionaries of at most 64 MiB


def needed_version(codecs: list[dict[str, Any]]) -> int:
    """The lowest container version that has every one of these codec configs
    (configs as read from a file: dicts, possibly malformed)."""
    if any(isinstance(c.get("id"), str) and c["id"] in V3_CODEC_IDS for c in codecs):
        return 3
    return 2 if any(V2_CODEC_KEYS & set(c) for c in codecs) else 1


@dataclasses.dataclass(frozen=True)
class Limits:
    """Most a container may declare; a container beyond them is refused before
    anything is allocated. Raise them to read larger models."""

    max_header_bytes: int = 1 << 31
    max_entries: int = 1 << 20
    max_tensor_bytes: int = 1 << 36
    max_total_bytes: int = 1 << 38


@dataclasses.dataclass(frozen=True)
class Entry:
    """One packed tensor: where it goes and how its payload decodes."""

    ordinal: int
    kind: int
    name: str
    data_type: int
    dims: tuple[int, ...]
    codec: dict[str, Any]
    decoded_length: int
    encoded_length: int
    crc32: int


@dataclasses.dataclass
class Container:
    """A parsed container: the model skeleton, its entries and their payloads."""

    skeleton: bytes
    entries: list[Entry]
    payloads: list[memoryview]


@dataclasses.dataclass
class Layout:
    """A checked container head: the skeleton, the entries, and the offset in
    the file of each entry's payload (they fill the file exactly)."""

    skeleton: bytes
    entries: list[Entry]
    offsets: list[int]


ReadAt = Callable[[int, int], "bytes | bytearray | memoryview"]


def codec_config_bytes(config: dict[str, Any]) -> bytes:
    """Canonical JSON of a codec config (sorted keys, no spaces): deterministic."""
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode("ascii")


def write(skeleton: bytes, entries: list[Entry], payloads: list[bytes]) -> bytes:
    """Serialise a container; same inputs give the same bytes."""
    return b"".join([head(skeleton, entries), *payloads])


def head(skeleton: bytes, entries: list[Entry]) -> bytes:
    """The container up to its first payload (prefix, CRC32, stored header);
    the payloads follow it in entry order. Same inputs give the same bytes."""
    header = b"".join([u64(len(skeleton)), skeleton, u32(len(entries))] + [_entry_bytes(e) for e in entries])
    method, stored = _compress(header)
    version = needed_version([e.codec for e in entries])
    prefix = _PREFIX.pack(MAGIC, version, 0, method, len(stored), len(header))
    crc = zlib.crc32(stored, zlib.crc32(prefix))
    return b"".join([prefix, u32(crc), stored])


def _entry_bytes(e: Entry) -> bytes:
    name = e.name.encode("utf-8")
    config = codec_config_bytes(e.codec)
    return b"".join(
        [u32(e.ordinal), u8(e.kind), u16(len(name)), name, i32(e.data_type), u8(len(e.dims))]
        + [u64(d) for d in e.dims]
        + [u16(len(config)), config, u64(e.decoded_length), u64(e.encoded_length), u32(e.crc32)]
    )


def _compress(header: bytes) -> tuple[int, bytes]:
    """The smallest of the header as is, zlib -9 and xz -9e (ties: simplest)."""
    options = [(NONE, header), (ZLIB, zlib.compress(header, 9))]
    # A dictionary no larger than the header: same ratio, a fraction of the
    # memory and setup time of preset 9's 64 MiB (and what the reader must allocate).
    dict_size = max(1 << 12, 1 << (len(header) - 1).bit_length())
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": min(dict_size, 1 << 26)}]
    options.append((LZMA, lzma.compress(header, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE, filters=filters)))
    return min(options, key=lambda o: (len(o[1]), o[0]))


def read(data: bytes | memoryview, limits: Limits = Limits()) -> Container:
    """Parse and check a container in memory; payloads are views into ``data``.

    Raises PackError as :func:`read_layout` does.
    """
    view = memoryview(data).cast("B")
    layout = read_layout(lambda offset, size: view[offset : offset + size], len(view), limits)
    payloads = [view[o : o + e.encoded_length] for o, e in zip(layout.offsets, layout.entries)]
    return Container(layout.skeleton, layout.entries, payloads)


def read_layout(read_at: ReadAt, size: int, limits: Limits = Limits()) -> Layout:
    """Parse and check the head of a container of ``size`` bytes, reading it
    through ``read_at(offset, n)`` (which returns at most ``n`` bytes);
    payloads are not read.

    Raises PackError for anything that is not a well-formed container of a
    version this build reads, that declares sizes beyond ``limits``, or
    whose payloads do not fill the rest of the file exactly. Payload
    contents are checked later, against each entry's CRC32.
    """
    prefix = bytes(read_at(0, min(size, PREFIX_SIZE)))
    if len(prefix) < PREFIX_SIZE or prefix[:8] != MAGIC:
        raise PackError("not an onnxshrink packed model (.onnxz): the magic bytes are missing")
    magic, version, flags, method, stored_len, header_len = _PREFIX.unpack(prefix[: _PREFIX.size])
    if version not in VERSIONS:
        raise PackError(f"unsupported .onnxz version {version} (this onnxshrink reads versions "
                        f"{', '.join(map(str, VERSIONS))}); "
                        "use a newer onnxshrink")
    (crc,) = struct.unpack("<I", prefix[_PREFIX.size : PREFIX_SIZE])
    if flags != 0 or method not in (NONE, ZLIB, LZMA):
        raise PackError(f"corrupt container: unknown flags {flags} or header compression {method}")
    if stored_len > size - PREFIX_SIZE:
        raise PackError(f"corrupt container: truncated (header of {stored_len} bytes, file of {size})")
    if header_len > limits.max_header_bytes:
        raise PackError(f"container header of {header_len} bytes exceeds the limit {limits.max_header_bytes}")
    stored = read_at(PREFIX_SIZE, stored_len)
    if len(stored) != stored_len:
        raise PackError(f"corrupt container: truncated (header of {stored_len} bytes, {len(stored)} read)")
    if zlib.crc32(stored, zlib.crc32(prefix[: _PREFIX.size])) != crc:
        raise PackError("corrupt container: the header checksum does not match (damaged or truncated file)")
    header = _decompress(method, stored, header_len)
    del stored
    reader = ByteReader(header, "container header")
    skeleton = bytes(reader.take(reader.bounded(reader.u64(), header_len, "model size")))
    count = reader.bounded(reader.u32(), limits.max_entries, "number of tensors")
    configs: dict[str, dict[str, Any]] = {}
    entries = [_read_entry(reader, limits, configs) for _ in range(count)]
    reader.expect_end()
    needed = needed_version([e.codec for e in entries])
    if needed > version:
        raise PackError(f"corrupt container: a version {version} file uses codecs or parameters of version {needed}")
    total = sum(e.decoded_length for e in entries)
    if total > limits.max_total_bytes:
        raise PackError(f"container declares {total} bytes of tensors, beyond the limit {limits.max_total_bytes}")
    offsets, position = [], PREFIX_SIZE + stored_len
    for e in entries:
        if e.encoded_length > size - position:
            raise PackError(f"corrupt container payloads: truncated (wanted {e.encoded_length} bytes, "
                            f"{size - position} left)")
        offsets.append(position)
        position += e.encoded_length
    if position != size:
        raise PackError(f"corrupt container payloads: {size - position} unexpected trailing bytes")
    return Layout(skeleton, entries, offsets)


def _decompress(method: int, stored: memoryview, length: int) -> bytes:
    try:
        if method == NONE:
            out = bytes(stored)
        elif method == ZLIB:
            d = zlib.decompressobj()
            out = d.decompress(stored, length + 1)
        else:
            d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=_LZMA_MEMLIMIT)
            out = d.decompress(bytes(stored), length + 1)
    except (zlib.error, lzma.LZMAError):
        raise PackError("corrupt container: the header does not decompress") from None
    if len(out) != length:
        raise PackError(f"corrupt container: the header is {len(out)} bytes, not the {length} declared")
    return out


# An entry's fixed fields, read a group at a time (a model has thousands of entries).
_ENTRY_START = struct.Struct("<IBH")  # ordinal, kind, name length
_ENTRY_TYPE = struct.Struct("<iB")  # data_type, rank
_ENTRY_END = struct.Struct("<QQI")  # decoded length, encoded length, CRC32


def _read_entry(r: ByteReader, limits: Limits, configs: dict[str, dict[str, Any]]) -> Entry:
    """One entry; ``configs`` caches parsed codec configs by their text (each
    entry still gets its own dict)."""
    ordinal, kind, name_length = r.fields(_ENTRY_START)
    name = r.text(name_length, "tensor name")
    data_type, ndim = r.fields(_ENTRY_TYPE)
    r.bounded(ndim, MAX_NDIM, "rank")
    dims = struct.unpack(f"<{ndim}Q", r.take(8 * ndim))
    raw_config = r.text(r.bounded(r.u16(), MAX_CONFIG_BYTES, "codec config size"), "codec config")
    codec = configs.get(raw_config)
    if codec is None:
        try:
            codec = json.loads(raw_config)
        except ValueError:
            raise PackError(f"corrupt container: the codec config of tensor '{name}' is not JSON") from None
        if not isinstance(codec, dict):
            raise PackError(f"corrupt container: the codec config of tensor '{name}' is not an object")
        configs[raw_config] = codec
    decoded, encoded, crc = r.fields(_ENTRY_END)
    r.bounded(decoded, limits.max_tensor_bytes, f"size of tensor '{name}'")
    r.bounded(encoded, limits.max_total_bytes, f"encoded size of tensor '{name}'")
    return Entry(ordinal, kind, name, data_type, dims, dict(codec), decoded, encoded, crc)
