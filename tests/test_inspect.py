"""inspect: the summary on bundled models and on onnx's own test models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import BUNDLED, ONNX_TEST_DATA, bundled, run_cli, tiny_mlp
from onnxshrink import inspect


def test_counts_on_a_tiny_model():
    info = inspect(tiny_mlp())
    assert info.parameters == 16 * 8 + 16 + 16 * 4 + 4
    assert info.weight_bytes == 4 * info.parameters
    assert info.op_counts == {"Gemm": 1, "Relu": 1, "MatMul": 1, "Add": 1}
    assert info.inputs == [{"name": "x", "dtype": "float", "shape": ["batch", 8]}]
    assert info.tensors[0].name == "w1" and info.tensors[0].used_by == "Gemm"
    assert info.bytes_by_op == {"Gemm": (16 * 8 + 16) * 4, "MatMul": 16 * 4 * 4, "Add": 16}


def test_sparsity_is_reported(tmp_path):
    model = tiny_mlp()
    from onnx import numpy_helper

    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w[:, ::2] = 0
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w1"))
    info = inspect(model)
    assert {t.name: t.sparsity for t in info.tensors}["w1"] == pytest.approx(0.5)


@pytest.mark.parametrize("path", sorted((ONNX_TEST_DATA / "light").glob("*.onnx")) + [bundled(n) for n in BUNDLED],
                         ids=lambda p: p.stem)
def test_cli_inspect_works(tmp_path, path):
    result = run_cli("inspect", path, "--json", tmp_path / "i.json")
    assert result.returncode == 0, result.stderr
    info = json.loads((tmp_path / "i.json").read_text())
    assert info["opsets"] and info["inputs"] and info["outputs"] and info["nodes"] > 0
    assert info["parameters"] == sum(t["elements"] for t in info["tensors"])
