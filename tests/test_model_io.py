"""Model I/O: bad files refused with one line, external data both ways, every weight reachable."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ONNX_TEST_DATA, run_cli, tiny_mlp
from onnxshrink.errors import ModelLoadError
from onnxshrink.model import iter_weights, load_model, save_model
from onnxshrink.simplify import simplify


def _one_line_exit_2(result):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("content", [b"", os.urandom(4096), b"not a model at all\n"])
def test_garbage_files_are_refused(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError):
        load_model(path)
    line = _one_line_exit_2(run_cli("inspect", path))
    assert "bad.onnx" in line


def test_truncated_model_is_refused(tmp_path):
    blob = tiny_mlp().SerializeToString()
    for cut in (len(blob) // 3, len(blob) // 2, len(blob) - 7):
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(blob[:cut])
        with pytest.raises(ModelLoadError):
            load_model(path)


def test_missing_file_and_folder(tmp_path):
    assert "no such file" in _one_line_exit_2(run_cli("inspect", tmp_path / "nope.onnx"))
    with pytest.raises(ModelLoadError, match="not a regular file"):
        load_model(tmp_path)


def test_external_data_round_trip_is_bit_exact(tmp_path):
    model = tiny_mlp()
    # Make the weights big enough to go external.
    big = np.random.default_rng(0).normal(size=(512, 8)).astype(np.float32)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(big, "w1"))
    model.graph.node[0].attribute[0].i = 1
    before = model.SerializeToString()
    out = tmp_path / "out" / "m.onnx"
    save_model(model, out, external_data_file=True)
    assert model.SerializeToString() == before, "save_model changed the caller's model"
    assert (out.parent / "m.onnx.data").exists()
    assert out.stat().st_size < big.nbytes
    loaded = load_model(out)
    for a, b in zip(model.graph.initializer, loaded.graph.initializer):
        assert numpy_helper.to_array(a).tobytes() == numpy_helper.to_array(b).tobytes()
    assert not any(t.data_location == TensorProto.EXTERNAL for t in loaded.graph.initializer)


def test_save_is_deterministic_and_atomic(tmp_path):
    model = tiny_mlp()
    save_model(model, tmp_path / "a.onnx")
    save_model(model, tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx"], "temp files left behind"


def _model_with_everything() -> onnx.ModelProto:
    """Weights as initializers (shared), Constant nodes, If-branch initializers, several dtypes."""
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.normal(size=(4, 4)).astype(np.float32), "w")
    half = numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float16), "half")
    then_w = numpy_helper.from_array(rng.normal(size=(4, 4)).astype(np.float32), "then_w")
    then = helper.make_graph([helper.make_node("MatMul", ["a", "then_w"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])], [then_w])
    const = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.full((4, 4), 0.5, np.float32)))
    els = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["e"])], "else", [],
                            [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4])])
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a0"]),
        const,
        helper.make_node("MatMul", ["a0", "c"], ["a1"]),
        helper.make_node("Cast", ["half"], ["hf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["a1", "hf"], ["a"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=els),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                                           helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w, half])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_iter_weights_reaches_every_tensor_once():
    model = _model_with_everything()
    refs = list(iter_weights(model))
    names = [r.name for r in refs]
    assert sorted(names) == ["c", "half", "then_w", "w"]
    kinds = {r.name: (r.kind, r.depth) for r in refs}
    assert kinds["c"] == ("constant", 0) and kinds["then_w"] == ("initializer", 1)
    assert {r.name: r.array().dtype for r in refs}["half"] == np.float16
    # Editing through a WeightRef edits the model, and the model still runs.
    for r in refs:
        if r.name == "then_w":
            r.set_array(np.zeros((4, 4), np.float32))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": np.ones((1, 4), np.float32), "cond": np.array(True)})[0]
    assert np.all(y == 0)


@pytest.mark.parametrize("path", sorted((ONNX_TEST_DATA / "light").glob("*.onnx"))[:3], ids=lambda p: p.stem)
def test_simplify_turns_computed_weights_into_initializers(path):
    model = load_model(path)
    assert any(n.op_type == "ConstantOfShape" for n in model.graph.node)
    result = simplify(model)
    assert result.modified and result.fallback_reason is None
    assert not any(n.op_type == "ConstantOfShape" for n in result.model.graph.node)
    assert any(r.size > 1000 for r in iter_weights(result.model))
    assert any(n.op_type == "ConstantOfShape" for n in model.graph.node), "simplify changed its input"


def test_simplify_keeps_exactly_the_input_metadata():
    """onnxsim adds kilobytes of provenance keys (onnxsim.removed_nodes, ...); the user's keys stay, those go."""
    model = tiny_mlp()
    onnx.helper.set_model_props(model, {"labels": "cat,dog", "author": "me"})
    result = simplify(model)
    assert result.modified
    assert [(p.key, p.value) for p in result.model.metadata_props] == [("labels", "cat,dog"), ("author", "me")]


def test_simplify_falls_back_cleanly(monkeypatch):
    import onnxsim

    def fail(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] cannot fold If subgraph")

    monkeypatch.setattr(onnxsim, "simplify", fail)
    model = tiny_mlp()
    result = simplify(model)
    assert not result.modified and result.fallback_reason
    assert result.model is model
