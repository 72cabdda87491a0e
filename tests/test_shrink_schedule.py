"""The shrink search's schedule: candidates skipped with their reason, estimates
in the progress lines, the time budget, and the weight-only int8 floor."""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import MODELS, run_cli
from onnxshrink.search import Candidate, Outcome, Trial
from onnxshrink.search.schedule import Schedule, TrialProgress

MLP = MODELS / "digits_mlp.onnx"
CALIB = MODELS / "digits_mlp.calib.npz"
EVAL = MODELS / "digits_mlp.eval.npz"


def _trial(share, sparsity, seconds, index=0, weight_only_bits=None):
    return Trial(index, Candidate(share, weight_only_bits=weight_only_bits), Outcome(failed="not measured"), "d",
                 seconds=seconds, pruned_sparsity=sparsity)


def test_a_smaller_pruning_share_after_one_that_removed_nothing_cannot_help():
    schedule = Schedule(None, lambda status: None)
    schedule.runs.append(_trial(0.75, 0.0, {"prune": 3.0, "quantize": 1.0}))
    why = schedule.cannot_help(Candidate(0.5))
    assert why is not None and "removed 0%" in why and "75%" in why
    # No pruning at all, a bolder share and the weight-only floor are still worth running.
    assert schedule.cannot_help(Candidate(0.0)) is None
    assert schedule.cannot_help(Candidate(1.0)) is None
    assert schedule.cannot_help(Candidate(0.0, weight_only_bits=8)) is None
    # A share that did prune says nothing about smaller ones.
    other = Schedule(None, lambda status: None)
    other.runs.append(_trial(0.75, 0.4, {"prune": 3.0}))
    assert other.cannot_help(Candidate(0.5)) is None


def test_estimates_come_from_the_trials_run_and_decide_what_fits_the_budget():
    now = [0.0]
    schedule = Schedule(60.0, lambda status: None, clock=lambda: now[0])
    assert schedule.estimate(Candidate(0.5)) is None and schedule.over_budget(Candidate(0.5)) is None
    first = _trial(0.75, 0.3, {"prune": 40.0, "quantize": 8.0, "validate": 1.0, "pack": 1.0})
    schedule.runs.append(first)
    # A later pruning trial reuses the scan: part of the first trial's pruning, and all of what follows it.
    assert schedule.estimate(Candidate(0.5)) == pytest.approx(0.5 * 40.0 + 10.0)
    assert schedule.estimate(Candidate(0.0)) == pytest.approx(10.0)
    assert schedule.remaining([Candidate(0.5), Candidate(0.0)]) == pytest.approx(40.0)
    now[0] = 50.0  # 10 s of 60 left: the pruning trial does not fit, no pruning (10 s) does
    why = schedule.over_budget(Candidate(0.5))
    assert why is not None and why.startswith("time budget") and "10s of 1m00s left" in why
    assert schedule.over_budget(Candidate(0.0)) is None
    # Once a later pruning trial was measured, it is the estimate.
    schedule.runs.append(_trial(0.5, 0.2, {"prune": 4.0, "quantize": 8.0, "validate": 1.0, "pack": 1.0}, index=1))
    assert schedule.estimate(Candidate(0.25)) == pytest.approx(4.0 + 10.0)


def test_the_widths_after_a_first_pruning_are_estimated_within_the_scans_deadline():
    """A weight-width mix on a pruned model, when no pruning ran yet: the mix's
    own time plus the sensitivity scan, which ends at pruning's deadline (then
    nothing is pruned: past it, the candidate cannot help)."""
    now = [0.0]
    schedule = Schedule(100.0, lambda status: None, clock=lambda: now[0])
    schedule.prune_by = 50.0
    widths = (4, 5, 6, 8)
    mix = Trial(0, Candidate(0.0, weight_bits=widths), Outcome(failed="not measured"), "d",
                seconds={"quantize": 30.0, "validate": 2.0})
    schedule.runs.append(mix)
    now[0] = 32.0
    # The scan would take as long as a first trial (32 s), but only 18 s are left before its deadline.
    assert schedule.estimate(Candidate(0.75, weight_bits=widths)) == pytest.approx(32.0 + 18.0)
    assert schedule.estimate(Candidate(0.0, weight_bits=widths)) == pytest.approx(32.0)
    assert schedule.cannot_help(Candidate(0.75, weight_bits=widths)) is None
    now[0] = 50.0
    why = schedule.cannot_help(Candidate(0.75, weight_bits=widths))
    assert why is not None and "would remove nothing" in why
    assert schedule.cannot_help(Candidate(0.0, weight_bits=widths)) is None


def test_skipped_candidates_are_reported_with_their_reason(tmp_path):
    """A time budget the first trial already spends: the other candidates are
    skipped and named in the report and the summary; the weight-only int8 floor
    still runs, and the result passes the gate."""
    out, report = tmp_path / "m.onnxz", tmp_path / "r.json"
    result = run_cli("shrink", MLP, "-o", out, "--calib", CALIB, "--eval", EVAL, "--max-accuracy-drop", "1.0",
                     "--time-budget", "0.001", "--json", report)
    assert result.returncode == 0, result.stderr
    r = json.loads(report.read_text())
    # The weight-only mix after the first trial's pruning would prune as it did: removing nothing.
    assert r["skipped"] and all(s["reason"].startswith(("time budget", "pruning removed 0% of the weights"))
                                for s in r["skipped"])
    assert any(s["reason"].startswith("time budget") for s in r["skipped"])
    assert len(r["search"]) == 1  # the first trial ran; what followed it did not fit
    assert all(f"skipped: {s['mode']}: {s['reason']}" in result.stdout.replace("\n", " ") for s in r["skipped"][:1])
    assert r["weight_only_int8"]["passed"] and r["passed"]
    # The first trial's pruning could not finish its scan in the budget either, and says so.
    assert "pruning skipped" in r["stages"][2]["note"] and "time budget" in r["stages"][2]["note"]


def test_piped_progress_is_a_plain_line_per_trial_with_an_estimate(tmp_path):
    result = run_cli("shrink", MLP, "-o", tmp_path / "m.onnxz", "--calib", CALIB, "--eval", EVAL,
                     "--max-accuracy-drop", "1.0")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("onnxshrink: trial ")]
    assert lines[0].startswith("onnxshrink: trial 1/") and "estimate after the first trial" in lines[0]
    assert "elapsed" in lines[0]
    # Each trial has a start and an end line; after the first, the time left is estimated.
    assert len(lines) >= 4 and all("elapsed" in line for line in lines)
    assert any("left at most" in line for line in lines[1:])
    assert not any(c in result.stderr for c in "━╸") and "weight-only int8" in result.stderr
    quiet = run_cli("shrink", MLP, "-o", tmp_path / "q.onnxz", "--calib", CALIB, "--eval", EVAL,
                    "--max-accuracy-drop", "1.0", "-q")
    assert quiet.returncode == 0 and quiet.stderr.strip() == ""


def test_the_result_is_never_less_accurate_than_weight_only_int8_without_saying_so(tmp_path):
    """The report holds the plain weight-only int8 trial; when the chosen model
    used more of the gate than it, a note says so (and names both sizes)."""
    report = tmp_path / "r.json"
    result = run_cli("shrink", MODELS / "digits_cnn.onnx", "-o", tmp_path / "m.onnxz", "--calib",
                     MODELS / "digits_cnn.calib.npz", "--eval", MODELS / "digits_cnn.eval.npz",
                     "--max-accuracy-drop", "1.0", "--json", report)
    assert result.returncode == 0, result.stderr
    r = json.loads(report.read_text())
    floor = r["weight_only_int8"]
    chosen_drop = next(row["accuracy_drop"] for row in r["search"] if row["chosen"])
    floor_drop = floor["budget_used"]
    noted = [n for n in r["notes"] if "agrees less with the original than plain weight-only int8" in n]
    assert bool(noted) == (chosen_drop > floor_drop + 1e-4)
    if noted:
        assert f"{floor['ratio']:.1f}x" in noted[0] and f"note: {noted[0]}" in result.stdout.replace("\n", " ")
    else:  # not less accurate: weight-only int8 is kept only when no larger
        assert r["ratio"] >= floor["ratio"] or r["stages"][-2]["note"].startswith("weight-only int8")


def _weights_in_an_if() -> onnx.ModelProto:
    """x [N, 64] -> If(sum(x) > -1e9) then Relu(x @ A) else Relu(x @ B): every layer weight in a branch."""
    rng = np.random.default_rng(0)

    def branch(name: str) -> onnx.GraphProto:
        w = numpy_helper.from_array(rng.normal(0, 0.2, (64, 64)).astype(np.float32), f"{name}_w")
        return helper.make_graph([helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_mm"]),
                                  helper.make_node("Relu", [f"{name}_mm"], [f"{name}_y"])], name, [],
                                 [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)], [w])

    low = numpy_helper.from_array(np.array(-1e9, np.float32), "low")
    nodes = [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
             helper.make_node("Greater", ["total", "low"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch("then"), else_branch=branch("other"))]
    graph = helper.make_graph(nodes, "if_model", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])], [low])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _main_graph_lstm() -> onnx.ModelProto:
    """x [N, 64] -> one LSTM step (sequence of 1, batch N) -> [N, 64]: its W and R are the layer weights."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.2, (1, 256, 64)).astype(np.float32), "W")
    r = numpy_helper.from_array(rng.normal(0, 0.2, (1, 256, 64)).astype(np.float32), "R")
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    nodes = [helper.make_node("Unsqueeze", ["x", "axes"], ["seq"]),
             helper.make_node("LSTM", ["seq", "W", "R"], ["", "h"], hidden_size=64, name="lstm"),
             helper.make_node("Squeeze", ["h", "axes"], ["y"])]
    graph = helper.make_graph(nodes, "lstm_model", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])], [w, r, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_weight_only_int8_is_kept_when_static_int8_cannot_reach_the_weights():
    """Static int8 has no int8 LSTM, so the layer stays float (the model stays its
    size); plain weight-only int8 reaches its W and R, passes the gate and is kept
    (the time budget leaves no room for the GPTQ candidate, which would also win)."""
    from onnxshrink.pipeline import ShrinkOptions, shrink
    from onnxshrink.recipes import load_recipe
    from onnxshrink.validation import Gate

    model = _main_graph_lstm()
    rng = np.random.default_rng(1)
    calib = [{"x": rng.normal(size=(8, 64)).astype(np.float32)} for _ in range(4)]
    options = ShrinkOptions(load_recipe("cnn-default"), gate=Gate(min_cosine=0.99), time_budget=0.001)
    r = shrink(model, calib, options).report
    assert r["search"][0]["ratio"] < 1.2  # static int8: nothing reached
    assert any(s["mode"].startswith("weight-only GPTQ") and s["reason"].startswith("time budget") for s in r["skipped"])
    assert r["weight_only_int8"]["passed"] and r["stages"][-2]["note"].startswith("weight-only int8: 2 weights")
    assert any("plain weight-only int8 passes the gate and is smaller" in n for n in r["notes"])
    assert r["ratio"] == pytest.approx(r["weight_only_int8"]["ratio"], rel=0.05) and r["ratio"] > 2.5
    assert [row["chosen"] for row in r["search"]].count(True) == 1 and r["search"][-1]["chosen"]


def test_static_int8_in_shrink_stores_the_weights_inside_if_bodies_and_counts_them():
    """Every layer weight in an If branch: the static candidate stores them in int8
    (the layers compute in float there), and the stage says so from the written model."""
    from onnxshrink.pipeline import ShrinkOptions, shrink
    from onnxshrink.recipes import load_recipe
    from onnxshrink.validation import Gate

    model = _weights_in_an_if()
    rng = np.random.default_rng(1)
    calib = [{"x": rng.normal(size=(8, 64)).astype(np.float32)} for _ in range(4)]
    options = ShrinkOptions(load_recipe("cnn-default"), gate=Gate(min_cosine=0.99), time_budget=0.001)
    r = shrink(model, calib, options).report
    assert r["search"][0]["ratio"] > 2.5 and r["search"][0]["chosen"]  # was 1.0x: nothing reached
    quantize = next(s for s in r["stages"] if s["name"] == "quantize")
    assert quantize["note"].startswith("int8, weight codes in") and quantize["note"].endswith(
        "; 2 layers quantized, 0 left float")


def test_a_prune_search_that_cannot_end_in_time_prunes_nothing_and_says_so():
    from onnxshrink.pruning import PruneOptions, prune_model

    model = onnx.load(str(MLP))
    result = prune_model(model, PruneOptions(min_cosine=0.99), calib=str(CALIB), eval_data=str(EVAL),
                         deadline=time.perf_counter())
    assert result.report.weight_sparsity == 0.0 and not result.modified
    assert any("pruning skipped" in n and "time budget" in n for n in result.report.notes)
    unbounded = prune_model(model, PruneOptions(min_cosine=0.99), calib=str(CALIB), eval_data=str(EVAL))
    assert unbounded.report.weight_sparsity > 0


def test_trial_progress_reaches_the_library_callback():
    from onnxshrink.pipeline import ShrinkOptions, shrink
    from onnxshrink.recipes import load_recipe
    from onnxshrink.validation import Gate

    seen: list[TrialProgress] = []
    options = ShrinkOptions(load_recipe("cnn-default"), gate=Gate(min_cosine=0.99), time_budget=None)
    shrink(onnx.load(str(MLP)), str(CALIB), options, eval_data=str(EVAL), on_trial=seen.append)
    starts = [s for s in seen if s.result is None]
    ends = [s for s in seen if s.result is not None]
    assert starts and len(starts) == len(ends) and starts[0].index == 1 and starts[0].remaining is None
    assert all(e.remaining is not None and e.elapsed >= 0 for e in ends)
    assert ends[-1].doing == "weight-only int8, no pruning" and ends[-1].index == ends[-1].planned


def test_the_terminal_bar_shows_the_trial_what_it_tries_and_the_time_left():
    import io

    from rich.console import Console
    from rich.progress import Progress as RichProgress
    from rich.progress import TextColumn

    from onnxshrink.cli._common import Progress

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    with RichProgress(TextColumn("{task.description}"), TextColumn("{task.fields[eta]}"), console=console) as bar:
        progress = Progress(bar)
        progress.trial(TrialProgress(1, 4, "no pruning, then quantize", 0.0, None))
        row = bar.tasks[0]
        assert row.description == "trial 1/4: no pruning, then quantize" and row.completed == 0
        assert row.fields["eta"] == "estimate after the first trial"
        progress.trial(TrialProgress(1, 4, "no pruning, then quantize", 75.0, 130.0, "4.1x smaller, passed the gate"))
        assert row.completed == 1 and row.fields["eta"] == "about 2m10s left at most"
        progress("search", 1, 4)  # the library's own count of trials does not fight the trial row
        assert len(bar.tasks) == 1 and row.completed == 1
    assert "trial 1/4: 4.1x smaller, passed the gate" in out.getvalue()


def _outlier_mlp() -> tuple[onnx.ModelProto, list[dict[str, np.ndarray]]]:
    """x [N, 32] -> Relu(x @ A) @ B, calibrated on data with one huge input value:
    static int8's activation step then rounds every ordinary input to zero (it
    misses any cosine gate), while weight-only int8 leaves activations alone."""
    rng = np.random.default_rng(3)
    a = numpy_helper.from_array(rng.normal(0, 0.3, (32, 64)).astype(np.float32), "A")
    b = numpy_helper.from_array(rng.normal(0, 0.3, (64, 16)).astype(np.float32), "B")
    nodes = [helper.make_node("MatMul", ["x", "A"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "B"], ["y"])]
    graph = helper.make_graph(nodes, "outlier_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])], [a, b])
    calib = [{"x": rng.normal(size=(16, 32)).astype(np.float32)} for _ in range(3)]
    calib[0]["x"][0, 0] = 1e5
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), calib


def test_pruning_trials_are_skipped_when_static_int8_of_the_unpruned_model_misses_the_gate():
    """Pruning only adds error: when static int8 fails the gate without it, the
    pruned candidates are skipped with that reason (no sensitivity scan is paid
    for) and a weight-only candidate is kept."""
    from onnxshrink.pipeline import ShrinkOptions, shrink
    from onnxshrink.recipes import load_recipe
    from onnxshrink.validation import Gate

    model, calib = _outlier_mlp()
    rng = np.random.default_rng(4)
    check = [{"x": rng.normal(size=(32, 32)).astype(np.float32)}]
    options = ShrinkOptions(load_recipe("cnn-default"), gate=Gate(min_cosine=0.999), measure_latency=False)
    r = shrink(model, calib, options, eval_data=check).report
    skipped = [s for s in r["skipped"] if "static int8 of the unpruned model misses the gate" in s["reason"]]
    assert sorted(s["prune_budget_share"] for s in skipped) == [0.25, 0.5, 0.75]
    # Only weight-only candidates prune (activations stay float, where static int8 failed).
    assert all(row["prune_budget_share"] in (0.0, None) or "weight-only GPTQ" in row["mode"]
               for row in r["search"])
    assert r["passed"] and r["ratio"] > 2.5
    chosen = next(row for row in r["search"] if row["chosen"])
    assert "weight-only" in chosen["mode"]
    # The widths after pruning come next, before static int8 with float nodes; pruning removes
    # nothing on this model within the gate, so that trial is the first one's mix, not made again.
    first, second = r["search"][:2]
    assert first["mode"].startswith("weight-only GPTQ") and "then weight-only GPTQ" in second["mode"]
    assert second["reused"] and second["size_bytes"] == first["size_bytes"]
    # Static int8 with float nodes could only be larger than the probe's all-int8 model, which the
    # mix already beats: it is skipped with that reason rather than searched.
    futile = [s for s in r["skipped"] if s["mode"] == "no pruning, then quantize"]
    assert len(futile) == 1 and "larger than with every node in int8" in futile[0]["reason"]
    assert not any(row["mode"] == "no pruning, then quantize" for row in r["search"])


def test_after_the_unpruned_mix_passes_pruning_may_scan_until_what_the_mix_on_the_pruned_model_needs(monkeypatch):
    """When static int8 missed the gate, pruning's scan is no longer held to half
    the time budget: it may run until the time the unpruned mix took and a
    reserve (AFTER_MIX_RESERVE_SHARE) are left."""
    import onnxshrink.search.loop as loop
    from onnxshrink.pipeline import ShrinkOptions, shrink
    from onnxshrink.recipes import load_recipe
    from onnxshrink.validation import Gate

    seen = []
    real = loop.prune_stage

    def spy(inputs, state, candidate):
        if candidate.prune_budget_share:
            seen.append(state.prune_deadline)
        return real(inputs, state, candidate)

    monkeypatch.setattr(loop, "prune_stage", spy)
    model, calib = _outlier_mlp()
    rng = np.random.default_rng(4)
    check = [{"x": rng.normal(size=(32, 32)).astype(np.float32)}]
    budget = 1000.0
    options = ShrinkOptions(load_recipe("cnn-default"), gate=Gate(min_cosine=0.999), measure_latency=False,
                            time_budget=budget)
    start = time.perf_counter()
    r = shrink(model, calib, options, eval_data=check).report
    mix = r["search"][0]
    assert mix["mode"].startswith("weight-only GPTQ") and mix["passed"]
    assert seen, "the pruned mix ran"
    mix_seconds = sum(mix["seconds"].values())
    left = budget * (1 - loop.AFTER_MIX_RESERVE_SHARE)  # the search's clock starts between start and end
    end = time.perf_counter()
    assert end + loop.PRUNE_TIME_SHARE * budget < seen[0] <= end + left
    assert seen[0] >= start + left - mix_seconds - 1.0


def test_static_int8_with_float_nodes_is_skipped_only_when_it_cannot_win():
    """It is skipped only for a winner that passes, is smaller than the probe's
    all-int8 model and is no slower than the original; never for a pruned candidate."""
    import dataclasses
    import types

    from onnxshrink.latency import Latency
    from onnxshrink.recipes import load_recipe
    from onnxshrink.search import ShrinkOptions
    from onnxshrink.search.stages import float_nodes_cannot_win
    from onnxshrink.search.trial import SearchState

    base = onnx.load(MLP)
    probe = onnx.load(MLP)  # stands for the probe's static int8 model: only its size counts
    size = probe.ByteSize()
    inputs = types.SimpleNamespace(base=base, original_bytes=4 * size,
                                   options=ShrinkOptions(dataclasses.replace(load_recipe("cnn-default"), pack=False)))
    state = SearchState()
    state.widest = (base, types.SimpleNamespace(model=probe))

    def winner(bytes_, latency=None):
        trial = Trial(0, Candidate(0.0, weight_bits=(4, 8)), Outcome(size=bytes_, latency=latency), "d")
        trial.passed, trial.ratio = True, 4 * size / bytes_
        return trial

    plain = Candidate(0.0)
    assert "larger than with every node in int8 (4.0x" in float_nodes_cannot_win(inputs, state, winner(size - 1), plain)
    assert float_nodes_cannot_win(inputs, state, winner(size), plain) is None  # not smaller
    slower = Latency(reference_ms=1.0, candidate_ms=1.5, ratio=1.5, noise=0.02)
    assert float_nodes_cannot_win(inputs, state, winner(size - 1, slower), plain) is None  # int8 may be faster
    assert float_nodes_cannot_win(inputs, state, winner(size - 1), Candidate(0.5)) is None
    assert float_nodes_cannot_win(inputs, state, None, plain) is None


def test_static_int8_with_float_nodes_is_skipped_when_its_sensitivity_scan_cannot_fit_its_time_share():
    """The scan scores every int8 node of the probe alone, each costing at least a gate check (on at
    most SENSITIVITY_SAMPLES samples): when that alone exceeds AWARE_TIME_SHARE of the budget (or
    what is left of it), the trial cannot pass and is skipped with the estimate; never without a
    budget, before a check was timed, or for a pruned candidate."""
    import dataclasses
    import types

    from onnxshrink.quantization.search import SENSITIVITY_SAMPLES
    from onnxshrink.recipes import load_recipe
    from onnxshrink.search import ShrinkOptions
    from onnxshrink.search.quantizers import AWARE_TIME_SHARE
    from onnxshrink.search.stages import aware_search_cannot_fit
    from onnxshrink.search.trial import SearchState

    base = onnx.load(MLP)
    recipe = dataclasses.replace(load_recipe("cnn-default"), pack=False)

    def setup(nodes, check_seconds, samples=20, budget=420.0, deadline_in=None):
        inputs = types.SimpleNamespace(base=base, options=ShrinkOptions(recipe, time_budget=budget))
        state = SearchState()
        state.widest = (base, types.SimpleNamespace(report=types.SimpleNamespace(nodes=[{}] * nodes)))
        state.reference = types.SimpleNamespace(batches=[range(samples)])
        state.check_seconds = check_seconds
        if deadline_in is not None:
            state.deadline = time.perf_counter() + deadline_in
        return inputs, state

    share = AWARE_TIME_SHARE * 420.0
    plain = Candidate(0.0)
    # 101 nodes at 2 s a check: 202 s of scan against 105 s.
    why = aware_search_cannot_fit(*setup(101, 2.0), plain)
    assert why is not None and "101 int8 nodes" in why and "202 s" in why and f"{share:.0f} s" in why
    assert aware_search_cannot_fit(*setup(40, 2.0), plain) is None  # 80 s fits
    # What is left of the budget bounds it too.
    assert aware_search_cannot_fit(*setup(40, 2.0, deadline_in=60.0), plain) is not None
    # Beyond SENSITIVITY_SAMPLES samples each node is scored on a part of the data only.
    many = 4 * SENSITIVITY_SAMPLES
    assert aware_search_cannot_fit(*setup(101, 2.0, samples=many), plain) is None  # 50 s
    assert aware_search_cannot_fit(*setup(101, 8.0, samples=many), plain) is not None  # 202 s
    assert aware_search_cannot_fit(*setup(101, 2.0, budget=None), plain) is None
    assert aware_search_cannot_fit(*setup(101, None), plain) is None
    assert aware_search_cannot_fit(*setup(101, 2.0), Candidate(0.5)) is None
    inputs, state = setup(101, 2.0)
    state.widest = None  # no probe: static int8 may pass as it is
    assert aware_search_cannot_fit(inputs, state, plain) is None


def test_pruning_trials_still_run_when_static_int8_of_the_unpruned_model_passes():
    from onnxshrink.pipeline import ShrinkOptions, shrink
    from onnxshrink.recipes import load_recipe
    from onnxshrink.validation import Gate

    model, calib = _outlier_mlp()
    calib[0]["x"][0, 0] = 1.0  # no outlier: static int8 holds the gate
    rng = np.random.default_rng(4)
    check = [{"x": rng.normal(size=(32, 32)).astype(np.float32)}]
    options = ShrinkOptions(load_recipe("cnn-default"), gate=Gate(min_cosine=0.99), measure_latency=False)
    r = shrink(model, calib, options, eval_data=check).report
    assert not any("unpruned model misses" in s["reason"] for s in r["skipped"])
    assert r["search"][0]["prune_budget_share"] == 0.75
