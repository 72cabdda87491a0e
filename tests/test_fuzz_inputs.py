"""Fuzzed model and data files: only our own errors escape, and nothing is left behind.

Mutated .onnx files (truncated, bit-flipped, protobuf fields mangled) go
through inspect, validate, pack and quantize in-process: each either works or
raises an OnnxShrinkError (the CLI turns those into one line and exit 2), and
a refused command leaves no output file. Bad data files are refused as
DataError. A few real subprocess runs check the exit codes and the one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import onnxshrink
from conftest import run_cli, save_data, tiny_mlp
from onnxshrink.errors import DataError, OnnxShrinkError
from onnxshrink.model import load_model, save_model
from onnxshrink.packing import pack_file
from onnxshrink.quantization import QuantizeOptions, quantize_model

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def branchy_model(seed: int = 0) -> onnx.ModelProto:
    """x[batch,8] -> MatMul -> If(sum > 0: Mul by a Constant, else: Add an
    initializer of the subgraph) -> y: initializers, a Constant node and a
    subgraph, so mutations can reach all three."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "w")
    then_graph = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.full(4, 2.0, np.float32), "kv")),
         helper.make_node("Mul", ["h", "k"], ["t_out"])],
        "then", [], [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, ["batch", 4])])
    else_graph = helper.make_graph(
        [helper.make_node("Add", ["h", "b"], ["e_out"])], "else", [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b")])
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("ReduceSum", ["h"], ["s"], keepdims=0, name="sum"),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph, name="if"),
    ]
    graph = helper.make_graph(
        nodes, "branchy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [w, numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    onnx.checker.check_model(model)
    return model


SEEDS = {"mlp": tiny_mlp(), "branchy": branchy_model()}


def _all_tensors(model: onnx.ModelProto) -> list[TensorProto]:
    from onnxshrink.model import all_tensors

    return [t for t, _ in all_tensors(model)]


def _nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    from onnxshrink.model import iter_graphs

    return [n for g, _ in iter_graphs(model.graph) for n in g.node]


# Each mangling takes a model copy, a random generator, and changes one thing.
def _huge_dim(m, r):
    t = r.choice(_all_tensors(m))
    if t.dims:
        t.dims[int(r.integers(len(t.dims)))] = int(r.choice([2**31, 2**40, 2**62, 2**63 - 1]))
    else:
        t.dims.append(2**40)


def _negative_dim(m, r):
    t = r.choice(_all_tensors(m))
    if t.dims:
        t.dims[int(r.integers(len(t.dims)))] = int(r.choice([-1, -7, -(2**62)]))
    else:
        t.dims.append(-3)


def _short_raw_data(m, r):
    t = r.choice(_all_tensors(m))
    arr = numpy_helper.to_array(t)
    t.CopyFrom(numpy_helper.from_array(arr, t.name))
    t.raw_data = t.raw_data[: int(r.integers(0, max(len(t.raw_data), 1)))]


def _data_type(m, r):
    r.choice(_all_tensors(m)).data_type = int(r.choice([0, 8, 17, 23, 40, 99, 2**20]))


def _missing_input(m, r):
    node = r.choice(_nodes(m))
    if node.input:
        node.input[int(r.integers(len(node.input)))] = "no_such_value"
    else:
        node.input.append("no_such_value")


def _op_type(m, r):
    r.choice(_nodes(m)).op_type = str(r.choice(["NoSuchOp", "", "Conv", "If", "Constant"]))


def _attribute(m, r):
    nodes = [n for n in _nodes(m) if n.attribute]
    if nodes:
        a = r.choice(nodes).attribute[0]
        a.type = int(r.choice([0, 1, 2, 3, 5, 11]))


def _drop_output(m, r):
    del m.graph.output[:]


def _value_info(m, r):
    vi = m.graph.input[0]
    choice = int(r.integers(3))
    if choice == 0:
        vi.type.tensor_type.elem_type = int(r.choice([0, 8, 99]))
    elif choice == 1:
        vi.type.tensor_type.shape.dim[0].dim_value = -5
    else:
        vi.type.tensor_type.shape.dim.add().dim_value = 2**40


def _opset(m, r):
    m.opset_import[0].version = int(r.choice([0, 1, 5, 999]))


def _duplicate_initializer(m, r):
    g = m.graph
    g.initializer.add().CopyFrom(g.initializer[0])
    g.initializer[-1].CopyFrom(numpy_helper.from_array(np.zeros(3, np.float32), g.initializer[0].name))


def _subgraph(m, r):
    for node in _nodes(m):
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                a.g.ClearField("output") if r.random() < 0.5 else a.ClearField("g")
                return
    _missing_input(m, r)


MANGLERS: dict[str, Callable] = {f.__name__.lstrip("_"): f for f in (
    _huge_dim, _negative_dim, _short_raw_data, _data_type, _missing_input, _op_type, _attribute, _drop_output,
    _value_info, _opset, _duplicate_initializer, _subgraph)}


def mangled(seed_name: str, mangler: str, seed: int) -> bytes:
    model = onnx.ModelProto()
    model.CopyFrom(SEEDS[seed_name])
    MANGLERS[mangler](model, np.random.default_rng(seed))
    return model.SerializeToString()


def _calib(folder: Path) -> Path:
    return save_data(folder / "calib.npz", n=16, labels=False)


def _outputs_left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.startswith("out"))


def exercise(path: Path, folder: Path, operations: tuple[str, ...] = ("inspect", "validate", "pack", "quantize")) -> None:
    """Run each operation the way its command does; only OnnxShrinkError may escape
    (each is caught here), and a refused operation leaves no output."""
    calib = _calib(folder)
    for op in operations:
        out = folder / f"out_{op}.onnx"
        try:
            if op == "inspect":
                onnxshrink.inspect(path)
            elif op == "validate":
                onnxshrink.validate(path, path, measure_latency=False, synthetic_samples=2)
            elif op == "pack":
                pack_file(path, out)
            elif op == "quantize":
                result = quantize_model(load_model(path), str(calib), QuantizeOptions(latency_guard=False))
                save_model(result.model, out)
        except OnnxShrinkError as e:
            assert "\n" not in str(e) and str(e), f"{op}: not one line: {e!r}"
            assert not out.exists(), f"{op} refused ({e}) but left {out.name}"
        if out.exists():
            out.unlink()
        assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")], f"{op} left a temp file"


@pytest.mark.parametrize("mangler", sorted(MANGLERS))
@pytest.mark.parametrize("seed_name", sorted(SEEDS))
@FUZZ
@given(seed=st.integers(0, 2**16))
def test_mangled_fields_are_refused_or_handled(tmp_path_factory, seed_name, mangler, seed):
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "model.onnx"
    path.write_bytes(mangled(seed_name, mangler, seed))
    exercise(path, folder)


@FUZZ
@given(data=st.data())
def test_truncated_files_are_refused(tmp_path_factory, data):
    blob = SEEDS[data.draw(st.sampled_from(sorted(SEEDS)))].SerializeToString()
    cut = data.draw(st.integers(0, len(blob) - 1))
    folder = tmp_path_factory.mktemp("trunc")
    path = folder / "model.onnx"
    path.write_bytes(blob[:cut])
    exercise(path, folder, ("inspect", "pack", "quantize"))


@FUZZ
@given(data=st.data())
def test_bit_flips_are_refused_or_handled(tmp_path_factory, data):
    blob = bytearray(SEEDS[data.draw(st.sampled_from(sorted(SEEDS)))].SerializeToString())
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(blob) - 1), st.integers(0, 7)), min_size=1, max_size=6))
    for pos, bit in flips:
        blob[pos] ^= 1 << bit
    folder = tmp_path_factory.mktemp("flip")
    path = folder / "model.onnx"
    path.write_bytes(bytes(blob))
    exercise(path, folder)


# ---------------------------------------------------------------- data files

def _bad_data(kind: str, folder: Path) -> Path:
    path = folder / "data.npz"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 8)).astype(np.float32)
    if kind == "float64":
        np.savez(path, x=x.astype(np.float64))
    elif kind == "int":
        np.savez(path, x=x.astype(np.int32))
    elif kind == "wrong_features":
        np.savez(path, x=x[:, :5])
    elif kind == "wrong_rank":
        np.savez(path, x=x.reshape(6, 2, 4))
    elif kind == "scalar":
        np.savez(path, x=np.float32(1.0))
    elif kind == "nan":
        x[3, 2] = np.nan
        np.savez(path, x=x)
    elif kind == "inf":
        x[0, 0] = -np.inf
        np.savez(path, x=x)
    elif kind == "empty":
        np.savez(path, x=x[:0])
    elif kind == "missing_input":
        np.savez(path, other=x)
    elif kind == "no_arrays":
        np.savez(path)
    elif kind == "not_zip":
        path.write_bytes(b"this is not an npz file\n" * 10)
    elif kind == "empty_file":
        path.write_bytes(b"")
    elif kind == "truncated_zip":
        np.savez(path, x=x)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "pickled_object":
        np.savez(path, x=np.array([{"a": 1}, None, "x"], dtype=object))
    elif kind == "ragged_samples":
        np.savez(path, x=x, labels=np.arange(4))
    elif kind == "float_labels":
        np.savez(path, x=x, labels=np.zeros(6, np.float32))
    elif kind == "directory_empty":
        path = folder / "empty_dir"
        path.mkdir()
    elif kind == "no_such_file":
        path = folder / "missing.npz"
    else:
        raise AssertionError(kind)
    return path


DATA_KINDS = ["float64", "int", "wrong_features", "wrong_rank", "scalar", "nan", "inf", "empty", "missing_input",
              "no_arrays", "not_zip", "empty_file", "truncated_zip", "pickled_object", "ragged_samples",
              "float_labels", "directory_empty", "no_such_file"]


@pytest.mark.parametrize("kind", DATA_KINDS)
def test_bad_data_is_a_data_error(tmp_path, mlp_path, kind):
    data = _bad_data(kind, tmp_path)
    with pytest.raises(DataError) as raised:
        onnxshrink.validate(mlp_path, mlp_path, data, measure_latency=False)
    assert "\n" not in str(raised.value)
    with pytest.raises(DataError):
        quantize_model(load_model(mlp_path), str(data), QuantizeOptions(latency_guard=False))


@pytest.mark.parametrize("kind", ["nan", "pickled_object", "not_zip", "wrong_features", "missing_input", "empty"])
def test_bad_data_cli_exits_2_with_one_line_and_writes_nothing(tmp_path, mlp_path, kind):
    data = _bad_data(kind, tmp_path)
    report = tmp_path / "report.json"
    p = run_cli("validate", mlp_path, mlp_path, "--data", data, "--json", report, "--no-latency")
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr + p.stdout
    assert not report.exists()
    if kind == "pickled_object":  # names the array as file:array, not as the ':x:' emoji
        assert "data.npz:x:" in p.stderr


# ---------------------------------------------------------------- real command lines

@pytest.mark.parametrize("mutation", ["truncated", "huge_dim", "short_raw_data", "missing_input", "data_type"])
def test_mutated_model_cli_exits_0_or_2_with_one_line(tmp_path, mutation):
    path = tmp_path / "model.onnx"
    if mutation == "truncated":
        blob = SEEDS["branchy"].SerializeToString()
        path.write_bytes(blob[: len(blob) // 2])
    else:
        path.write_bytes(mangled("branchy", mutation, 1))
    for args, out in ((("inspect", path), None), (("validate", path, path, "--no-latency"), None),
                      (("pack", path, "-o", tmp_path / "out.onnxz"), tmp_path / "out.onnxz")):
        p = run_cli(*args)
        assert p.returncode in (0, 2), (args[0], p.returncode, p.stderr)
        assert "Traceback" not in p.stderr + p.stdout
        if p.returncode == 2:
            assert len(p.stderr.strip().splitlines()) == 1, p.stderr
            assert out is None or not out.exists()
    assert not list(tmp_path.glob(".*.tmp"))
