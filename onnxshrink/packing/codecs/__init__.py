"""Lossless tensor codecs, keyed by ``codec_id`` (see :mod:`.registry`).

Importing this package registers the built-in codecs: ``raw``, ``deflate``,
``huffman``, ``rle``, ``rle+huffman`` and ``rle+deflate``.
"""

from onnxshrink.packing.codecs import deflate, huffman, raw, rle, rle_deflate, rle_huffman  # noqa: F401  (registers)
from onnxshrink.packing.codecs.abc import Codec
from onnxshrink.packing.codecs.registry import codec_ids, get_codec, register_codec

__all__ = ["Codec", "codec_ids", "get_codec", "register_codec"]
