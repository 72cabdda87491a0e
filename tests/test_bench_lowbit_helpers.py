"""scripts/bench_lowbit.py's helpers: peers that are missing or fail become
table cells, never a crash; the tables render from rows. No model is run and
Shrink Ray is not needed."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import onnx
import pytest
from onnx import helper

from conftest import load_script



@pytest.fixture(scope="module")
def bench():
    return load_script("bench_lowbit")


def _model(op: str) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])
    w = helper.make_tensor("w", onnx.TensorProto.FLOAT, [2, 2], [1.0, 0.0, 0.0, 1.0])
    graph = helper.make_graph([helper.make_node(op, ["x", "w"], ["y"])], "g", [x], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_missing_peers_are_cells_not_crashes(bench, tmp_path):
    src = tmp_path / "m.onnx"
    assert bench.python_with("no_such_module_here", [sys.executable, None, str(tmp_path / "nopython")]) is None
    assert bench.python_with("json", [None, sys.executable]) == sys.executable
    assert bench.shrink_ray(None, src, "integer_weights", tmp_path) == (None, "not installed")
    assert bench.ort_nbits(None, _model("Gemm"), src, tmp_path) == (None, "n/a (no MatMul)")
    assert bench.ort_nbits(None, _model("MatMul"), src, tmp_path)[1].startswith("not installed")


def test_a_failing_peer_is_reported_with_its_message(bench, tmp_path):
    # sys.executable has no onnx_shrink_ray: python -m exits 1 with "No module named ...".
    data, why = bench.shrink_ray(sys.executable, tmp_path / "m.onnx", "integer_weights", tmp_path)
    assert data is None and why.startswith("failed (exit 1)") and "onnx_shrink_ray" in why


@pytest.mark.skipif(shutil.which("zstd") is None and not Path("/usr/bin/zstd").exists(), reason="no zstd binary")
def test_zstd_bytes_shrinks_repetitive_data(bench):
    assert bench.zstd_bytes(b"\0" * 100_000) < 1_000


def test_tables_render_from_rows(bench):
    rows = [bench.Row("fp32", size=1000, zstd=900, accuracy=98.0, latency=1.0),
            bench.Row("ours", size=250, zstd=240, accuracy=97.9, latency=1.01, note="n"),
            bench.Row("Shrink Ray integer_weights", failure="failed (exit 1): boom")]
    result = bench.ModelResult("m", rows, ["| m | own |"], ["| m | sweep |"], "| m | summary |")
    text = bench.render([result], "python scripts/bench_lowbit.py", 1.0, 2)
    assert "partial: 1 of 2 models" in text
    assert "| m | ours | 97.90 | 250 | 4.00x | 240 | 4.17x | 1.01x | n |" in text
    assert "| m | Shrink Ray integer_weights | failed (exit 1): boom | | | | | | |" in text
    for line in ("| m | own |", "| m | sweep |", "| m | summary |", bench.HEADER, bench.OWN_HEADER, bench.SWEEP_HEADER):
        assert line in text


def test_a_peer_file_that_is_not_a_model_is_a_broken_cell(bench):
    row = bench._file_row("Shrink Ray integer_weights", b"\xff\xff not a model", None)
    assert row.model is None and row.failure.startswith("broken: ")
    assert bench._shrink_ray_note("integer_weights", b"\xff\xff not a model") == ""
