"""`onnxshrink pack` / `unpack`: outputs, the report, exit codes, and no
partial output or changed input when something is wrong."""

from __future__ import annotations

import hashlib
import json

import onnx
import pytest
import typer
from conftest import tiny_mlp
from typer.testing import CliRunner

from onnxshrink.cli.pack import pack_command, unpack_command

app = typer.Typer()
app.command("pack")(pack_command)
app.command("unpack")(unpack_command)
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(tiny_mlp(hidden=64), path)
    return path


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pack_prints_a_table_writes_json_and_unpack_restores(model_path, tmp_path):
    before = digest(model_path)
    packed, report, out = tmp_path / "m.onnxz", tmp_path / "r.json", tmp_path / "back.onnx"
    result = invoke("pack", model_path, "-o", packed, "--json", report)
    assert result.exit_code == 0, result.output
    assert "w1" in result.output and "entropy" in result.output
    assert digest(model_path) == before
    data = json.loads(report.read_text())
    row = next(t for t in data["tensors"] if t["name"] == "w1")
    assert row["codec"] in ("deflate", "huffman") and row["codec"] in result.output
    assert {"codec", "bytes_before", "bytes_after", "bits_per_element", "entropy_bytes", "dtype", "shape"} <= set(row)
    assert data["totals"]["container_bytes"] == packed.stat().st_size
    result = invoke("unpack", packed, "-o", out)
    assert result.exit_code == 0, result.output
    a, b = onnx.load(model_path), onnx.load(out)
    assert [t.SerializeToString() for t in a.graph.initializer] == [
        onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t), t.name).SerializeToString()
        for t in b.graph.initializer]


def test_quiet_prints_nothing(model_path, tmp_path):
    result = invoke("pack", model_path, "-o", tmp_path / "m.onnxz", "--quiet")
    assert result.exit_code == 0 and result.output == ""
    result = invoke("unpack", tmp_path / "m.onnxz", "-o", tmp_path / "m.onnx", "-q")
    assert result.exit_code == 0 and result.output == ""


def test_corrupt_container_exits_2_with_one_line_and_no_output(model_path, tmp_path):
    packed = tmp_path / "m.onnxz"
    assert invoke("pack", model_path, "-o", packed).exit_code == 0
    blob = bytearray(packed.read_bytes())
    blob[len(blob) // 2] ^= 0x10
    bad = tmp_path / "bad.onnxz"
    bad.write_bytes(bytes(blob))
    out = tmp_path / "out.onnx"
    result = invoke("unpack", bad, "-o", out)
    assert result.exit_code == 2
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnxz", "m.onnxz", "mlp.onnx"]


@pytest.mark.parametrize("command", ["pack", "unpack"])
def test_missing_or_wrong_input_exits_2(command, tmp_path):
    result = invoke(command, tmp_path / "nope", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "no such file" in result.output
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00" * 100)
    result = invoke(command, junk, "-o", tmp_path / "out")
    assert result.exit_code == 2 and not (tmp_path / "out").exists()


def test_output_onto_the_input_is_refused(model_path):
    before = digest(model_path)
    result = invoke("pack", model_path, "-o", model_path)
    assert result.exit_code == 2 and "overwrite the input" in result.output
    assert digest(model_path) == before
