"""The codec interface: lossless byte transforms chosen per tensor.

Like numcodecs: a codec has a ``codec_id``, a JSON ``get_config()`` (with
``"id"``) from which ``from_config`` rebuilds it, ``encode`` and ``decode``.
Codecs see a tensor as its little-endian bytes (uint8, 1-D) plus ``word``,
the width in bytes of the values whose byte planes are coded separately
(4 for float32, 2 for float16, 1 for int8 and sub-byte types).

While one tensor is being packed, every candidate codec gets the same
:class:`Analysis`, so facts several codecs need (byte planes, histograms,
zero runs) are computed once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Generator

import numpy as np

from onnxshrink.errors import PackError
from onnxshrink.pack import lanes, stream
from onnxshrink.pack.bytereader import ByteReader

WORDS = (1, 2, 4, 8)


class Analysis:
    """One tensor's bytes and the facts about them computed so far."""

    def __init__(self, data: np.ndarray):
        self.data = data
        self._facts: dict[Any, Any] = {}

    def fact(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()``, run at most once per key for this tensor."""
        if key not in self._facts:
            self._facts[key] = compute()
        return self._facts[key]

    def planes(self, word: int) -> list[np.ndarray]:
        """The ``word`` byte planes of the tensor (plane b: byte b of every value)."""
        return self.fact(("planes", word), lambda: byte_planes(self.data, word))

    def histograms(self, word: int) -> list[np.ndarray]:
        """The byte histogram of each plane."""
        return self.fact(("histograms", word), lambda: [stream.histogram(p) for p in self.planes(word)])


def byte_planes(data: np.ndarray, word: int) -> list[np.ndarray]:
    """Split ``data`` (uint8, length a multiple of ``word``) into ``word`` planes."""
    if word == 1:
        return [data]
    grid = data.reshape(-1, word)
    return [np.ascontiguousarray(grid[:, b]) for b in range(word)]


DecodeSteps = Generator[list[lanes.LaneStream], None, np.ndarray]


def decode_all(steps: list[DecodeSteps]) -> list[np.ndarray]:
    """Run several codecs' :meth:`Codec.decode_steps` side by side: each round
    decodes the streams all of them are waiting for in one batch
    (:func:`lanes.decode_batch`), so many small tensors decode at the speed
    of one large one. Returns their results in order."""
    results: list[Any] = [None] * len(steps)
    waiting: dict[int, list[lanes.LaneStream]] = {}

    def advance(i: int) -> None:
        try:
            waiting[i] = next(steps[i])
        except StopIteration as done:
            waiting.pop(i, None)
            results[i] = done.value

    for i in range(len(steps)):
        advance(i)
    while waiting:
        lanes.decode_batch([s for batch in waiting.values() for s in batch])
        for i in list(waiting):
            advance(i)
    return results


class Codec(ABC):
    """A lossless codec; ``word`` is the byte-plane width (1, 2, 4 or 8)."""

    codec_id: ClassVar[str]

    def __init__(self, word: int = 1):
        if word not in WORDS:
            raise PackError(f"codec '{self.codec_id}': word width {word!r} is not one of {WORDS}")
        self.word = word

    @abstractmethod
    def encode(self, data: np.ndarray, analysis: Analysis | None = None) -> bytes:
        """Encode ``data`` (uint8, 1-D, length a multiple of ``word``).
        ``analysis``: shared facts about ``data``, if the caller has them."""

    @abstractmethod
    def decode_steps(self, reader: ByteReader, nbytes: int) -> DecodeSteps:
        """Decode ``nbytes`` bytes from ``reader`` (which holds exactly this
        codec's payload), as a generator: it yields lists of Huffman streams
        it needs decoded (see :func:`decode_all`) and returns the bytes,
        uint8 (nbytes,). Corrupt input raises PackError."""

    def decode(self, reader: ByteReader, nbytes: int) -> np.ndarray:
        """Decode ``nbytes`` bytes from ``reader``: :meth:`decode_steps` run alone."""
        return decode_all([self.decode_steps(reader, nbytes)])[0]

    def estimate(self, data: np.ndarray, analysis: Analysis | None = None) -> int:
        """Bytes ``encode`` would write (or a close upper bound), cheaply."""
        return len(self.encode(data, analysis))

    def worth_trying(self, analysis: Analysis) -> bool:
        """False when cheap facts (histograms) show this codec cannot win, so
        its estimate need not be computed."""
        return True

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "word": self.word}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Codec:
        extra = set(config) - {"id", "word"}
        if extra:
            raise PackError(f"codec '{cls.codec_id}': unknown parameters {sorted(extra)}")
        return cls(word=config.get("word", 1))

    def _check_size(self, reader: ByteReader, nbytes: int) -> int:
        """Number of values in ``nbytes``; refuses a size that is not whole values."""
        if nbytes % self.word:
            raise PackError(f"corrupt {reader.what}: {nbytes} bytes is not a whole number of {self.word}-byte values")
        return nbytes // self.word

    def __repr__(self) -> str:
        return f"{type(self).__name__}(word={self.word})"
