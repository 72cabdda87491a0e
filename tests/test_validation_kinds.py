"""Outputs are compared as what they are (class scores, sequences, probabilities,
embeddings, exact values, dense maps), and stateful models in the closed loop they run in."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxshrink.validation import Gate, compare_models
from onnxshrink.validation import kinds
from onnxshrink.validation.stateful import parse_state, state_pairs
from onnxshrink.errors import UsageError

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def sequence_model(w: np.ndarray, time_major: bool = False) -> onnx.ModelProto:
    """x [N, T, F] -> MatMul -> Softmax over classes -> y [N, T, C] (or [T, N, C])."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["p" if time_major else "y"], axis=-1)]
    if time_major:
        nodes.append(helper.make_node("Transpose", ["p"], ["y"], perm=[1, 0, 2]))
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "t", w.shape[0]])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b", w.shape[1]])], {"w": w})


def _decoded(seq: np.ndarray, blank: int) -> tuple:
    merged = [int(c) for i, c in enumerate(seq) if i == 0 or c != seq[i - 1]]
    return tuple(c for c in merged if c != blank)


@pytest.mark.parametrize("time_major", [False, True])
def test_sequence_scores_are_compared_per_position_and_as_decoded_sequences(tmp_path, time_major):
    # A CTC-like output: class 0 (the blank) wins most positions.
    w = RNG.normal(size=(6, 5)).astype(np.float32)
    w[:, 0] += 2.5
    x = RNG.normal(size=(40, 12, 6)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    bad = w + RNG.normal(0, 0.15, w.shape).astype(np.float32)
    report = compare_models(sequence_model(w, time_major), sequence_model(bad, time_major), tmp_path / "d.npz",
                            measure_latency=False)
    m = report.outputs["y"]
    a = _run(sequence_model(w), {"x": x})[0].argmax(-1)  # [N, T] whatever the output layout
    b = _run(sequence_model(bad), {"x": x})[0].argmax(-1)
    assert m["kind"] == kinds.SEQUENCE_SCORES
    assert m["position_agreement"] == pytest.approx((a == b).mean()) and m["top1_agreement"] == m["position_agreement"]
    blank = int(np.bincount(a.ravel()).argmax())
    same = np.mean([_decoded(r, blank) == _decoded(c, blank) for r, c in zip(a, b)])
    assert m["agreement"] == pytest.approx(same)
    assert 0 < same < (a == b).mean() < 1  # a sequence is wrong when any of its symbols is


def test_probabilities_compare_decisions_as_intersection_over_union(tmp_path):
    w = RNG.normal(size=(8, 1)).astype(np.float32)

    def prob_model(weights):
        return _model([helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Sigmoid", ["z"], ["p"])],
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                      [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 1])], {"w": weights})

    x = RNG.normal(size=(300, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    bad = w + RNG.normal(0, 0.5, w.shape).astype(np.float32)
    m = compare_models(prob_model(w), prob_model(bad), tmp_path / "d.npz", measure_latency=False).outputs["p"]
    a, b = _run(prob_model(w), {"x": x})[0] > 0.5, _run(prob_model(bad), {"x": x})[0] > 0.5
    assert m["kind"] == kinds.PROBABILITIES and m["top1_agreement"] is None
    assert m["agreement"] == pytest.approx((a & b).sum() / (a | b).sum())
    assert m["decision_agreement"] == pytest.approx((a == b).mean())
    assert m["min_sample_cosine"] == 1.0  # what a one-value output's cosine says: nothing


def embedding_model(w: np.ndarray) -> onnx.ModelProto:
    """x [N, T, F], attention_mask [N, T] -> LayerNormalization(x @ w) * mask -> last_hidden_state [N, T, D]."""
    d = w.shape[1]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["n"], axis=-1),
             helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "axis"], ["m3"]),
             helper.make_node("Mul", ["n", "m3"], ["last_hidden_state"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "t", w.shape[0]]),
                          helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["n", "t"])],
                  [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["n", "t", d])],
                  {"w": w, "gamma": np.ones(d, np.float32), "beta": np.zeros(d, np.float32),
                   "axis": np.array([2], np.int64)})


def test_embeddings_compare_nearest_neighbours_not_top1(tmp_path):
    w = RNG.normal(size=(6, 16)).astype(np.float32)
    x = RNG.normal(size=(30, 7, 6)).astype(np.float32)
    mask = (np.arange(7)[None, :] < RNG.integers(2, 8, size=(30, 1))).astype(np.int64)
    np.savez(tmp_path / "d.npz", x=x, attention_mask=mask)
    same = compare_models(embedding_model(w), embedding_model(w), tmp_path / "d.npz", measure_latency=False)
    m = same.outputs["last_hidden_state"]
    assert m["kind"] == kinds.EMBEDDING and m["top1_agreement"] is None and m["agreement"] == 1.0
    bad = embedding_model(w + RNG.normal(0, 1.0, w.shape).astype(np.float32))
    m = compare_models(embedding_model(w), bad, tmp_path / "d.npz", measure_latency=False).outputs["last_hidden_state"]

    def pooled(model):
        h = _run(model, {"x": x, "attention_mask": mask})[0]
        v = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        s = v @ v.T
        np.fill_diagonal(s, -np.inf)
        return s

    ref, cand = pooled(embedding_model(w)), pooled(bad)
    nn_ref, nn_cand = ref.argmax(1), cand.argmax(1)
    assert m["nearest_neighbour_unchanged"] == pytest.approx((nn_ref == nn_cand).mean())
    rows = np.arange(len(ref))
    assert m["agreement"] == pytest.approx((ref[rows, nn_cand] >= ref[rows, nn_ref] - 0.01).mean())
    assert m["agreement"] < 1.0


def test_integer_outputs_match_exactly_and_dense_maps_have_no_answer(tmp_path):
    x = RNG.normal(size=(20, 2, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)

    def conv_model(w):
        return _model([helper.make_node("Conv", ["x", "w"], ["fmap"], pads=[1, 1, 1, 1]),
                       helper.make_node("ArgMax", ["fmap"], ["idx"], axis=1, keepdims=0)],
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 6, 6])],
                      [helper.make_tensor_value_info("fmap", TensorProto.FLOAT, ["n", 3, 6, 6]),
                       helper.make_tensor_value_info("idx", TensorProto.INT64, ["n", 6, 6])], {"w": w})

    w = RNG.normal(size=(3, 2, 3, 3)).astype(np.float32)
    bad = w + RNG.normal(0, 0.3, w.shape).astype(np.float32)
    report = compare_models(conv_model(w), conv_model(bad), tmp_path / "d.npz", measure_latency=False,
                            gate=Gate(max_accuracy_drop=100.0))
    fmap, idx = report.outputs["fmap"], report.outputs["idx"]
    assert fmap["kind"] == kinds.DENSE and fmap["agreement"] is None and fmap["top1_agreement"] is None
    a, b = _run(conv_model(w), {"x": x})[1], _run(conv_model(bad), {"x": x})[1]
    assert idx["kind"] == kinds.EXACT and idx["agreement"] == pytest.approx((a == b).mean())
    # Without labels a dense map's answers are its samples' cosine: the lowest one is what changed.
    assert report.answers_changed["points"] == pytest.approx(
        max(100 * (1 - idx["agreement"]), 100 * (1 - fmap["min_sample_cosine"])))


@pytest.mark.parametrize("shape, name, producer, kind", [
    ((4, 10), "logits", "Gemm", kinds.CLASS_SCORES),
    ((64, 40, 6625), "softmax_11.tmp_0", "Softmax", kinds.SEQUENCE_SCORES),  # rapidocr's CTC recogniser
    ((24, 1, 8210), "387", "Reshape", kinds.SEQUENCE_SCORES),  # ddddocr: logits, [T, N, C], declared [1, seqlen]
    ((2, 48, 384), "last_hidden_state", "LayerNormalization", kinds.EMBEDDING),
    ((2, 384), "sentence_embedding", "Div", kinds.EMBEDDING),
    ((1, 1), "output", "Identity", kinds.PROBABILITIES),  # silero-vad's speech probability
    ((2, 22, 2100), "output0", "Concat", kinds.DENSE),  # a YOLO head: boxes and scores together
])
def test_kind_from_values_name_and_producer(shape, name, producer, kind):
    rng = np.random.default_rng(3)
    if kind == kinds.PROBABILITIES:
        values = rng.uniform(size=shape)
    elif producer == "Softmax":
        e = np.exp(rng.normal(size=shape))
        values = e / e.sum(-1, keepdims=True)
    elif kind == kinds.DENSE:
        values = rng.uniform(0, 300, size=shape)
    else:
        values = rng.normal(size=shape) * 3
    assert kinds.classify(values.astype(np.float32), name, producer) == kind
    assert kinds.classify(np.zeros(shape, np.int64), name, producer) == kinds.EXACT


def recurrent_model(decay: float, state_in: str = "state", state_out: str = "stateN") -> onnx.ModelProto:
    """A streaming detector: s' = decay * s + x; p = sigmoid(mean(s')); outputs p [1, 1] and s'."""
    d = 4
    nodes = [helper.make_node("Mul", [state_in, "decay"], ["kept"]),
             helper.make_node("Add", ["kept", "x"], [state_out]),
             helper.make_node("MatMul", [state_out, "v"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["p"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, d]),
                          helper.make_tensor_value_info(state_in, TensorProto.FLOAT, [1, d])],
                  [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 1]),
                   helper.make_tensor_value_info(state_out, TensorProto.FLOAT, [1, d])],
                  {"decay": np.array(decay, np.float32), "v": np.full((d, 1), 1.0 / d, np.float32)})


def recorded_steps(path, decay: float, state_name: str = "state", resets: bool = False):
    """Two recordings of blocks of +/- input, with the reference's own states recorded per step (per-run rows)."""
    rng = np.random.default_rng(5)
    xs, states, reset = [], [], []
    for recording in range(2):
        s = np.zeros((1, 4), np.float32)
        for t in range(150):
            x = ((1.0 if (t // 25) % 2 == 0 else -1.0) * 0.5 + rng.normal(0, 0.1, (1, 4))).astype(np.float32)
            xs.append(x)
            states.append(s)
            reset.append(t == 0)
            s = (decay * s + x).astype(np.float32)
    arrays = {"x": np.stack(xs), state_name: np.stack(states)}
    if resets:
        arrays["reset"] = np.array(reset, np.int64)
    np.savez(path, **arrays)
    return path


def test_a_stateful_model_is_validated_in_its_closed_loop(tmp_path):
    """One step from recorded states looks fine; in its closed loop (fed its own
    state, as it runs) the candidate's decisions lag the original's by most of each block."""
    reference, candidate = recurrent_model(0.8), recurrent_model(0.97)
    # Names that say nothing: one step per row, each from the state recorded in the data.
    quiet_ref, quiet_cand = recurrent_model(0.8, "carry", "carried"), recurrent_model(0.97, "carry", "carried")
    steps = recorded_steps(tmp_path / "steps.npz", 0.8, "carry")
    assert state_pairs(quiet_ref) == ()
    one_step = compare_models(quiet_ref, quiet_cand, steps, gate=Gate(min_cosine=0.99, max_accuracy_drop=5.0),
                              measure_latency=False)
    assert one_step.passed and not one_step.closed_loop and one_step.outputs["p"]["cosine"] > 0.99
    # Told which output feeds which input, the same data runs in a closed loop and the gate fails.
    looped = compare_models(quiet_ref, quiet_cand, steps, gate=Gate(max_accuracy_drop=5.0), measure_latency=False,
                            state=parse_state(["carried=carry"]))
    assert looped.closed_loop and looped.state == [["carried", "carry"]] and looped.passed is False
    assert looped.outputs["p"]["agreement"] < 0.7 and "carried" not in looped.outputs
    # Found by name (state -> stateN), with the recordings' starts marked by 'reset'.
    named = compare_models(reference, candidate, recorded_steps(tmp_path / "named.npz", 0.8, resets=True),
                           gate=Gate(max_accuracy_drop=5.0), measure_latency=False)
    assert named.closed_loop and named.state == [["stateN", "state"]] and named.passed is False
    # The reference against itself in the closed loop: identical.
    itself = compare_models(reference, reference, tmp_path / "named.npz", gate=Gate(max_accuracy_drop=0.0),
                            measure_latency=False)
    assert itself.passed and itself.outputs["p"]["agreement"] == 1.0 and itself.samples == 300


def test_closed_loop_matches_a_loop_written_by_hand(tmp_path):
    reference, candidate = recurrent_model(0.8), recurrent_model(0.9)
    data = recorded_steps(tmp_path / "d.npz", 0.8, resets=True)
    arrays = np.load(data)

    def loop(model):
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        out, s = [], None
        for x, recorded, reset in zip(arrays["x"], arrays["state"], arrays["reset"]):
            p, s = session.run(None, {"x": x, "state": recorded if reset or s is None else s})
            out.append(p[0, 0])
        return np.array(out) > 0.5

    a, b = loop(reference), loop(candidate)
    m = compare_models(reference, candidate, data, measure_latency=False).outputs["p"]
    assert m["agreement"] == pytest.approx((a & b).sum() / (a | b).sum())


def test_state_flags_are_checked(tmp_path):
    model = recurrent_model(0.8)
    with pytest.raises(UsageError, match="no output 'nope'"):
        state_pairs(model, parse_state(["nope=state"]))
    with pytest.raises(UsageError, match="expected OUT=IN"):
        parse_state(["stateN"])


def test_kept_reference_streams_data_it_cannot_keep(tmp_path):
    """Past its memory bound the reference is run again with each candidate, on data read
    again: the same figures as when everything is kept, in and out of a closed loop."""
    from onnxshrink.validation.reference import KeptReference

    w = RNG.normal(size=(6, 5)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=RNG.normal(size=(50, 12, 6)).astype(np.float32))
    steps = recorded_steps(tmp_path / "steps.npz", 0.8, resets=True)
    for reference, candidate, data in ((sequence_model(w), sequence_model(w * 1.3), tmp_path / "d.npz"),
                                       (recurrent_model(0.8), recurrent_model(0.9), steps)):
        kept = KeptReference(reference, data, batch_size=8)
        streamed = KeptReference(reference, data, batch_size=8, cache_bytes=1)
        assert kept.outputs is not None and streamed.outputs is None
        assert kept.measure(candidate).outputs == streamed.measure(candidate).outputs
        _same_figures(kept.measure(candidate).outputs, compare_models(reference, candidate, data,
                                                                      measure_latency=False).outputs)


def _same_figures(a: dict, b: dict) -> None:
    """Equal up to float summation order (a closed loop is summed in chunks by compare_models)."""
    assert a.keys() == b.keys()
    for name in a:
        for key, value in a[name].items():
            if isinstance(value, float):
                assert value == pytest.approx(b[name][key], rel=1e-9, abs=1e-12), (name, key)
            else:
                assert value == b[name][key], (name, key)


def _yolo_head(rng: np.random.Generator, boxes: list[tuple[float, float, float, float, int]], anchors: int = 400,
               classes: int = 3) -> np.ndarray:
    """A [1, 4 + classes, anchors] YOLO-style output: background anchors with low scores and
    small boxes, and the given (cx, cy, w, h, class) boxes on the first anchors at score 0.9."""
    out = np.zeros((1, 4 + classes, anchors), np.float32)
    out[0, :4] = rng.uniform(2, 300, size=(4, anchors))
    out[0, 4:] = rng.uniform(0, 0.1, size=(classes, anchors))
    for k, (cx, cy, w, h, c) in enumerate(boxes):
        out[0, :4, k] = (cx, cy, w, h)
        out[0, 4 + c, k] = 0.9
    return out


def test_a_detector_head_is_compared_by_its_detections():
    """A YOLO-style [N, 4 + C, A] output is a detector's: its agreement is the F1 of the
    detections its program would keep, where cosine hardly moves."""
    from onnxshrink.validation import kinds
    from onnxshrink.validation.metrics import OutputStats

    rng = np.random.default_rng(0)
    boxes = [(50, 50, 20, 20, 0), (150, 80, 40, 30, 1), (220, 200, 30, 60, 2)]
    ref = _yolo_head(rng, boxes)
    assert kinds.classify(ref, "output0") == kinds.DETECTIONS
    assert kinds.classify(np.moveaxis(ref, 1, 2).copy(), "output0") == kinds.DETECTIONS
    same = OutputStats()
    same.add(ref, ref.copy())
    assert same.result()["agreement"] == 1.0
    moved = ref.copy()
    moved[0, 0, 1] += 30  # one box slides off its place (IoU < 0.5), another changes class
    moved[0, 4 + 1, 2], moved[0, 4 + 0, 2] = 0.0, 0.9
    stats = OutputStats()
    stats.add(ref, moved)
    result = stats.result()
    assert result["kind"] == kinds.DETECTIONS and result["cosine"] > 0.99
    assert result["agreement"] == pytest.approx(2 * 1 / 6)
    # A feature map of the same rank is not a detector's output.
    assert kinds.classify(rng.uniform(-1, 1, size=(1, 16, 400)).astype(np.float32)) == kinds.DENSE


def test_class_probabilities_keep_their_confidence_side_logits_only_their_class():
    """Softmax class scores: an answer whose top-1 class stays but whose
    probability crosses 0.5 or 0.9 (where programs fall back or act) counts as
    changed; plain top-1 agreement is still reported beside it. Logits are
    compared by their top-1 class alone."""
    from onnxshrink.validation.metrics import OutputStats

    ref = np.array([[0.55, 0.30, 0.15], [0.92, 0.05, 0.03], [0.40, 0.35, 0.25], [0.70, 0.20, 0.10]])
    cand = np.array([[0.45, 0.30, 0.25],   # same class, below 0.5 now: changed
                     [0.88, 0.07, 0.05],   # same class, below 0.9 now: changed
                     [0.42, 0.33, 0.25],   # same class, same sides: kept
                     [0.20, 0.70, 0.10]])  # another class: changed
    stats = OutputStats()
    stats.add(ref, cand)
    result = stats.result()
    assert result["kind"] == kinds.CLASS_SCORES
    assert result["agreement"] == pytest.approx(1 / 4) and result["top1_agreement"] == pytest.approx(3 / 4)
    assert "0.5" in result["agreement_of"] and "0.9" in result["agreement_of"]
    logits = OutputStats()
    logits.add(np.log(ref) * 3 + 1, np.log(cand) * 3 + 1)  # not distributions: class only
    assert logits.result()["agreement"] == pytest.approx(3 / 4)
    assert logits.result()["agreement_of"] == kinds.AGREEMENT[kinds.CLASS_SCORES]


def test_detections_count_a_class_swap_that_only_class_agnostic_nms_shows():
    """Two boxes on the same place with different classes: NMS per class keeps both, NMS across
    classes (nudenet's) only the surer. When their scores swap order, a per-class program sees
    no change, an across-classes one reports the other class: the agreement is the worse."""
    from onnxshrink.validation.detections import batch_counts, layout_axis
    from onnxshrink.validation.metrics import OutputStats

    rng = np.random.default_rng(1)
    ref = _yolo_head(rng, [(100, 100, 40, 40, 0), (101, 100, 40, 40, 1), (250, 250, 30, 30, 2)])
    ref[0, 4 + 1, 1] = 0.85  # class 1 slightly less sure than class 0 on the same place
    cand = ref.copy()
    cand[0, 4 + 0, 0], cand[0, 4 + 1, 1] = 0.84, 0.86  # now class 1 is the surer
    axis = layout_axis(ref)
    found, in_ref, in_cand = batch_counts(ref, cand, axis)
    assert (found, in_ref, in_cand) == (1, 2, 2)  # across classes: the class-0 box became a class-1 box
    stats = OutputStats()
    stats.add(ref, cand)
    assert stats.result()["agreement"] == pytest.approx(0.5)
    same = OutputStats()
    same.add(ref, ref.copy())
    assert same.result()["agreement"] == 1.0


@pytest.mark.parametrize("shape,samples,axis", [((6, 5, 300), 6, 0), ((7, 4, 9), 4, 1), ((3, 70_000), 3, 0)])
def test_output_sums_are_those_of_the_whole_batch_in_float64(shape, samples, axis):
    """The running sums are taken one sample (and chunk) at a time: they equal the
    float64 formulas over the whole batch, whatever axis holds the samples, with an
    all-zero sample in both (cosine 1) and one zero in the candidate only (cosine 0)."""
    from onnxshrink.validation.metrics import OutputStats

    ref = RNG.standard_normal(shape).astype(np.float32)
    cand = (ref + 0.05 * RNG.standard_normal(shape)).astype(np.float32)
    index = [slice(None)] * len(shape)
    index[axis] = 0
    ref[tuple(index)] = cand[tuple(index)] = 0.0
    index[axis] = 1
    cand[tuple(index)] = 0.0
    stats = OutputStats("y")
    stats.add(ref, cand, samples)
    r = np.moveaxis(ref.astype(np.float64), axis, 0).reshape(samples, -1)
    c = np.moveaxis(cand.astype(np.float64), axis, 0).reshape(samples, -1)
    d = r - c
    assert stats.dot == pytest.approx((r * c).sum(), rel=1e-12)
    assert stats.ref_sq == pytest.approx((r * r).sum(), rel=1e-12)
    assert stats.cand_sq == pytest.approx((c * c).sum(), rel=1e-12)
    assert stats.err_sq == pytest.approx((d * d).sum(), rel=1e-12)
    assert stats.abs_sum == pytest.approx(np.abs(d).sum(), rel=1e-12)
    assert stats.max_abs == np.abs(d).max()
    assert stats.count == r.size and stats.samples == samples
    norms = np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1)
    cosines = np.where(norms > 0, (r * c).sum(axis=1) / np.where(norms > 0, norms, 1), 0.0)
    cosines[0] = 1.0  # both all zero
    assert stats.min_sample_cosine == pytest.approx(0.0) and cosines[1] == 0.0
    assert stats.sample_cosine_sum == pytest.approx(cosines.sum(), rel=1e-12)
