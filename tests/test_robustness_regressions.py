"""Failures the sweep found in passes owned elsewhere, pinned as tests.

Each was found by scripts/sweep.py and is fixed; the tests keep it fixed.
"""

from __future__ import annotations

import onnx

from conftest import ONNX_TEST_DATA
from onnxshrink.model import load_model, save_model
from onnxshrink.quantization import QuantizeOptions, quantize_model


def test_public_pack_function_survives_importing_the_subpackage(tmp_path, mlp_path):
    """onnxshrink.pack() was rebound to the subpackage by any import of it (it is now onnxshrink.packing)."""
    import onnxshrink.packing.api  # noqa: F401  (what pipeline, cli and tests all do)

    assert callable(onnxshrink.pack)
    onnxshrink.pack(mlp_path, tmp_path / "m.onnxz")


def test_quantized_ir3_model_reads_back(tmp_path):
    """Quantize added scale/zero-point initializers to an IR 3 model without listing them
    as graph inputs; onnx's checker (and so onnxshrink's loader) refused the output."""
    source = ONNX_TEST_DATA / "pytorch-converted" / "test_Conv1d" / "model.onnx"
    model = load_model(source)
    assert model.ir_version < 4
    import numpy as np
    from onnx import numpy_helper

    x = numpy_helper.to_array(onnx.load_tensor(str(source.parent / "test_data_set_0" / "input_0.pb")))
    calib = tmp_path / "calib.npz"
    np.savez(calib, **{model.graph.input[0].name: x})
    result = quantize_model(model, str(calib), QuantizeOptions(latency_guard=False))
    save_model(result.model, tmp_path / "q.onnx")
    load_model(tmp_path / "q.onnx")
