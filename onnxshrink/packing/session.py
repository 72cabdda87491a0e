"""An onnxruntime session straight from a packed model, in memory.

No temporary files: the restored model is serialised to bytes and handed to
onnxruntime. A model too large for one protobuf (2 GiB) has its large
initializers handed over separately as OrtValues
(``SessionOptions.add_external_initializers``).
"""

from __future__ import annotations

import os

import onnx
from onnx import numpy_helper

from onnxshrink.model import serialized_size
from onnxshrink.packing.api import load_packed
from onnxshrink.packing.container import Limits

# Above this many bytes the serialised model would approach protobuf's 2 GiB limit.
INLINE_SESSION_BYTES = 1_800_000_000
# Initializers at least this large are the ones moved out of the protobuf.
_EXTERNAL_MIN_BYTES = 1 << 20


def inference_session_from_packed(
    source: str | os.PathLike | bytes,
    providers: list | None = None,
    sess_options=None,
    limits: Limits = Limits(),
    inline_limit: int = INLINE_SESSION_BYTES,
    materialize: str = "auto",
):
    """Build an ``onnxruntime.InferenceSession`` from a packed model (path or bytes).

    ``providers`` defaults to the CPU provider. ``sess_options`` is used as
    given (and, for large models, gains the external initializers).
    ``materialize`` is as for :func:`load_packed`; the default ``"auto"``
    runs weight-only quantized MatMul/Gemm/Gather layers on onnxruntime's
    low-bit kernels (MatMulNBits, GatherBlockQuantized: weights stay 4/8-bit
    in memory), other weight-only weights (Conv, layers under 4096 weights)
    as float32, and keeps static int8 QDQ as packed for its integer kernels;
    as packed (``"qdq"``) onnxruntime dequantizes weight-only weights on every
    run (1.3-13x fp32's latency at batch 1, docs/speed.md).
    """
    import onnxruntime as ort

    model = load_packed(source, limits, materialize)
    providers = providers or ["CPUExecutionProvider"]
    sess_options = sess_options or ort.SessionOptions()
    if serialized_size(model) < inline_limit:
        return ort.InferenceSession(model.SerializeToString(), sess_options, providers=providers)
    names, values = [], []
    for t in model.graph.initializer:
        if len(t.raw_data) >= _EXTERNAL_MIN_BYTES:
            names.append(t.name)
            values.append(ort.OrtValue.ortvalue_from_numpy(numpy_helper.to_array(t)))
            _mark_external(t)
    sess_options.add_external_initializers(names, values)
    session = ort.InferenceSession(model.SerializeToString(), sess_options, providers=providers)
    # onnxruntime uses the OrtValues' memory in place: they must live as long as the session.
    session._onnxshrink_initializers = values
    return session


def _mark_external(t: onnx.TensorProto) -> None:
    """Turn ``t`` into a placeholder whose data onnxruntime takes from the session options."""
    size = len(t.raw_data)
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "onnxshrink-in-memory"), ("offset", "0"), ("length", str(size))):
        e = t.external_data.add()
        e.key, e.value = key, value
