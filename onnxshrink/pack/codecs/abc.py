"""The codec interface: lossless byte transforms chosen per tensor.

Like numcodecs: a codec has a ``codec_id``, a JSON ``get_config()`` (with
``"id"``) from which ``from_config`` rebuilds it, ``encode`` and ``decode``.
Codecs see a tensor as its little-endian bytes (uint8, 1-D) plus ``word``,
the width in bytes of the values whose byte planes are coded separately
(4 for float32, 2 for float16, 1 for int8 and sub-byte types).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from onnxshrink.errors import PackError
from onnxshrink.pack.bytereader import ByteReader

WORDS = (1, 2, 4, 8)


class Codec(ABC):
    """A lossless codec; ``word`` is the byte-plane width (1, 2, 4 or 8)."""

    codec_id: ClassVar[str]

    def __init__(self, word: int = 1):
        if word not in WORDS:
            raise PackError(f"codec '{self.codec_id}': word width {word!r} is not one of {WORDS}")
        self.word = word

    @abstractmethod
    def encode(self, data: np.ndarray) -> bytes:
        """Encode ``data`` (uint8, 1-D, length a multiple of ``word``)."""

    @abstractmethod
    def decode(self, reader: ByteReader, nbytes: int) -> np.ndarray:
        """Decode ``nbytes`` bytes from ``reader`` (which holds exactly this
        codec's payload); returns uint8 (nbytes,). Corrupt input raises
        PackError."""

    def estimate(self, data: np.ndarray) -> int:
        """Bytes ``encode`` would write (or a close upper bound), cheaply."""
        return len(self.encode(data))

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "word": self.word}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Codec:
        extra = set(config) - {"id", "word"}
        if extra:
            raise PackError(f"codec '{cls.codec_id}': unknown parameters {sorted(extra)}")
        return cls(word=config.get("word", 1))

    def planes(self, data: np.ndarray) -> list[np.ndarray]:
        """The ``word`` byte planes of ``data`` (plane b: byte b of every value)."""
        if self.word == 1:
            return [data]
        grid = data.reshape(-1, self.word)
        return [np.ascontiguousarray(grid[:, b]) for b in range(self.word)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(word={self.word})"
