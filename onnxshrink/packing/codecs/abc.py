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
from onnxshrink.packing import lanes, stream, symbols
from onnxshrink.packing.bytereader import ByteReader

WORDS = (1, 2, 4, 8)
SYMBOL_BITS = (8, 4, 2)
CASTS = symbols.CAST_WORDS


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
    """A lossless codec over a tensor's bytes.

    Parameters (all in the JSON config; docs/FORMAT.md section 4):
    ``word``: the byte-plane width of the coded values (1, 2, 4 or 8).
    ``symbol_bits``: 8, or 4 / 2 for sub-byte types, whose packed elements are
    first unpacked into one byte symbol each (int4: low nibble first, as onnx
    packs them), so Huffman and zero runs see the 16 int4 values, not pairs.
    ``cast``: None, or ``"float16"``: the float32 tensor is coded as float16
    values and widened on decoding; exact only for float32 values that
    float16 represents, which the packer makes sure of (the loss is the
    packer's choice, never the codec's).

    Subclasses implement the ``*_values`` methods on the values those
    parameters give (symbols, narrowed floats, or the bytes themselves).
    """

    codec_id: ClassVar[str]
    # Whether decoding runs the numpy lane loop (a fixed cost per step that
    # dominates on small tensors): the encoder trades a few bytes to avoid it.
    lanes: ClassVar[bool] = False

    def __init__(self, word: int = 1, symbol_bits: int = 8, cast: str | None = None):
        if word not in WORDS:
            raise PackError(f"codec '{self.codec_id}': word width {word!r} is not one of {WORDS}")
        if symbol_bits not in SYMBOL_BITS or (symbol_bits != 8 and word != 1):
            raise PackError(f"codec '{self.codec_id}': symbol_bits {symbol_bits!r} with word {word!r}")
        if cast is not None and (cast not in CASTS or word != CASTS[cast] or symbol_bits != 8):
            raise PackError(f"codec '{self.codec_id}': cast {cast!r} with word {word!r}")
        self.word = word
        self.symbol_bits = symbol_bits
        self.cast = cast

    # -- what subclasses implement, on the coded values -----------------------

    @abstractmethod
    def encode_values(self, data: np.ndarray, analysis: Analysis) -> bytes:
        """Encode ``data`` (uint8, 1-D, length a multiple of ``word``);
        ``analysis`` holds shared facts about exactly ``data``."""

    @abstractmethod
    def decode_values(self, reader: ByteReader, nbytes: int) -> DecodeSteps:
        """Decode ``nbytes`` bytes of values from ``reader`` (which holds
        exactly this codec's payload), as a generator: it yields lists of
        Huffman streams it needs decoded (see :func:`decode_all`) and returns
        the bytes, uint8 (nbytes,). Corrupt input raises PackError."""

    def estimate_values(self, data: np.ndarray, analysis: Analysis) -> int:
        return len(self.encode_values(data, analysis))

    def worth_trying_values(self, analysis: Analysis) -> bool:
        return True

    # -- the tensor's bytes in and out ----------------------------------------

    def values_analysis(self, data: np.ndarray, analysis: Analysis | None = None) -> Analysis:
        """The analysis of the values this codec codes for tensor bytes ``data``
        (shared through ``analysis``, so candidates unpack or narrow once)."""
        a = analysis or Analysis(data)
        if self.symbol_bits != 8:
            return a.fact(("symbols", self.symbol_bits), lambda: Analysis(symbols.unpack(a.data, self.symbol_bits)))
        if self.cast is not None:
            return a.fact(("cast", self.cast), lambda: Analysis(symbols.narrow(a.data, self.cast)))
        return a

    def encode(self, data: np.ndarray, analysis: Analysis | None = None) -> bytes:
        """Encode the tensor bytes ``data`` (uint8, 1-D). ``analysis``: shared
        facts about ``data``, if the caller has them."""
        v = self.values_analysis(data, analysis)
        return self.encode_values(v.data, v)

    def decode_steps(self, reader: ByteReader, nbytes: int) -> DecodeSteps:
        """Decode ``nbytes`` tensor bytes from ``reader``, as a generator (see
        :meth:`decode_values`)."""
        if self.symbol_bits != 8:
            values = yield from self.decode_values(reader, symbols.symbol_count(nbytes, self.symbol_bits))
            return symbols.pack(values, self.symbol_bits, reader.what)
        if self.cast is not None:
            values = yield from self.decode_values(reader, symbols.narrowed_nbytes(nbytes, self.cast, reader.what))
            return symbols.widen(values, self.cast)
        return (yield from self.decode_values(reader, nbytes))

    def decode(self, reader: ByteReader, nbytes: int) -> np.ndarray:
        """Decode ``nbytes`` bytes from ``reader``: :meth:`decode_steps` run alone."""
        return decode_all([self.decode_steps(reader, nbytes)])[0]

    def estimate(self, data: np.ndarray, analysis: Analysis | None = None) -> int:
        """Bytes ``encode`` would write (or a close upper bound), cheaply."""
        v = self.values_analysis(data, analysis)
        return self.estimate_values(v.data, v)

    def worth_trying(self, analysis: Analysis) -> bool:
        """False when cheap facts (histograms) show this codec cannot win, so
        its estimate need not be computed."""
        return self.worth_trying_values(self.values_analysis(analysis.data, analysis))

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"id": self.codec_id, "word": self.word}
        # Written only when used, so files without them stay version 1.
        if self.symbol_bits != 8:
            config["symbol_bits"] = self.symbol_bits
        if self.cast is not None:
            config["cast"] = self.cast
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Codec:
        extra = set(config) - {"id", "word", "symbol_bits", "cast"}
        if extra:
            raise PackError(f"codec '{cls.codec_id}': unknown parameters {sorted(extra)}")
        word, symbol_bits, cast = config.get("word", 1), config.get("symbol_bits", 8), config.get("cast")
        if type(word) is not int or type(symbol_bits) is not int or not (cast is None or isinstance(cast, str)):
            raise PackError(f"codec '{cls.codec_id}': a parameter of the wrong type in {config}")
        return cls(word=word, symbol_bits=symbol_bits, cast=cast)

    def _check_size(self, reader: ByteReader, nbytes: int) -> int:
        """Number of values in ``nbytes``; refuses a size that is not whole values."""
        if nbytes % self.word:
            raise PackError(f"corrupt {reader.what}: {nbytes} bytes is not a whole number of {self.word}-byte values")
        return nbytes // self.word

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.get_config()})"
