"""shrink: gates, determinism, recipes, reports — on a bundled model, through the real CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import MODELS, run_cli
from onnxshrink.errors import UsageError
from onnxshrink.recipes import builtin_recipes, load_recipe, parse_recipe
from onnxshrink.validation import AGREEMENT_BASIS

MLP = MODELS / "digits_mlp.onnx"
CALIB = MODELS / "digits_mlp.calib.npz"
EVAL = MODELS / "digits_mlp.eval.npz"


def _tensors(model: onnx.ModelProto) -> dict[str, bytes]:
    return {t.name: numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}


def test_shrink_is_deterministic_and_gated(tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"m{i}.onnxz"
        # Without latency and time budget, as the README promises, the output depends on data and options alone:
        # a loaded machine's timings could otherwise pass over a slower candidate in one run and not the other.
        result = run_cli("shrink", MLP, "-o", out, "--calib", CALIB, "--eval", EVAL, "--sparsity", "0.5",
                         "--max-accuracy-drop", "1.0", "--no-latency", "--time-budget", "0",
                         "--json", tmp_path / f"r{i}.json", "--report", tmp_path / f"r{i}.html")
        assert result.returncode == 0, result.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1], "same input and options must give byte-identical output"
    report = json.loads((tmp_path / "r0.json").read_text())
    assert report["passed"] and report["ratio"] > 4
    assert [s["name"] for s in report["stages"]] == ["original", "simplify", "prune", "quantize", "pack"]
    assert report["final"]["accuracy"]["reference"] - report["final"]["accuracy"]["candidate"] <= 0.01
    # The unpacked result really is that accurate.
    un = tmp_path / "un.onnx"
    assert run_cli("unpack", tmp_path / "m0.onnxz", "-o", un).returncode == 0
    check = run_cli("validate", MLP, un, "--data", EVAL, "--max-accuracy-drop", "1.0", "--no-latency")
    assert check.returncode == 0, check.stdout + check.stderr
    # Static int8 leaves no float tensor but scales, which stay exact: none is stored as float16.
    assert report["float16_tensors"] == [] and report["stages"][-1]["note"] == "lossless"
    # Inferred shapes of intermediate tensors are not carried into the output.
    unpacked, original = onnx.load(str(un)), onnx.load(str(MLP))
    assert {vi.name for vi in unpacked.graph.value_info} <= {vi.name for vi in original.graph.value_info}
    page = (tmp_path / "r0.html").read_text()
    assert page.count("<svg") >= 3 and "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")
    a = report["final"]["accuracy"]  # the net drop, and the eval samples behind it
    assert a["labelled"] == len(np.load(EVAL)["labels"]) and a["lost"] - a["gained"] == round(
        a["labelled"] * (a["reference"] - a["candidate"]))
    assert f"accuracy on {a['labelled']} labelled samples" in page
    assert f"{a['lost']} newly wrong, {a['gained']} newly right" in page
    assert f"accuracy on {a['labelled']} labelled samples" in result.stdout and \
        f"{a['lost']} newly wrong, {a['gained']} newly right" in result.stdout.replace("\n", " ")


def test_small_floats_go_float16_only_under_the_gate(tmp_path):
    """Weight-only 4/8-bit leaves biases float: the recipe stores them as float16
    when the unpacked model still passes the gate, and names them in the report."""
    out, un = tmp_path / "m.onnxz", tmp_path / "un.onnx"
    result = run_cli("shrink", MLP, "-o", out, "--calib", CALIB, "--eval", EVAL, "--sparsity", "0.5", "--no-latency",
                     "--weight-bits", "4,8", "--max-accuracy-drop", "1.0", "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    assert "--materialize float" in result.stdout  # the forms a packed low-bit model can be unpacked in
    report = json.loads((tmp_path / "r.json").read_text())
    halves = report["float16_tensors"]
    assert halves and "float16" in report["stages"][-1]["note"]
    assert run_cli("unpack", out, "-o", un).returncode == 0
    stored = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(un)).graph.initializer}
    original = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(MLP)).graph.initializer}
    for name in halves:
        a = stored[name]
        assert a.dtype == np.float32 and (a.astype(np.float16).astype(np.float32) == a).all()
        if name in original:
            assert not np.array_equal(a, original[name])  # really rounded, not already float16 values
    check = run_cli("validate", MLP, un, "--data", EVAL, "--max-accuracy-drop", "1.0", "--no-latency")
    assert check.returncode == 0, check.stdout + check.stderr


def test_failed_gate_writes_nothing_and_exits_1(tmp_path):
    out = tmp_path / "m.onnxz"
    result = run_cli("shrink", MLP, "-o", out, "--calib", CALIB, "--eval", EVAL, "--sparsity", "0.95",
                     "--min-cosine", "0.99999", "--json", tmp_path / "r.json")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "gate" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_lossless_recipe_round_trips_bit_exactly(tmp_path):
    out = tmp_path / "m.onnxz"
    result = run_cli("shrink", MLP, "-o", out, "--calib", CALIB, "--recipe", "lossless")
    assert result.returncode == 0, result.stderr
    un = tmp_path / "un.onnx"
    assert run_cli("unpack", out, "-o", un).returncode == 0
    assert _tensors(onnx.load(str(un))) == _tensors(onnx.load(str(MLP)))
    assert out.stat().st_size < MLP.stat().st_size


def test_input_is_never_touched(tmp_path):
    before = MLP.read_bytes()
    run_cli("shrink", MLP, "-o", tmp_path / "m.onnxz", "--calib", CALIB, "--recipe", "lossless")
    assert MLP.read_bytes() == before


def test_recipe_accuracy_gate_without_eval_is_measured_on_the_calibration_inputs(tmp_path):
    # The recipe's gate needs no labels: without --eval it counts the original's answers that change
    # on the calibration inputs, and says so. An explicit --max-accuracy-drop asks for labelled --eval.
    unlabelled = tmp_path / "calib.npz"
    np.savez(unlabelled, **{k: v for k, v in np.load(CALIB).items() if k != "labels"})
    result = run_cli("shrink", MLP, "-o", tmp_path / "m.onnxz", "--calib", unlabelled, "--sparsity", "0.5",
                     "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    final = json.loads((tmp_path / "r.json").read_text())["final"]
    assert final["checked_on"] == "calibration data" and final["basis"] == AGREEMENT_BASIS
    assert final["passed"] and final["answers_changed"]["points"] <= 1.0
    explicit = run_cli("shrink", MLP, "-o", tmp_path / "e.onnxz", "--calib", CALIB, "--max-accuracy-drop", "1")
    assert explicit.returncode == 2 and "--eval" in explicit.stderr
    assert not (tmp_path / "e.onnxz").exists()


def test_builtin_recipes_parse_and_are_listed():
    names = set(builtin_recipes())
    assert {"cnn-default", "transformer-default", "lossless"} <= names
    for name in names:
        load_recipe(name)
    result = run_cli("recipes")
    assert result.returncode == 0 and all(n in result.stdout for n in names)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"prune": {"sparsity": 0.5, "bogus": 1}}, "no option 'bogus'"),
        ({"quantise": {}}, "unknown section"),
        ({"gate": {"max_drop": 1}}, "no key 'max_drop'"),
        ({"pack": {"level": 3}}, "takes only enabled, float16_small, not 'level'"),
    ],
)
def test_bad_recipes_are_refused_by_name(data, message):
    with pytest.raises(UsageError, match=message):
        parse_recipe(data, "r")


def test_recipe_file_from_the_command_line(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[prune]\nsparsity = 0.3\n[quantize]\nenabled = false\n[gate]\nmin_cosine = 0.99\n')
    out = tmp_path / "m.onnxz"
    result = run_cli("shrink", MLP, "-o", out, "--calib", CALIB, "--recipe", recipe, "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["original", "simplify", "prune", "pack"]
    bad = tmp_path / "bad.toml"
    bad.write_text("[prune\n")
    result = run_cli("shrink", MLP, "-o", out, "--calib", CALIB, "--recipe", bad)
    assert result.returncode == 2 and "not valid TOML" in result.stderr


def test_mixed_precision_keeps_the_most_sensitive_weight_float():
    """When even all weights at 8 bits fail the gate, the most sensitive stays
    float and the rest is still quantized. w1's input row 0 is huge but its
    input is near zero: its per-channel scale crushes every other weight to 0."""
    from onnx import TensorProto, helper

    from onnxshrink.pipeline import ShrinkOptions, shrink
    from onnxshrink.recipes import Recipe

    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(64, 64)).astype(np.float32)
    w1[0, :] = 3000.0
    w2 = rng.normal(size=(64, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.normal(size=(64, 64)).astype(np.float32)
    x[:, 0] = 1e-4
    recipe = Recipe("t", "", False, None, {}, True, {"min_cosine": 0.9999})
    result = shrink(model, [{"x": x}], ShrinkOptions(recipe, weight_bits=(4, 8), measure_latency=False))
    dtypes = {t.name: t.data_type for t in result.model.graph.initializer}
    assert dtypes["w1"] == TensorProto.FLOAT and dtypes["w2_quantized"] == TensorProto.INT8
    assert "1 left float" in result.report["stages"][-2]["note"]
    assert result.validation.passed


def test_the_width_mix_checks_each_mix_once_against_the_kept_reference(monkeypatch):
    """Each mix of widths is checked against the gate by the search (the
    original's outputs kept): quantize_weights must not also run the original
    and the mix on the calibration data (on rapidocr_rec_v4 that doubled the
    mix's 140 s). Its own comparison, asked for, is still made."""
    import onnxshrink.lowbit as lowbit
    from onnxshrink.lowbit import WeightOnlyOptions
    from onnxshrink.pipeline import ShrinkOptions, shrink
    from onnxshrink.recipes import Recipe

    real = lowbit.quantize_weights
    asked: list[bool] = []

    def spy(*args, **kwargs):
        asked.append(kwargs.get("compare", True))
        result = real(*args, **kwargs)
        assert (result.report.validation is None) == (not asked[-1])
        return result

    monkeypatch.setattr(lowbit, "quantize_weights", spy)
    model = onnx.load(MLP)
    calib = dict(np.load(CALIB))
    feed = {k: v for k, v in calib.items() if k != "labels"}
    recipe = Recipe("t", "", False, None, {}, True, {"min_cosine": 0.99995})
    shrink(model, [feed], ShrinkOptions(recipe, weight_bits=(4, 8), measure_latency=False))
    assert len(asked) >= 2 and not any(asked)
    checked = real(model, WeightOnlyOptions(bits=8, gate_floor=False), calib=[feed], measure_latency=False)
    assert checked.report.validation is not None


def test_weight_widths_are_checked_and_three_levels_are_used(tmp_path):
    from onnxshrink.pipeline import ShrinkOptions

    recipe = load_recipe("cnn-default")
    with pytest.raises(UsageError, match="--weight-bits"):
        ShrinkOptions(recipe, weight_bits=(9, 8))
    assert ShrinkOptions(recipe, weight_bits=(3, 4, 8)).mixed_precision
    assert not ShrinkOptions(recipe, weight_bits=(8,)).mixed_precision
    out = tmp_path / "m.onnxz"
    # A gate tight enough that no single width passes for every layer and the narrowest does for some.
    # --no-latency: the widths are the subject here, not whether a faster static int8 model replaces them.
    result = run_cli("shrink", MLP, "-o", out, "--calib", CALIB, "--eval", EVAL, "--no-prune", "--no-latency",
                     "--weight-bits", "3,4,8", "--min-cosine", "0.9995", "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    note = json.loads((tmp_path / "r.json").read_text())["stages"][-2]["note"]
    counts = {int(b): int(n) for n, b in re.findall(r"(\d+) at (\d+) bits", note)}
    assert counts.get(3, 0) > 0 and counts.get(4, 0) > 0 and counts.get(8, 0) > 0, note


def test_narrowing_steps_take_least_error_per_bit_first_and_keep_each_layer_in_order():
    """A large layer that bears fewer bits steps down before a small
    sensitive one; a layer's 8->6 step always comes before its 6->4 step,
    even where the later step alone would look cheaper."""
    from onnxshrink.lowbit.report import WeightRecord
    from onnxshrink.search.quantizers import narrowing_steps

    def rec(name, error, params):
        return WeightRecord(name=name, op_types=["Conv"], shape=[params], bits=0, granularity="channel",
                            rounding="gptq", relative_error=error, output_error=error, bytes_before=4 * params,
                            bytes_after=0, sparsity=0.0, why_nearest=None)

    errors = {"big": {8: 0.001, 6: 0.002, 4: 0.010}, "small": {8: 0.001, 6: 0.050, 4: 0.200},
              "odd": {8: 0.001, 6: 0.030, 4: 0.031}}  # odd: 6->4 adds almost nothing, 8->6 a lot
    params = {"big": 100_000, "small": 1_000, "odd": 1_000}
    records = {w: {n: rec(n, errors[n][w], params[n]) for n in errors} for w in (8, 6, 4)}
    steps = narrowing_steps(list(errors), [4, 6, 8], records)
    assert steps[:2] == [("big", 6), ("big", 4)]
    assert steps.index(("odd", 6)) == steps.index(("odd", 4)) - 1
    assert steps[-2:] == [("small", 6), ("small", 4)]
    assert sorted(steps) == sorted((n, w) for n in errors for w in (6, 4))


@pytest.mark.parametrize("bolder_size, bolder_drop, expected_share", [
    (98_000, 0.3, 0.75),   # 2 % smaller but less accurate: not worth it
    (90_000, 0.3, 1.0),    # 10 % smaller: taken
    (99_000, 0.1, 1.0),    # smaller and no less accurate: taken
])
def test_bolder_candidate_must_earn_its_accuracy(monkeypatch, bolder_size, bolder_drop, expected_share):
    """The extra all-budget pruning trial replaces the first passing candidate
    only when it is clearly smaller, or no less accurate."""
    import onnxshrink.pipeline as pipeline
    from onnxshrink.search import loop
    from onnxshrink.search.trial import Outcome, Trial
    from onnxshrink.validation import Gate

    class Checked:
        def __init__(self, drop):
            self.passed, self.accuracy_drop_points, self.drop_points, self.failures = True, drop, drop, []
            self.outputs = {"y": {"cosine": 1.0, "min_sample_cosine": 1.0}}

        def to_dict(self):
            return {"passed": True}

    def fake_trial(inputs, state, candidate, index):
        if candidate.weight_only_bits or candidate.weight_bits:  # the weight-only candidates: not this test's
            return Trial(index, candidate, Outcome(failed="not measured here"), "digest")
        size, drop = (100_000, 0.1) if candidate.prune_budget_share == 0.75 else (bolder_size, bolder_drop)
        outcome = Outcome(model=inputs.base, packed=b"x" * size, size=size, validation=Checked(drop))
        return Trial(index, candidate, outcome, "digest", ratio=inputs.original_bytes / size, accuracy_drop=drop,
                     passed=True)

    monkeypatch.setattr(loop, "run_trial", fake_trial)
    options = pipeline.ShrinkOptions(load_recipe("cnn-default"), gate=Gate(max_accuracy_drop=1.0))
    result = pipeline.shrink(onnx.load(str(MLP)), CALIB, options, eval_data=EVAL)
    assert [t["chosen"] for t in result.report["search"]] == [expected_share == 0.75, expected_share == 1.0]


def _search_inputs(gate):
    from onnxshrink.data import model_inputs, read_samples
    from onnxshrink.packing.forms import record_reference
    from onnxshrink.pipeline import ShrinkOptions
    from onnxshrink.search import SearchInputs
    from onnxshrink.simplify import simplify

    # Latency is not timed here: which candidate wins must not depend on the machine's load.
    options = ShrinkOptions(load_recipe("cnn-default"), gate=gate, measure_latency=False)
    original = onnx.load(str(MLP))
    base = simplify(original).model
    record_reference(base, original)  # as shrink does: the default load form bounds memory against the original
    batches = read_samples(str(CALIB), model_inputs(base), options.calib_samples)
    return SearchInputs(original, original.ByteSize(), base, options, gate, batches, str(EVAL), lambda *a: None)


def test_a_trial_that_prunes_like_the_previous_one_reuses_its_outcome(monkeypatch):
    """What a trial does after pruning depends only on the pruned model: a
    trial whose pruning lands where the previous one did (a bolder budget the
    search could not use) gets that outcome instead of quantizing and
    validating the same model again; a different pruning does not."""
    from onnxshrink.search import Candidate, SearchState, loop, stages
    from onnxshrink.validation import Gate

    calls = []
    real = loop.quantize_and_check

    def counting(inputs, state, pruned, remaining, candidate):
        calls.append(stages.weights_digest(pruned.model))
        return real(inputs, state, pruned, remaining, candidate)

    monkeypatch.setattr(loop, "quantize_and_check", counting)
    inputs, state = _search_inputs(Gate(min_cosine=0.98)), SearchState()
    first, again, bolder = [loop.run_trial(inputs, state, Candidate(share), i) for i, share in enumerate((0.75, 0.75, 1.0))]
    assert len(calls) == 2 and calls[0] != calls[1]  # the repeat was not quantized again; the bolder one was
    assert again.reused and again.outcome is first.outcome and again.pruned_digest == first.pruned_digest
    assert set(again.seconds) == {"prune"} and set(first.seconds) == {"prune", "quantize", "validate", "pack"}
    assert not bolder.reused and bolder.candidate.prune_budget_share == 1.0
    assert bolder.outcome.size < first.outcome.size
    assert state.prune_stats and state.last == ((bolder.pruned_digest, None), bolder.outcome)


def test_search_trials_are_typed_and_report_the_same_json_shape():
    """Each trial records what was tried (share, pattern, weight code range), the
    digest of what it would write, its gate result and stage timings; the
    report's search list keeps its keys (the HTML report and JSON read them)."""
    import hashlib

    from onnxshrink.pipeline import shrink
    from onnxshrink.search import search
    from onnxshrink.validation import Gate

    gate = Gate(min_cosine=0.995)
    inputs = _search_inputs(gate)
    found = search(inputs)
    chosen = found.chosen
    assert found.searching and chosen.passed and chosen in found.trials
    first = found.trials[0]  # the recipe's first candidate: Hessian pruning, then static int8
    assert first.candidate.prune_budget_share == 0.75 and first.pattern == "unstructured"
    assert first.outcome.weight_range_bits in (4, 6, 8) and first.outcome.validation.passed
    # The winner is the smallest that passes: the recipe's, or weight-only GPTQ at 4/8 bits when clearly smaller.
    assert chosen.outcome.size <= min(t.outcome.size for t in found.trials if t.passed) / 0.95
    assert chosen.candidate.prune_budget_share in (0.75, 0.5, 0.25, 1.0) or chosen.candidate.weight_bits == (4, 8)
    assert chosen.outcome.digest == hashlib.sha256(chosen.outcome.packed).hexdigest()
    assert all(seconds >= 0 for seconds in chosen.seconds.values()) and "pack" in chosen.seconds
    result = shrink(inputs.original, str(CALIB), inputs.options, eval_data=str(EVAL))
    # The same winner; the pipeline then stores small float tensors as float16 if the gate still holds.
    if result.report["float16_tensors"]:
        assert len(result.packed) == result.report["output_bytes"] < chosen.outcome.size
    else:
        assert result.packed == chosen.outcome.packed
    rows = result.report["search"]
    # The keys readers had stay (docs/json.md documents the rest: pattern, the gate metrics, failed, ...).
    assert rows and all({"trial", "prune_budget_share", "size_bytes", "ratio", "accuracy_drop", "passed",
                         "chosen"} <= set(row) for row in rows)
    assert all(row["cosine"] == min(m["cosine"] for m in t.outcome.validation.outputs.values())
               for row, t in zip(rows, found.trials))
    assert all(row["latency_ratio"] is None and row["quantize"] == "as asked" for row in rows)  # not timed
    assert [row["chosen"] for row in rows].count(True) == 1 and rows[0]["prune_budget_share"] == 0.75


def test_layers_left_float_go_float16_too_when_the_gate_holds():
    """The float16 pass tries every float tensor first, layer weights above the
    small-tensor limit included (what the search keeps float), and keeps it
    only when the unpacked model still passes the gate."""
    from onnxshrink.pipeline import _float16_small
    from onnxshrink.recipes import load_recipe
    from onnxshrink.search import Candidate, Outcome, SearchInputs, Trial
    from onnxshrink.search.options import ShrinkOptions
    from onnxshrink.search.stages import packed_size
    from onnxshrink.validation import Gate

    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.normal(0, 0.05, (256, 512)).astype(np.float32), "W")  # 131072 > 65536 elements
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "wide",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 512])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    check = [{"x": rng.normal(size=(16, 256)).astype(np.float32)}]
    size, packed = packed_size(model)

    def attempt(gate):
        options = ShrinkOptions(load_recipe("cnn-default"), gate=gate, measure_latency=False)
        inputs = SearchInputs(model, model.ByteSize(), model, options, gate, check, check, lambda *a: None)
        trial = Trial(0, Candidate(0.0), Outcome(model=model, packed=packed, size=size), "d")
        return _float16_small(trial, inputs)

    halved = attempt(Gate(min_cosine=0.9999))
    assert halved is not None and halved.outcome.float16 == ["W"] and halved.outcome.size < 0.6 * size
    restored = numpy_helper.to_array(halved.outcome.model.graph.initializer[0])
    assert (restored.astype(np.float16).astype(np.float32) == restored).all()
    assert attempt(Gate(min_cosine=1.0)) is None  # float16 moves the outputs: not under an exact gate
