"""The default path needs no labels, quantize never hands back a broken model
without saying so, and a check on random inputs is never a pass (issue 16)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import MODELS, run_cli
from onnxshrink.validation import AGREEMENT_BASIS

CNN, CALIB, EVAL = MODELS / "digits_cnn.onnx", MODELS / "digits_cnn.calib.npz", MODELS / "digits_cnn.eval.npz"


@pytest.fixture
def unlabelled(tmp_path):
    path = tmp_path / "unlabelled.npz"
    np.savez(path, **{k: v for k, v in np.load(EVAL).items() if k != "labels"})
    return path


def test_default_shrink_on_unlabelled_eval_keeps_the_original_answers(tmp_path, unlabelled):
    out, report = tmp_path / "u.onnxz", tmp_path / "r.json"
    result = run_cli("shrink", CNN, "-o", out, "--calib", CALIB, "--eval", unlabelled, "--json", report)
    assert result.returncode == 0, result.stderr
    assert out.exists() and out.stat().st_size * 4 < CNN.stat().st_size
    final = json.loads(report.read_text())["final"]
    assert final["passed"] is True and final["basis"] == AGREEMENT_BASIS and final["accuracy"] is None
    assert final["gate"] == {"max_accuracy_drop": 1.0} and final["checked_on"] == "eval data"
    assert final["answers_changed"]["points"] <= 1.0 and final["outputs"]["logits"]["kind"] == "class_scores"
    assert "measured as agreement with the original model's answers" in result.stdout


def test_quantize_without_a_gate_refuses_a_broken_model(tmp_path):
    # Weight codes in a 2-bit range: the int8 model loses a third of the digits' answers.
    out, report = tmp_path / "q.onnx", tmp_path / "q.json"
    args = ["quantize", CNN, "-o", out, "--calib", CALIB, "--weight-range-bits", "2", "--json", report]
    refused = run_cli(*args)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "default quality floor" in refused.stderr and "nothing written" in refused.stderr
    assert not out.exists() and not report.exists()
    written = run_cli(*args, "--no-gate", "-q")
    assert written.returncode == 0 and out.exists(), written.stderr
    validation = json.loads(report.read_text())["validation"]
    assert validation["passed"] is None and validation["gate"] == {}  # nothing was gated, nothing passed
    assert validation["outputs"]["logits"]["agreement"] < 0.98


def test_quantize_says_which_floor_it_checked(tmp_path):
    report = tmp_path / "q.json"
    result = run_cli("quantize", CNN, "-o", tmp_path / "q.onnx", "--calib", CALIB, "--json", report)
    assert result.returncode == 0, result.stderr
    validation = json.loads(report.read_text())["validation"]
    assert validation["passed"] is True and validation["gate"] == {"min_agreement": 0.98}
    assert validation["checked_on"] == "calibration data" and validation["outputs"]["logits"]["agreement"] >= 0.98
    assert "checked on calibration data (min_agreement 0.98): passed" in result.stdout


def test_weight_only_without_a_gate_refuses_a_broken_model(tmp_path):
    out = tmp_path / "w2.onnx"
    result = run_cli("quantize", CNN, "-o", out, "--weights-only", "--bits", "2", "--calib", CALIB)
    assert result.returncode == 1 and "default quality floor" in result.stderr and not out.exists()


def test_a_check_on_random_inputs_is_never_a_pass(tmp_path):
    report = tmp_path / "d.json"
    result = run_cli("quantize", MODELS / "digits_transformer.onnx", "-o", tmp_path / "d.onnx", "--dynamic",
                     "--json", report)
    assert result.returncode == 0, result.stderr
    validation = json.loads(report.read_text())["validation"]
    assert validation["synthetic_inputs"] is True and validation["checked_on"] == "random inputs"
    assert validation["passed"] is None and "no verdict" in result.stdout
    assert validation["outputs"]["logits"]["kind"] == "class_scores"


def test_min_agreement_is_a_target_without_labels(tmp_path, unlabelled):
    """What the floor refuses, --min-agreement repairs: the most sensitive nodes go back to
    float until 98 % of the original's answers hold (on unlabelled eval data)."""
    out, report = tmp_path / "q.onnx", tmp_path / "q.json"
    result = run_cli("quantize", CNN, "-o", out, "--calib", CALIB, "--eval", unlabelled, "--weight-range-bits", "2",
                     "--min-agreement", "0.98", "--json", report, "-q")
    assert result.returncode == 0, result.stderr
    saved = json.loads(report.read_text())
    assert saved["target"]["met"] and saved["target"]["min_agreement"] == 0.98 and saved["left_float"]
    validation = saved["validation"]
    assert validation["passed"] and validation["gate"] == {"min_agreement": 0.98}
    assert validation["outputs"]["logits"]["agreement"] >= 0.98 and validation["checked_on"] == "eval data"
    check = run_cli("validate", CNN, out, "--data", unlabelled, "--min-agreement", "0.999", "--no-latency")
    assert check.returncode == (0 if validation["outputs"]["logits"]["agreement"] >= 0.999 else 1)
