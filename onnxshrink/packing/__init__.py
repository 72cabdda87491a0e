"""Lossless packing of ONNX models into verified .onnxz containers.

``pack_model(model) -> PackResult`` (container bytes and a report),
``write_packed(result, path)``, ``load_packed(path_or_bytes, materialize="qdq"|"native"|"float"|"auto")
-> ModelProto`` and ``inference_session_from_packed(path_or_bytes)`` (``materialize="auto"``: weight-only
layers on onnxruntime's low-bit kernels or float32, see :mod:`onnxshrink.packing.forms`). Codecs live in
:mod:`onnxshrink.packing.codecs`; the format is docs/FORMAT.md.
"""

from onnxshrink.packing.api import (
    PackOptions, PackResult, load_packed, pack_file, pack_model, unpack_file, write_packed,
)
from onnxshrink.packing.container import MAGIC, Limits
from onnxshrink.packing.forms import MATERIALIZE_MODES, deployed_model, materialize
from onnxshrink.packing.materialize import materialize_float
from onnxshrink.packing.native import LayerForm
from onnxshrink.packing.report import PackReport, TensorReport
from onnxshrink.packing.session import inference_session_from_packed


def is_packed_file(path) -> bool:
    """Whether the file at ``path`` starts with the .onnxz magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


__all__ = [
    "LayerForm", "Limits", "MATERIALIZE_MODES", "deployed_model", "materialize", "PackOptions", "PackReport", "PackResult", "TensorReport",
    "inference_session_from_packed", "is_packed_file", "load_packed", "materialize_float", "pack_file", "pack_model",
    "unpack_file", "write_packed",
]
