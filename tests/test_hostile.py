"""Hostile external-data references (issue 10): refused on read and on write, with one line and exit 2."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_cli
from onnxshrink.errors import UnsafeModelError
from onnxshrink.model import load_model, save_model

SECRET = np.arange(64, dtype=np.float32).tobytes()


def _model(folder: Path, location: str, extra: dict | None = None, size: int = 64) -> Path:
    """A model whose one weight lives in external data at ``location``."""
    folder.mkdir(parents=True, exist_ok=True)
    t = numpy_helper.from_array(np.zeros(size, np.float32), "w")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    kv = {"location": location, "offset": "0", "length": str(size * 4), **(extra or {})}
    for k, v in kv.items():
        e = t.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size])], [t])
    path = folder / "m.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.bin"
    path.write_bytes(SECRET)
    return path


def _cases(tmp_path: Path, secret: Path) -> dict[str, tuple[Path, str]]:
    """name -> (model path, a word the error must contain)."""
    cases = {}
    cases["dotdot"] = (_model(tmp_path / "a", os.path.relpath(secret, tmp_path / "a")), "outside")
    cases["nested"] = (_model(tmp_path / "b", "sub/../" + os.path.relpath(secret, tmp_path / "b")), "outside")
    cases["absolute"] = (_model(tmp_path / "c", str(secret)), "absolute")
    p = _model(tmp_path / "d", "link.bin")
    os.symlink(secret, p.parent / "link.bin")
    cases["symlink"] = (p, "outside")
    p = _model(tmp_path / "e", "w.bin", {"length": str(10**13)})
    (p.parent / "w.bin").write_bytes(bytes(256))
    cases["absurd_length"] = (p, "beyond")
    p = _model(tmp_path / "e2", "w.bin", {"offset": str(2**62)})
    (p.parent / "w.bin").write_bytes(bytes(256))
    cases["absurd_offset"] = (p, "beyond")
    p = _model(tmp_path / "e3", "w.bin", {"offset": "-4"})
    (p.parent / "w.bin").write_bytes(bytes(256))
    cases["negative_offset"] = (p, "offset")
    p = _model(tmp_path / "f", "w.bin", {"__class__": "x"})
    (p.parent / "w.bin").write_bytes(bytes(256))
    cases["unknown_key"] = (p, "unknown external-data key")
    return cases


CASES = ["dotdot", "nested", "absolute", "symlink", "absurd_length", "absurd_offset", "negative_offset", "unknown_key"]


@pytest.mark.parametrize("case", CASES)
def test_hostile_reference_refused_by_library(tmp_path, secret, case):
    path, word = _cases(tmp_path, secret)[case]
    with pytest.raises(UnsafeModelError, match=word) as info:
        load_model(path)
    assert "'w'" in str(info.value), "the error names the tensor"


COMMAND_ARGS = {
    "inspect": lambda path, out: ["--json", out / "r.json"],
    "validate": lambda path, out: [path, "--json", out / "r.json"],
    "pack": lambda path, out: ["-o", out / "m.onnxz", "--json", out / "r.json"],
    "quantize": lambda path, out: ["-o", out / "q.onnx", "--dynamic"],
    "prune": lambda path, out: ["-o", out / "p.onnx", "--sparsity", "0.5"],
}


@pytest.mark.parametrize("command", sorted(COMMAND_ARGS))
@pytest.mark.parametrize("case", CASES)
def test_hostile_reference_refused_by_cli(tmp_path, secret, case, command):
    path, word = _cases(tmp_path, secret)[case]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    args = [command, path, *COMMAND_ARGS[command](path, tmp_path)]
    result = run_cli(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and word in lines[0] and "Traceback" not in result.stdout
    assert str(np.arange(64, dtype=np.float32)[5]) not in result.stdout  # the secret's values are not shown
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before, "something was written"
    assert secret.read_bytes() == SECRET


def test_hostile_location_is_never_written(tmp_path):
    """CVE-2025-51480: saving a model whose tensor carries a hostile location."""
    target = tmp_path / "victim.bin"
    target.write_bytes(b"keep me")
    path = _model(tmp_path / "m", "../victim.bin")
    model = onnx.load(str(path), load_external_data=False)  # what a careless caller might hand us
    out = tmp_path / "out" / "saved.onnx"
    with pytest.raises(UnsafeModelError, match="external data"):
        save_model(model, out)
    assert target.read_bytes() == b"keep me"
    assert not out.exists() and not (out.parent.exists() and list(out.parent.iterdir()))


def test_subfolder_external_data_is_not_a_false_refusal(tmp_path):
    path = _model(tmp_path / "good", "sub/w.bin")
    (path.parent / "sub").mkdir()
    (path.parent / "sub" / "w.bin").write_bytes(np.ones(64, np.float32).tobytes())
    result = run_cli("inspect", path)
    assert result.returncode == 0, result.stderr
    model = load_model(path)
    out = tmp_path / "elsewhere" / "copy.onnx"
    save_model(model, out, external_data_file=True)
    # Our own name next to the output, never the input's 'sub/w.bin'.
    assert sorted(p.name for p in out.parent.iterdir()) == ["copy.onnx", "copy.onnx.data"]
    again = load_model(out)
    assert numpy_helper.to_array(again.graph.initializer[0]).tolist() == [1.0] * 64


def test_missing_external_file_is_refused(tmp_path):
    path = _model(tmp_path / "g", "absent.bin")
    result = run_cli("inspect", path)
    assert result.returncode == 2 and "not found" in result.stderr
