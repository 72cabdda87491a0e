"""remove_unused: dead nodes, Constants and initializers go, in every graph; what
anything reads (outer-scope reads from If branches included) stays."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxshrink.cleanup import drop_inferred_value_info, growth_warning, remove_unused


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))


def _branch(name: str, body: list[onnx.NodeProto], out: str, inits=()) -> onnx.GraphProto:
    return helper.make_graph(body, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], list(inits))


def test_dead_constants_and_chains_go_live_ones_stay():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    nodes = [
        _const("w", w),
        _const("old_w", w * 2),  # a replaced float weight, as quantization leaves it
        helper.make_node("Relu", ["old_w"], ["old_relu"]),  # and a dead chain behind it
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]),
                                           helper.make_tensor_value_info("unused_input", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                              [numpy_helper.from_array(w, "dead_init"), numpy_helper.from_array(w, "kept_output")],
                              value_info=[helper.make_tensor_value_info("old_relu", TensorProto.FLOAT, [4, 3])])
    graph.output.append(helper.make_tensor_value_info("kept_output", TensorProto.FLOAT, [4, 3]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.normal(size=(2, 4)).astype(np.float32)
    feed = {"x": x, "unused_input": np.zeros(1, np.float32)}
    before = _run(model, feed)

    result = remove_unused(model)

    assert result.modified and result.nodes_removed == 2 and result.initializers_removed == 1
    assert [n.op_type for n in model.graph.node] == ["Constant", "MatMul"]
    assert [t.name for t in model.graph.initializer] == ["kept_output"]  # a graph output is read
    assert [i.name for i in model.graph.input] == ["x", "unused_input"]  # the interface stays
    assert not model.graph.value_info
    onnx.checker.check_model(model)
    after = _run(model, feed)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert not remove_unused(model).modified  # nothing more to find


def test_outer_scope_reads_from_if_branches_keep_their_producers():
    w = np.arange(3, dtype=np.float32)
    then_branch = _branch("then", [helper.make_node("Add", ["x", "outer_w"], ["t"]),
                                   _const("dead_in_branch", w)], "t")
    else_branch = _branch("else", [helper.make_node("Mul", ["x", "outer_c"], ["e"])], "e")
    nodes = [
        _const("outer_c", w + 1),  # read only inside a branch
        _const("outer_dead", w),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
                                           helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
                              [numpy_helper.from_array(w * 3, "outer_w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.ones(3, np.float32)
    before = [_run(model, {"x": x, "cond": np.array(c)}) for c in (True, False)]

    result = remove_unused(model)

    assert result.nodes_removed == 2  # outer_dead, and the dead Constant inside the then branch
    assert [n.output[0] for n in model.graph.node] == ["outer_c", "y"]
    assert [t.name for t in model.graph.initializer] == ["outer_w"]
    branch = next(a.g for a in model.graph.node[1].attribute if a.name == "then_branch")
    assert [n.op_type for n in branch.node] == ["Add"]
    after = [_run(model, {"x": x, "cond": np.array(c)}) for c in (True, False)]
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(before, after))


def test_an_inner_name_shadowing_an_outer_one_does_not_keep_the_outer():
    w = np.ones(3, np.float32)
    inner = _branch("then", [helper.make_node("Add", ["x", "w"], ["t"])], "t",
                    inits=[numpy_helper.from_array(w * 5, "w")])  # its own 'w'
    other = _branch("else", [helper.make_node("Neg", ["x"], ["e"])], "e")
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=inner, else_branch=other)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    remove_unused(model)
    assert not model.graph.initializer
    then = next(a.g for a in model.graph.node[0].attribute if a.name == "then_branch")
    assert [t.name for t in then.initializer] == ["w"]


def test_nodes_of_unknown_domains_are_kept():
    graph = helper.make_graph([helper.make_node("Log", ["x"], ["side"], domain="my.ops"),
                               helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.ops", 1)])
    assert not remove_unused(model).modified
    assert len(model.graph.node) == 2


def test_growth_warning_only_when_larger():
    assert growth_warning(100, 100) is None and growth_warning(100, 60) is None
    assert "1.27x" in growth_warning(100, 127, "the int8 model")


def test_value_info_the_original_lacked_is_dropped():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Neg", ["h"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    original = helper.make_model(graph)
    inferred = onnx.shape_inference.infer_shapes(original)
    assert [vi.name for vi in inferred.graph.value_info] == ["h"]
    original.graph.value_info.append(helper.make_tensor_value_info("kept", TensorProto.FLOAT, [1]))
    inferred.graph.value_info.append(helper.make_tensor_value_info("kept", TensorProto.FLOAT, [1]))
    assert drop_inferred_value_info(inferred, original) == 1
    assert [vi.name for vi in inferred.graph.value_info] == ["kept"]
