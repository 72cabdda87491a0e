"""Each command's JSON report, made on the bundled models, holds exactly what
docs/json.md says: every field documented, every required field there, every
type right; and each command says where it wrote its report.

A failure names the field and the table of docs/json.md to add it to.
"""

from __future__ import annotations

import copy
import json

import pytest
from typer.testing import CliRunner

import json_contract
from conftest import MODELS
from onnxshrink.cli import app

MLP, CNN = MODELS / "digits_mlp", MODELS / "digits_cnn"


def _runs(tmp):
    """(label, command line) of every kind of report; ``{json}`` is the report's path."""
    m, c = f"{MLP}.onnx", f"{CNN}.onnx"
    return [
        ("inspect", ["inspect", c]),
        ("validate with labels", ["validate", m, m, "--data", f"{MLP}.eval.npz"]),
        ("validate on random inputs", ["validate", m, m]),
        ("pack --float16-small", ["pack", m, "-o", tmp / "p.onnxz", "--float16-small"]),
        ("quantize static with a target", ["quantize", m, "-o", tmp / "q.onnx", "--calib", f"{MLP}.calib.npz",
                                           "--eval", f"{MLP}.eval.npz", "--max-accuracy-drop", "0.1"]),
        ("quantize --dynamic", ["quantize", m, "-o", tmp / "qd.onnx", "--dynamic"]),
        ("quantize --weights-only", ["quantize", m, "-o", tmp / "qw.onnx", "--weights-only", "--bits", "4",
                                     "--eval", f"{MLP}.eval.npz"]),
        ("prune with a target", ["prune", m, "-o", tmp / "pr.onnx", "--max-accuracy-drop", "0.5",
                                 "--calib", f"{MLP}.calib.npz", "--eval", f"{MLP}.eval.npz"]),
        ("prune channels after onnxsim", ["prune", c, "-o", tmp / "pc.onnx", "--pattern", "channel", "--sparsity", "0.3",
                                          "--calib", f"{CNN}.calib.npz", "--simplify"]),
        ("shrink searched, with --report", ["shrink", c, "-o", tmp / "s.onnxz", "--calib", f"{CNN}.calib.npz",
                                            "--eval", f"{CNN}.eval.npz", "--max-accuracy-drop", "1",
                                            "--report", tmp / "s.html"]),
        ("shrink with weight widths 4,8", ["shrink", m, "-o", tmp / "s2.onnxz", "--calib", f"{MLP}.calib.npz",
                                           "--min-cosine", "0.99", "--weight-bits", "4,8"]),
        ("shrink lossless", ["shrink", m, "-o", tmp / "s3.onnxz", "--recipe", "lossless"]),
    ]


LABELS = [label for label, _ in _runs(MODELS)]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """label -> (exit code, output, JSON path, command line)."""
    tmp = tmp_path_factory.mktemp("json")
    runner = CliRunner()
    done = {}
    for i, (label, args) in enumerate(_runs(tmp)):
        path = tmp / f"report{i}.json"
        args = [str(a) for a in args] + ["--json", str(path)]
        result = runner.invoke(app, args, env={"COLUMNS": "200"})
        done[label] = (result.exit_code, result.output, path, args)
    return done


@pytest.fixture(scope="module")
def documented():
    return json_contract.load()


@pytest.mark.parametrize("label", LABELS)
def test_report_matches_docs_json_md(reports, documented, label):
    code, output, path, args = reports[label]
    assert code == 0, f"onnxshrink {' '.join(args)}: exit {code}\n{output[-2000:]}"
    report = json.loads(path.read_text())
    schema = report.get("schema")
    assert schema in documented, f"{label}: schema {schema!r} has no section in docs/json.md ({sorted(documented)})"
    assert list(report)[0] == "schema"
    problems = json_contract.check(report, documented[schema], schema, f"onnxshrink {label}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("label", LABELS)
def test_command_says_where_its_report_went(reports, label):
    code, output, path, args = reports[label]
    assert f"JSON report written to {path}" in output
    if "--report" in args:
        html = args[args.index("--report") + 1]
        assert f"HTML report written to {html}" in output


def test_every_documented_schema_is_made_by_some_command(reports, documented):
    made = {json.loads(path.read_text())["schema"] for code, _, path, _ in reports.values() if code == 0}
    assert made == set(documented), f"documented but not made: {set(documented) - made}; made: {made}"


def test_an_undocumented_field_names_the_table_to_add_it_to(reports, documented):
    _, _, path, _ = reports["shrink searched, with --report"]
    report = json.loads(path.read_text())
    report["speed"] = {"reference_ms": 1.0}
    report["final"]["outputs"]["logits"]["flavour"] = 0.9
    problems = json_contract.check(report, documented["onnxshrink.shrink/1"], "onnxshrink.shrink/1")
    assert any("`speed` is not documented" in p and "`onnxshrink.shrink/1` table" in p for p in problems), problems
    # A field of a shared block goes in the block's table, under its path there.
    assert any("`final.outputs.*.flavour` is not documented" in p and "`outputs.*.flavour`" in p
               and "`block validation` table" in p for p in problems), problems
    assert len(problems) == 2


def test_a_missing_field_and_a_wrong_type_are_caught(reports, documented):
    _, _, path, _ = reports["shrink searched, with --report"]
    report = json.loads(path.read_text())
    broken = copy.deepcopy(report)
    del broken["layers"][0]["kept_float"]
    broken["output_bytes"] = "20 KiB"
    broken["final"]["accuracy"]["labelled"] = None
    problems = json_contract.check(broken, documented["onnxshrink.shrink/1"], "onnxshrink.shrink/1")
    assert any("`layers[].kept_float` is missing" in p for p in problems), problems
    assert any("`output_bytes` is str" in p and "says integer" in p for p in problems), problems
    assert any("`final.accuracy.labelled` is null" in p for p in problems), problems


def test_rows_are_well_formed():
    schemas, blocks = json_contract.parse(json_contract.DOC.read_text())
    for sid, rows in schemas.items():
        assert sid.startswith("onnxshrink.") and sid.rsplit("/", 1)[1].isdigit(), sid
        assert any(r.path == "schema" and r.stability == "stable" for r in rows), f"{sid}: no `schema` row"
    for name, rows in {**schemas, **blocks}.items():
        paths = [r.path for r in rows]
        assert len(paths) == len(set(paths)), f"{name}: a path documented twice"
    with pytest.raises(ValueError, match="unknown type"):
        json_contract.parse("## `onnxshrink.x/1`\n\n| `a` | strnig | | stable | |\n")


def test_a_probability_map_report_matches_docs_json_md(tmp_path, documented):
    """A text detector's map (here a sigmoid of a blurred page, as large as the page) is
    reported with its regions' counts, each documented."""
    from test_validation_regions import _blurred_pages, _map_model
    import numpy as np
    import onnx

    onnx.save(_map_model(12.0, 0.5), tmp_path / "ref.onnx")
    onnx.save(_map_model(12.0, 0.4), tmp_path / "cand.onnx")
    np.savez(tmp_path / "eval.npz", x=_blurred_pages(3))
    path = tmp_path / "v.json"
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "ref.onnx"), str(tmp_path / "cand.onnx"),
                                      "--data", str(tmp_path / "eval.npz"), "--json", str(path)])
    assert result.exit_code == 0, result.output
    report = json.loads(path.read_text())
    outputs = report["outputs"] if "outputs" in report else report["validation"]["outputs"]
    assert outputs["map"]["kind"] == "probability_map" and outputs["map"]["regions_original"] > 0
    problems = json_contract.check(report, documented[report["schema"]], report["schema"], "onnxshrink validate")
    assert not problems, "\n".join(problems)
