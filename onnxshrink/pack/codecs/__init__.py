"""Lossless tensor codecs, keyed by ``codec_id`` (see :mod:`.registry`).

Importing this package registers the built-in codecs: ``raw``, ``huffman``,
``rle`` and ``rle+huffman``.
"""

from onnxshrink.pack.codecs import huffman, raw, rle, rle_huffman  # noqa: F401  (registers)
from onnxshrink.pack.codecs.abc import Codec
from onnxshrink.pack.codecs.registry import codec_ids, get_codec, register_codec

__all__ = ["Codec", "codec_ids", "get_codec", "register_codec"]
