"""Reading a container one payload at a time.

:class:`PackedSource` checks a container's head (through a ``read_at``
callable, so a file is never read whole), parses the model skeleton and
matches every entry to the tensor it restores before anything is decoded.
:meth:`PackedSource.decoded` then yields the tensors' bytes in entry order,
reading each payload only when it is decoded: small tensors are decoded
together in groups (many small tensors decode at the speed of one large
one), large ones alone, so memory holds at most one group or one large
tensor besides what the caller keeps.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Iterator

import numpy as np
import onnx

from onnxshrink.errors import PackError
from onnxshrink.packing import container, tensors
from onnxshrink.packing.bytereader import ByteReader
from onnxshrink.packing.codecs import get_codec
from onnxshrink.packing.codecs.abc import Codec, decode_all
from onnxshrink.packing.container import Limits

# Tensors up to this size are decoded together, in groups of up to
# _BATCH_TOTAL_BYTES (bounding the extra memory); larger ones one at a time.
_BATCH_BYTES = 1 << 20
_BATCH_TOTAL_BYTES = 1 << 26


@dataclasses.dataclass(frozen=True)
class Job:
    """One entry to decode: its payload's offset in the container, the
    skeleton tensor it restores and the codec its config names."""

    entry: container.Entry
    offset: int
    tensor: onnx.TensorProto
    codec: Codec


class PackedSource:
    """A checked container: ``model`` is its skeleton (packed tensors without
    data), ``jobs`` its entries in order, each matched to its tensor.

    Raises PackError for a container that is malformed, beyond ``limits``,
    or whose entries do not match the skeleton; nothing is decoded yet.
    """

    def __init__(self, read_at: container.ReadAt, size: int, limits: Limits = Limits()):
        self._read_at = read_at
        layout = container.read_layout(read_at, size, limits)
        self.model = onnx.ModelProto()
        try:
            self.model.ParseFromString(layout.skeleton)
        except Exception:
            raise PackError("corrupt container: the model graph does not parse") from None
        del layout.skeleton
        slots = tensors.tensor_slots(self.model)
        # Codecs are built here, so unknown ones are refused before anything is decoded.
        self.jobs = [Job(entry, offset, _slot_for(entry, slots, previous), get_codec(entry.codec))
                     for entry, offset, previous in zip(layout.entries, layout.offsets, [None, *layout.entries])]

    def decoded(self, jobs: list[Job]) -> Iterator[tuple[Job, np.ndarray]]:
        """Each of ``jobs`` with its checked bytes (uint8), in the order given.

        A small job is decoded with the small jobs after it, up to
        ``_BATCH_TOTAL_BYTES``, and held until its turn; a large one alone.
        """
        small = [j for j in jobs if j.entry.decoded_length <= _BATCH_BYTES]
        groups, group, total = {}, [], 0
        for job in small:
            if group and total + job.entry.decoded_length > _BATCH_TOTAL_BYTES:
                group, total = [], 0
            group.append(job)
            total += job.entry.decoded_length
            groups[id(job)] = group
        ready: dict[int, np.ndarray] = {}
        for job in jobs:
            if job.entry.decoded_length > _BATCH_BYTES:
                yield job, self._decode([job])[0]
                continue
            if id(job) not in ready:
                members = groups[id(job)]
                ready.update(zip(map(id, members), self._decode(members)))
            yield job, ready.pop(id(job))

    def _decode(self, jobs: list[Job]) -> list[np.ndarray]:
        readers = [ByteReader(self._read_at(j.offset, j.entry.encoded_length), f"payload of tensor '{j.entry.name}'")
                   for j in jobs]
        for job, reader in zip(jobs, readers):
            if reader.remaining != job.entry.encoded_length:
                raise PackError(f"corrupt container: the payload of tensor '{job.entry.name}' is truncated")
        steps = [j.codec.decode_steps(r, j.entry.decoded_length) for j, r in zip(jobs, readers)]
        outs = decode_all(steps)
        for job, reader, out in zip(jobs, readers, outs):
            reader.expect_end()
            if out.size != job.entry.decoded_length or zlib.crc32(out) != job.entry.crc32:
                raise PackError(f"corrupt container: tensor '{job.entry.name}' fails its CRC32 check")
        return outs


def _slot_for(entry: container.Entry, slots: list[tensors.TensorSlot], previous: container.Entry | None
              ) -> onnx.TensorProto:
    """The skeleton tensor ``entry`` restores, after checking that they match."""
    if not (previous.ordinal if previous else -1) < entry.ordinal < len(slots):
        raise PackError(f"corrupt container: tensor '{entry.name}' refers to a slot that does not exist")
    slot = slots[entry.ordinal]
    t = slot.tensor
    if (slot.kind, t.name, t.data_type, tuple(t.dims)) != (entry.kind, entry.name, entry.data_type, entry.dims) or (
            tensors.has_data(t) or t.data_location == onnx.TensorProto.EXTERNAL):
        raise PackError(f"corrupt container: tensor '{entry.name}' does not match the graph")
    if tensors.expected_nbytes(entry.data_type, entry.dims) != entry.decoded_length:
        raise PackError(f"corrupt container: tensor '{entry.name}' has the wrong size for its shape")
    return t
