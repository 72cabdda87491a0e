"""``rle+huffman``: zero-run lengths and nonzero values, both Huffman-coded
(the JPEG idea). Plain Huffman spends at least one bit per value; on a tensor
with 80 % zeros the run lengths cost far less, which is what gets pruned
tensors near their entropy bound. Same payload layout as ``rle``.
"""

from __future__ import annotations

from onnxshrink.packing.codecs.registry import register_codec
from onnxshrink.packing.codecs.rle import RunLength


@register_codec
class RunLengthHuffman(RunLength):
    codec_id = "rle+huffman"
    lanes = True
    entropy_coded = True
