"""shrink and latency: the search's decisions on injected timings (a fake
``measure`` that reads the candidate's graph), the gate measured on the
form the output loads in, the recipe key, and a real end-to-end report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from onnxshrink.cli import app
from onnxshrink.errors import GateFailed, UsageError
from onnxshrink.latency import Latency
from onnxshrink.pipeline import ShrinkOptions, shrink
from onnxshrink.pruning.report import count_flops
from onnxshrink.recipes import load_recipe, parse_recipe
from onnxshrink.validation import Gate

MODELS = Path(__file__).resolve().parent.parent / "models"
CNN, MLP = MODELS / "digits_cnn", MODELS / "digits_mlp"


def _weights(model: onnx.ModelProto) -> int:
    """Elements of the layer weights (2-D and up), float or integer: channel pruning lowers it, zeros do not."""
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if len(t.dims) >= 2)


def _fixed(ratio: float) -> Latency:
    return Latency.from_rounds([1.0] * 5, [ratio] * 5, form="default load form")


def _run(path: Path, measure, **options):
    original = onnx.load(f"{path}.onnx")
    opts = ShrinkOptions(load_recipe("cnn-default"), gate=Gate(max_accuracy_drop=1.0), **options)
    return original, shrink(original, f"{path}.calib.npz", opts, eval_data=f"{path}.eval.npz", measure=measure)


def test_a_slower_winner_gives_way_to_a_no_slower_candidate():
    """Injected: every candidate that keeps all channels runs 1.5x the original
    (static int8 on a CPU without VNNI), channel-pruned ones 0.8x. The
    recipe's winner passes the gate but is slower beyond the noise, so shrink
    goes on to channel pruning and keeps the first that passes the gate."""
    seen = []

    def measure(candidate: onnx.ModelProto) -> Latency:
        ratio = 0.8 if _weights(candidate) < 0.95 * _weights(original) else 1.5
        seen.append(ratio)
        return _fixed(ratio)

    original = onnx.load(f"{CNN}.onnx")
    _, result = _run(CNN, measure)
    rows = result.report["search"]
    chosen = [r for r in rows if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["pattern"] == "channel" and chosen[0]["latency_ratio"] == 0.8
    slow = [r for r in rows if r["pattern"] == "unstructured"]
    assert slow and slow[0]["latency_ratio"] == 1.5 and slow[0]["passed"]  # it passed the gate: only slower
    assert result.report["latency"]["ratio"] == 0.8 and not result.report["latency"]["slower"]
    assert result.report["warnings"] == [] and 1.5 in seen
    assert _weights(result.model) < _weights(original)


def test_when_nothing_is_faster_the_winner_stays_and_is_flagged():
    _, result = _run(MLP, lambda candidate: _fixed(1.4))
    assert result.report["latency"]["slower"]
    (line,) = result.report["warnings"]
    assert line.startswith("the output runs slower than the original: 1.40x") and "\n" not in line
    rows = result.report["search"]
    (chosen,) = [r for r in rows if r["chosen"]]
    assert "(for latency)" not in chosen["mode"]  # channel pruning was no faster: not taken for speed
    assert chosen["size_bytes"] <= rows[0]["size_bytes"]  # the recipe's winner, or a smaller weight-only mix


def test_a_smaller_slower_winner_gives_way_to_a_no_slower_weight_only_mix():
    """Injected: static int8 (activations quantized) runs 1.5x the original,
    weight-only models 0.95x. Every static int8 candidate is smaller but
    slower; the weight-only mixes, tried after the latency families, pass the
    gate no slower, so the smallest of them is kept and the report says why."""
    def measure(candidate: onnx.ModelProto) -> Latency:
        return _fixed(1.5 if any(n.op_type == "QuantizeLinear" for n in candidate.graph.node) else 0.95)

    _, result = _run(CNN, measure)
    rows = result.report["search"]
    (chosen,) = [r for r in rows if r["chosen"]]
    assert "weight-only GPTQ" in chosen["mode"] and chosen["latency_ratio"] == 0.95
    fast = [r for r in rows if r["passed"] and r["latency_ratio"] == 0.95]
    assert chosen["size_bytes"] == min(r["size_bytes"] for r in fast)
    assert any(r["passed"] and r["latency_ratio"] == 1.5 and r["size_bytes"] < chosen["size_bytes"] for r in rows)
    assert any("the no-slower" in note for note in result.report["notes"])
    assert result.report["warnings"] == [] and not result.report["latency"]["slower"]


def test_the_weight_only_mix_is_also_tried_on_the_pruned_model():
    """The default recipe's search tries the weight-only widths after the
    winner's pruning too, and keeps it when it passes and is smaller."""
    _, result = _run(CNN, lambda candidate: _fixed(1.0))
    modes = [r["mode"] for r in result.report["search"]]
    pruned = [r for r in result.report["search"] if "then weight-only GPTQ" in r["mode"]]
    assert pruned, modes
    unpruned = [r for r in result.report["search"] if r["mode"].startswith("weight-only GPTQ")]
    assert unpruned and pruned[0]["passed"]
    assert pruned[0]["size_bytes"] < unpruned[0]["size_bytes"]


def test_latency_bound_searches_channel_pruning_and_takes_the_first_within():
    """Injected: latency is the candidate's FLOPs over the original's, times
    0.7 when it runs static int8. Unstructured sparsity leaves FLOPs alone
    (0.7 > 0.5), so the bound needs channel pruning."""
    def measure(candidate: onnx.ModelProto) -> Latency:
        int8 = any(n.op_type == "QuantizeLinear" for n in candidate.graph.node)
        return _fixed(round(count_flops(candidate) / flops * (0.7 if int8 else 1.0), 3))

    flops = count_flops(onnx.load(f"{CNN}.onnx"))
    _, result = _run(CNN, measure, max_latency_ratio=0.5)
    rows = result.report["search"]
    first = rows[0]
    assert first["pattern"] == "unstructured" and first["latency_ratio"] == 0.7 and not first["passed"]
    (chosen,) = [r for r in rows if r["chosen"]]
    assert chosen["pattern"] == "channel" and chosen["latency_ratio"] <= 0.5 and chosen["passed"]
    assert result.report["max_latency_ratio"] == 0.5 and result.report["latency"]["ratio"] <= 0.5
    assert result.validation.passed and result.report["ratio"] > 1
    # Milder shares of the unstructured pattern were not tried once one passed the gate: no faster.
    assert [r["pattern"] for r in rows].count("unstructured") <= 2


def test_an_unreachable_bound_fails_the_gate_and_says_latency():
    with pytest.raises(GateFailed, match=r"latency 2\.00x the original > 0\.3"):
        _run(MLP, lambda candidate: _fixed(2.0), max_latency_ratio=0.3)


def test_weight_only_candidates_are_gated_in_the_form_they_load_in():
    """The report's final metrics are those of the packed output loaded the
    default way (MatMulNBits quantizes activations at accuracy level 4), not
    of the DequantizeLinear graph: measured here on both."""
    from onnxshrink.packing import load_packed
    from onnxshrink.validation import compare_models

    original = onnx.load(f"{MLP}.onnx")
    options = ShrinkOptions(load_recipe("transformer-default"), gate=Gate(max_accuracy_drop=1.0),
                            weight_bits=(4, 8), measure_latency=False)
    result = shrink(original, f"{MLP}.calib.npz", options, eval_data=f"{MLP}.eval.npz")
    assert result.report["latency"] is None
    forms: list = []
    deployed = load_packed(result.packed, materialize="auto", forms=forms)
    assert any(f.form == "matmulnbits" for f in forms)
    as_loaded = compare_models(original, deployed, f"{MLP}.eval.npz", measure_latency=False)
    as_packed = compare_models(original, load_packed(result.packed), f"{MLP}.eval.npz", measure_latency=False)
    final = result.report["final"]
    assert final["outputs"] == as_loaded.to_dict()["outputs"] and final["accuracy"] == as_loaded.accuracy
    assert as_packed.to_dict()["outputs"] != final["outputs"]


@pytest.mark.parametrize("table", ["gate", "search"])
def test_recipe_key_max_latency_ratio(table):
    recipe = parse_recipe({"quantize": {}, "gate": {"max_accuracy_drop": 1.0}, table: {"max_latency_ratio": 0.5}}
                          if table == "search" else
                          {"quantize": {}, "gate": {"max_accuracy_drop": 1.0, "max_latency_ratio": 0.5}}, "r")
    assert recipe.max_latency_ratio == 0.5 and recipe.gate == {"max_accuracy_drop": 1.0}
    assert ShrinkOptions(recipe).latency_bound == 0.5
    assert ShrinkOptions(recipe, max_latency_ratio=0.8).latency_bound == 0.8  # the flag wins
    assert ShrinkOptions(recipe).effective_gate == Gate(max_accuracy_drop=1.0)


@pytest.mark.parametrize("data, message", [
    ({"gate": {"max_latency_ratio": 0.5}, "search": {"max_latency_ratio": 0.6}}, "both"),
    ({"search": {"max_latency_ratio": 0}}, "above 0"),
    ({"search": {"max_latency_ratio": "fast"}}, "above 0"),
    ({"search": {"speed": 1}}, "no key 'speed'"),
])
def test_bad_recipe_latency_keys_are_refused(data, message):
    with pytest.raises(UsageError, match=message):
        parse_recipe(data, "r")


@pytest.mark.parametrize("flags, message", [
    (["--max-latency-ratio", "0"], "above 0"),
    (["--max-latency-ratio", "0.5", "--no-latency"], "--no-latency"),
])
def test_bad_latency_flags_exit_2(tmp_path, flags, message):
    result = CliRunner().invoke(app, ["shrink", f"{MLP}.onnx", "-o", str(tmp_path / "o.onnxz"), "--calib",
                                      f"{MLP}.calib.npz", "--eval", f"{MLP}.eval.npz", *flags])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "o.onnxz").exists()


def test_cli_reports_latency_in_summary_json_and_html(tmp_path):
    """Real timings (no margin asserted): the summary line, the JSON object and
    the HTML section; a slower output is flagged in one line, on stderr."""
    out, js, page = tmp_path / "o.onnxz", tmp_path / "r.json", tmp_path / "r.html"
    result = CliRunner().invoke(app, ["shrink", f"{MLP}.onnx", "-o", str(out), "--calib", f"{MLP}.calib.npz",
                                      "--eval", f"{MLP}.eval.npz", "--recipe", "int8", "--json", str(js),
                                      "--report", str(page)])
    assert result.exit_code == 0, result.output
    report = json.loads(js.read_text())
    latency = report["latency"]
    assert latency["form"] == "default load form" and latency["threads"] == 1 and latency["batch"] == 1
    said = " ".join(result.output.split())
    assert "latency (1 thread, median of interleaved runs, default load form):" in said
    assert f"({latency['ratio']:.2f}x" in said
    assert "<h2>Latency</h2>" in page.read_text()
    flagged = [w for w in report["warnings"] if "slower than the original" in w]
    assert bool(flagged) == latency["slower"]


def test_when_none_is_fast_enough_a_smaller_and_faster_candidate_still_wins():
    """Injected: channel-pruned candidates 1.3x, the rest 1.5x: all slower, but
    a channel-pruned one that passes the gate and is smaller beats the winner."""
    original = onnx.load(f"{MLP}.onnx")

    def measure(candidate: onnx.ModelProto) -> Latency:
        return _fixed(1.3 if _weights(candidate) < 0.95 * _weights(original) else 1.5)

    _, result = _run(MLP, measure)
    rows = result.report["search"]
    (chosen,) = [r for r in rows if r["chosen"]]
    others = [r for r in rows if r["passed"] and not r["chosen"]]
    if chosen["pattern"] == "channel":
        assert chosen["latency_ratio"] == 1.3 and all(chosen["size_bytes"] < r["size_bytes"] for r in others
                                                      if r["pattern"] != "channel")
    else:  # channel pruning came out larger here: then the recipe's winner stays
        assert all(r["size_bytes"] >= chosen["size_bytes"] for r in rows if r["pattern"] == "channel" and r["passed"])
    assert result.report["latency"]["slower"] and result.report["warnings"]


def test_shrink_output_loads_within_a_third_of_the_original_not_of_the_pruned_model():
    """digits_mlp's shrink --weight-bits 4,8 output, channel-pruned (what the
    search keeps when the unpruned winner runs slower: injected here), has its
    own float32 weights at about half the original's. It records the
    original's float32 bytes, so the default load form runs its first layer as
    float32 (FusedGemm with its Relu: faster at batch 1 than MatMulNBits and a
    Relu node) with the weights in memory within a third of the original's;
    without the record both large layers would run on MatMulNBits."""
    from onnxshrink.model import data_bytes
    from onnxshrink.packing import deployed_model, load_packed
    from onnxshrink.packing.forms import recorded_reference
    from onnxshrink.recipes import recipe_for

    original = onnx.load(f"{MLP}.onnx")

    def channels(model: onnx.ModelProto) -> int:  # the biases' lengths: channel pruning shortens them
        return sum(int(t.dims[0]) for t in model.graph.initializer if len(t.dims) == 1 and t.data_type == 1)

    def measure(candidate: onnx.ModelProto) -> Latency:
        return _fixed(0.95 if channels(candidate) < channels(original) else 1.2)

    options = ShrinkOptions(load_recipe(recipe_for(original)), gate=Gate(max_accuracy_drop=1.0), weight_bits=(4, 8))
    result = shrink(original, f"{MLP}.calib.npz", options, eval_data=f"{MLP}.eval.npz", measure=measure)
    packed = load_packed(result.packed)
    pruned = data_bytes(load_packed(result.packed, materialize="float"))
    assert recorded_reference(packed) == data_bytes(original) > 1.5 * pruned
    deployed, forms = deployed_model(packed)
    large = {f.weight: f.form for f in forms if f.form != "float" or "float32 runs faster" in f.note}
    assert sorted(large.values()) == ["float", "matmulnbits"]
    assert data_bytes(deployed) <= 0.35 * data_bytes(original)
    del packed.metadata_props[:]
    assert sorted(f.form for f in deployed_model(packed)[1] if f.weight in large) == ["matmulnbits"] * 2
