"""Data for models whose inputs do not share a leading batch axis (a scalar
sample rate, an RNN state [2, batch, H], as in silero-vad): an array with one
more axis than its input holds one whole input per sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_cli
from onnxshrink.data import NpzData, model_inputs
from onnxshrink.errors import DataError
from onnxshrink.quantization import QuantizeOptions, quantize_model
from onnxshrink.validation import compare_models


def stateful_model() -> onnx.ModelProto:
    """y = MatMul(x, w) * scale + ReduceSum(state over axis 0), x[batch, 8],
    state[2, batch, 4], scale a scalar."""
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32), "w")
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Mul", ["h", "scale"], ["hs"]),
        helper.make_node("ReduceSum", ["state", "axes"], ["s"], keepdims=0),
        helper.make_node("Add", ["hs", "s"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "stateful", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
        helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 4]),
        helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
    ], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [w, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def per_run_data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    path = tmp_path / "runs.npz"
    np.savez(path, x=rng.normal(size=(5, 1, 8)).astype(np.float32),
             state=rng.normal(size=(5, 2, 1, 4)).astype(np.float32),
             scale=rng.uniform(0.5, 2, size=5).astype(np.float32))
    return path


def test_per_run_samples_feed_whole_inputs(per_run_data):
    model = stateful_model()
    batches = list(NpzData(per_run_data).batches(model_inputs(model)))
    assert len(batches) == 5 and all(len(b) == 1 for b in batches)
    assert batches[0].inputs["state"].shape == (2, 1, 4) and batches[0].inputs["scale"].shape == ()
    report = compare_models(model, model, per_run_data)
    assert report.passed is None and report.samples == 5  # no gate: no verdict
    assert report.outputs["y"]["cosine"] == 1.0 and report.outputs["y"]["agreement"] == 1.0


def test_validate_cli_takes_per_run_samples(tmp_path, per_run_data):
    path = tmp_path / "m.onnx"
    onnx.save(stateful_model(), path)
    p = run_cli("validate", path, path, "--data", per_run_data, "--no-latency")
    assert p.returncode == 0, p.stderr


def test_mixed_axes_without_the_extra_axis_are_refused_with_the_fix_named(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((3, 8), np.float32), state=np.zeros((2, 3, 4), np.float32),
             scale=np.ones(3, np.float32))
    with pytest.raises(DataError, match="leading sample axis"):
        compare_models(stateful_model(), stateful_model(), path)


def test_quantize_calibrates_on_per_run_samples(per_run_data):
    result = quantize_model(stateful_model(), str(per_run_data), QuantizeOptions(latency_guard=False))
    assert result.model.graph.node


def test_a_dim_of_minus_one_is_free(tmp_path: Path):
    """paddle2onnx writes dim_value -1 for the batch axis (the PaddleOCR classifier): it fixes
    no size, so the data is read in batches of the asked size, not of -1 samples."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3])
    x.type.tensor_type.shape.dim[0].dim_value = -1
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((10, 3), np.float32))
    assert [len(b) for b in NpzData(path).batches(model_inputs(model), 4)] == [4, 4, 2]
