"""validate: same-model identity, gates that fail when they should, data checks, saved outputs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from conftest import BUNDLED, bundled, run_cli, save_data, tiny_mlp
from onnxshrink.data import NpzData, model_inputs
from onnxshrink.errors import DataError, GateFailed
from onnxshrink.validation import AGREEMENT_BASIS, Gate, compare_models


def _perturbed(model: onnx.ModelProto, scale: float = 0.5) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    t = max(copy.graph.initializer, key=lambda t: np.prod(t.dims))
    a = numpy_helper.to_array(t).copy()
    a += np.random.default_rng(0).normal(0, a.std() * scale, a.shape).astype(a.dtype)
    t.CopyFrom(numpy_helper.from_array(a, t.name))
    return copy


def test_same_model_is_identical(mlp_path, mlp_data):
    report = compare_models(mlp_path, mlp_path, mlp_data, gate=Gate(min_cosine=0.999999, max_accuracy_drop=0.0))
    assert report.passed
    y = report.outputs["y"]
    assert y["cosine"] == 1.0 and y["max_abs_error"] == 0.0 and y["sqnr_db"] is None
    assert report.accuracy["reference"] == report.accuracy["candidate"]
    assert report.samples == 20 and report.latency_ms["candidate"] > 0


def test_perturbed_model_fails_the_gate(tmp_path, mlp_path, mlp_data):
    bad = tmp_path / "bad.onnx"
    onnx.save(_perturbed(tiny_mlp()), bad)
    report = compare_models(mlp_path, bad, mlp_data, gate=Gate(min_cosine=0.9999))
    assert not report.passed and "cosine" in report.failures[0]
    with pytest.raises(GateFailed):
        report.raise_if_failed()
    result = run_cli("validate", mlp_path, bad, "--data", mlp_data, "--min-cosine", "0.9999", "--json", tmp_path / "r.json")
    assert result.returncode == 1, result.stderr
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["passed"] is False and {"outputs", "accuracy", "latency_ms", "size_bytes"} <= set(saved)


def test_metrics_match_numpy(tmp_path, mlp_path, mlp_data):
    bad = tmp_path / "bad.onnx"
    onnx.save(_perturbed(tiny_mlp(), 0.1), bad)
    report = compare_models(mlp_path, bad, mlp_data, measure_latency=False)
    x = np.load(mlp_data)["x"]
    ya = ort.InferenceSession(str(mlp_path)).run(None, {"x": x})[0].astype(np.float64)
    yb = ort.InferenceSession(str(bad)).run(None, {"x": x})[0].astype(np.float64)
    m = report.outputs["y"]
    assert m["cosine"] == pytest.approx((ya * yb).sum() / np.linalg.norm(ya) / np.linalg.norm(yb), abs=1e-9)
    assert m["max_abs_error"] == pytest.approx(np.abs(ya - yb).max(), rel=1e-6)
    assert m["sqnr_db"] == pytest.approx(10 * np.log10((ya**2).sum() / ((ya - yb) ** 2).sum()), abs=1e-3)
    assert m["top1_agreement"] == pytest.approx((ya.argmax(1) == yb.argmax(1)).mean())


def test_accuracy_counts_the_samples_that_changed_verdict(tmp_path, mlp_path, mlp_data):
    # The drop in points is net; the report also says how many samples the
    # candidate newly gets wrong and newly gets right (on small eval sets a
    # few tenths of a point are one or two samples either way).
    bad = tmp_path / "bad.onnx"
    onnx.save(_perturbed(tiny_mlp(), 1.0), bad)
    data = np.load(mlp_data)
    ya = ort.InferenceSession(str(mlp_path)).run(None, {"x": data["x"]})[0].argmax(1) == data["labels"]
    yb = ort.InferenceSession(str(bad)).run(None, {"x": data["x"]})[0].argmax(1) == data["labels"]
    lost, gained = int((ya & ~yb).sum()), int((yb & ~ya).sum())
    assert lost > gained  # the perturbation must cost accuracy for this test to mean anything
    report = compare_models(mlp_path, bad, mlp_data, gate=Gate(max_accuracy_drop=0.0), batch_size=7,
                            measure_latency=False)
    a = report.accuracy
    assert (a["labelled"], a["lost"], a["gained"]) == (len(data["labels"]), lost, gained)
    assert report.accuracy_drop_points == pytest.approx(100 * (lost - gained) / len(data["labels"]))
    assert f"{lost} of {len(data['labels'])} samples newly wrong, {gained} newly right" in report.failures[0]
    assert f"one sample is {100 / len(data['labels']):.3g} points" in report.failures[0]


def test_reference_outputs_from_another_framework(tmp_path, mlp_path, mlp_data):
    x = np.load(mlp_data)["x"]
    y = ort.InferenceSession(str(mlp_path)).run(None, {"x": x})[0]
    np.savez(tmp_path / "saved.npz", y=y + 1e-4)
    result = run_cli("validate", mlp_path, "--reference-outputs", tmp_path / "saved.npz", "--data", mlp_data,
                     "--min-cosine", "0.9999", "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "r.json").read_text())["outputs"]["y"]["max_abs_error"] == pytest.approx(1e-4, rel=0.1)
    np.savez(tmp_path / "wrong.npz", y=-y)
    assert run_cli("validate", mlp_path, "--reference-outputs", tmp_path / "wrong.npz", "--data", mlp_data,
                   "--min-cosine", "0.9").returncode == 1


def test_synthetic_inputs_warn_and_give_no_verdict(tmp_path, mlp_path):
    result = run_cli("validate", mlp_path, mlp_path, "--json", tmp_path / "r.json")
    assert result.returncode == 0 and "fidelity only" in result.stderr
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["synthetic_inputs"] is True and saved["checked_on"] == "random inputs" and saved["passed"] is None
    # A gate on random inputs would be no gate: refused before any work.
    gated = run_cli("validate", mlp_path, mlp_path, "--min-cosine", "0.99")
    assert gated.returncode == 2 and "--data" in gated.stderr
    report = compare_models(mlp_path, mlp_path, None, gate=Gate(min_cosine=0.99), measure_latency=False)
    assert report.passed is None and report.synthetic_inputs and not report.failures


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"z": np.zeros((4, 8), np.float32)}, "no array for model input 'x'"),
        ({"x": np.zeros((4, 8), np.float64)}, "float64"),
        ({"x": np.zeros((4, 9), np.float32)}, "shape"),
        ({"x": np.zeros((0, 8), np.float32)}, "no samples"),
        ({"x": np.full((4, 8), np.nan, np.float32)}, "NaN"),
        ({"x": np.zeros((4, 8), np.float32), "labels": np.zeros(4, np.float32)}, "labels"),
    ],
)
def test_bad_data_is_refused(tmp_path, mlp_path, arrays, message):
    data = tmp_path / "d.npz"
    np.savez(data, **arrays)
    with pytest.raises(DataError, match=message):
        compare_models(mlp_path, mlp_path, data, measure_latency=False)
    result = run_cli("validate", mlp_path, mlp_path, "--data", data, "--json", tmp_path / "r.json")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.json").exists()


def test_accuracy_gate_without_labels_counts_the_original_answers_that_changed(mlp_path, tmp_path):
    # No labels: max_accuracy_drop X allows X % of the original's top-1 answers to change.
    data = save_data(tmp_path / "nolabels.npz", n=200, labels=False)
    bad = tmp_path / "bad.onnx"
    onnx.save(_perturbed(tiny_mlp(), 0.3), bad)
    x = np.load(data)["x"]
    ya = ort.InferenceSession(str(mlp_path)).run(None, {"x": x})[0].argmax(1)
    yb = ort.InferenceSession(str(bad)).run(None, {"x": x})[0].argmax(1)
    changed = 100 * float((ya != yb).mean())
    assert 1 < changed < 50  # the perturbation must move some answers, not all
    report = compare_models(mlp_path, bad, data, gate=Gate(max_accuracy_drop=changed + 0.1), measure_latency=False)
    assert report.passed and report.basis == AGREEMENT_BASIS and report.accuracy is None
    assert report.answers_changed == {"points": pytest.approx(changed), "output": "y"}
    assert report.outputs["y"]["kind"] == "class_scores"
    strict = compare_models(mlp_path, bad, data, gate=Gate(max_accuracy_drop=changed - 0.6), measure_latency=False)
    assert strict.passed is False and "of the original's answers changed" in strict.failures[0]
    # An explicit flag on unlabelled data is refused before any work, in one line.
    result = run_cli("validate", mlp_path, bad, "--data", data, "--max-accuracy-drop", "1")
    assert result.returncode == 2 and "needs labels" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_data_streams_in_batches_across_a_folder(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    for i in range(3):
        save_data(folder / f"part{i}.npz", n=10, seed=i)
    source = NpzData(folder)
    assert source.num_samples == 30 and source.has_labels
    batches = list(source.batches(model_inputs(tiny_mlp()), batch_size=4))
    assert [len(b) for b in batches] == [4, 4, 2] * 3
    x = np.concatenate([b.inputs["x"] for b in batches])
    assert np.array_equal(x[:10], np.load(folder / "part0.npz")["x"])


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_model_validates_against_itself(name):
    path = bundled(name)
    report = compare_models(path, path, path.with_suffix("").with_suffix(".eval.npz"), measure_latency=False)
    assert report.passed is None  # no gate, no verdict
    assert all(m["cosine"] > 0.999999 and m["agreement"] == 1.0 for m in report.outputs.values())
    assert report.samples >= 500
    assert report.accuracy["reference"] >= 0.9


def test_validate_on_data_without_a_threshold_holds_the_default_floor(tmp_path, mlp_path, mlp_data):
    """With --data and no threshold the verdict is the default floor (every output keeps 98 %
    of the reference's answers): the same model passes, a broken one fails with exit 1;
    --no-gate measures only (passed null, exit 0); random inputs give no verdict."""
    same = run_cli("validate", mlp_path, mlp_path, "--data", mlp_data, "--json", tmp_path / "same.json")
    assert same.returncode == 0, same.stderr
    saved = json.loads((tmp_path / "same.json").read_text())
    assert saved["passed"] is True and saved["gate"] == {"min_agreement": 0.98}
    bad = tmp_path / "bad.onnx"
    onnx.save(_perturbed(tiny_mlp(), 1.0), bad)
    broken = run_cli("validate", mlp_path, bad, "--data", mlp_data, "--json", tmp_path / "bad.json")
    assert broken.returncode == 1 and "keeps" in broken.stderr + broken.stdout
    assert json.loads((tmp_path / "bad.json").read_text())["passed"] is False
    measured = run_cli("validate", mlp_path, bad, "--data", mlp_data, "--no-gate", "--json", tmp_path / "m.json")
    assert measured.returncode == 0, measured.stderr
    assert json.loads((tmp_path / "m.json").read_text())["passed"] is None
    random = run_cli("validate", mlp_path, mlp_path, "--json", tmp_path / "r.json")
    assert random.returncode == 0 and json.loads((tmp_path / "r.json").read_text())["passed"] is None
