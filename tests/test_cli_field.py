"""What new users ran into (issue 15), and the README's promises about the command line.

Crashes gone (quantize --dynamic's summary, an accuracy target on unlabelled
data, an input dim declared as -1), messages that say what is wrong (pack of
a packed file, validate of models with different inputs), and the README
held to the truth: --quiet everywhere, plain usage errors, synopses that
match the commands, no calibration asked of a recipe that needs none,
nothing cut at 80 columns when piped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

import typer
from conftest import ROOT, run_cli, save_data, tiny_mlp
from onnx import numpy_helper
from typer.testing import CliRunner

import onnxshrink
from onnxshrink.cli import app
from onnxshrink.data import NpzData, model_inputs
from onnxshrink.pruning import PruneOptions, prune_model
from onnxshrink.validation import AGREEMENT_BASIS

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture
def mlp(tmp_path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(tiny_mlp(hidden=32), path)
    return path


@pytest.fixture
def calib(tmp_path) -> Path:
    return save_data(tmp_path / "calib.npz", labels=False)


@pytest.fixture
def unlabelled(tmp_path) -> Path:
    return save_data(tmp_path / "unlabelled.npz", seed=3, labels=False)


# -- crashes ----------------------------------------------------------------------------------------------------------


def test_quantize_dynamic_prints_its_summary(mlp, tmp_path):
    out = tmp_path / "dyn.onnx"
    result = invoke("quantize", mlp, "-o", out, "--dynamic")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if "fc1" in line or "fc2" in line]
    assert len(rows) == 2 and all("dynamic" in row for row in rows), result.stdout
    assert f"wrote {out}" in result.stdout
    assert any(n.op_type in ("DynamicQuantizeLinear", "MatMulInteger") for n in onnx.load(out).graph.node)


@pytest.fixture
def no_work(monkeypatch):
    """The commands' work, replaced by a marker: reached means nothing refused the command first."""

    class Reached(BaseException):  # not an Exception: the commands' error handling lets it through
        pass

    def reached(*args, **kwargs):
        raise Reached

    for target in ("onnxshrink.cli.shrink.shrink", "onnxshrink.cli.quantize.quantize_model",
                   "onnxshrink.cli.prune.prune_model", "onnxshrink.validate"):
        monkeypatch.setattr(target, reached)
    return Reached


@pytest.mark.parametrize("command", ["shrink", "prune", "quantize", "validate"])
def test_an_accuracy_target_on_unlabelled_eval_is_refused_before_any_work(mlp, calib, unlabelled, tmp_path,
                                                                           no_work, command):
    args = {"shrink": ["shrink", mlp, "-o", tmp_path / "s.onnxz", "--calib", calib, "--eval", unlabelled],
            "prune": ["prune", mlp, "-o", tmp_path / "p.onnx", "--calib", calib, "--eval", unlabelled],
            "quantize": ["quantize", mlp, "-o", tmp_path / "q.onnx", "--calib", calib, "--eval", unlabelled],
            "validate": ["validate", mlp, mlp, "--data", unlabelled]}[command]
    result = invoke(*args, "--max-accuracy-drop", "1")
    assert result.exit_code == 2, result.output
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        f"onnxshrink: error: --max-accuracy-drop needs labels in {unlabelled}: add an array 'labels' "
        "(one class per sample), or gate on --min-cosine instead"]
    assert not result.exception or isinstance(result.exception, SystemExit)


def test_a_recipes_accuracy_gate_on_unlabelled_eval_is_left_to_the_measurement(mlp, calib, unlabelled, tmp_path,
                                                                              no_work):
    """Only an explicit flag is refused up front: the recipe's own gate on
    unlabelled data is measured by the pipeline (accuracy_gate_basis is the hook)."""
    with pytest.raises(no_work):
        invoke("shrink", mlp, "-o", tmp_path / "s.onnxz", "--calib", calib, "--eval", unlabelled)


@pytest.mark.parametrize("pattern", ["unstructured", "channel"])
def test_prune_search_on_unlabelled_data_keeps_the_original_answers(calib, unlabelled, pattern):
    """Through the API (a recipe's gate, not a user's flag) an accuracy target on
    unlabelled data is the share of the original's top-1 answers that may change."""
    result = prune_model(tiny_mlp(hidden=32), PruneOptions(max_accuracy_drop=5.0, pattern=pattern),
                         calib=NpzData(calib), eval_data=NpzData(unlabelled))
    v = result.report.validation
    assert v.passed and v.basis == AGREEMENT_BASIS and v.accuracy is None
    assert v.answers_changed["points"] <= 5.0 and v.outputs["y"]["kind"] == "class_scores"
    assert all("accuracy_drop" in step for step in result.report.search if "passed" in step)


def with_minus_one_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its inputs' and outputs' first dim declared as dim_value -1."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in list(m.graph.input) + list(m.graph.output):
        dim = vi.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_param")
        dim.dim_value = -1
    return m


def test_a_minus_one_dim_is_symbolic(tmp_path):
    assert model_inputs(with_minus_one_batch(tiny_mlp()))[0].shape == (None, 8)


def initializers(path: Path) -> dict[str, bytes]:
    return {t.name: numpy_helper.to_array(t).tobytes() for t in onnx.load(path).graph.initializer}


def test_a_minus_one_batch_dim_works_like_a_symbolic_one(tmp_path, calib):
    """quantize, prune, shrink and validate take it, and give what they give for the symbolic model."""
    eval_data = save_data(tmp_path / "eval.npz", seed=4)
    symbolic, minus = tmp_path / "sym.onnx", tmp_path / "neg.onnx"
    onnx.save(tiny_mlp(hidden=32), symbolic)
    onnx.save(with_minus_one_batch(tiny_mlp(hidden=32)), minus)
    for name in ("sym", "neg"):
        model = tmp_path / f"{name}.onnx"
        for args in (["quantize", model, "-o", tmp_path / f"{name}.q.onnx", "--calib", calib],
                     ["prune", model, "-o", tmp_path / f"{name}.p.onnx", "--calib", calib, "--eval", eval_data,
                      "--min-cosine", "0.99"],
                     ["shrink", model, "-o", tmp_path / f"{name}.s.onnxz", "--calib", calib, "--eval", eval_data,
                      "--min-cosine", "0.99"]):
            result = invoke(*args, "-q")
            assert result.exit_code == 0, (args[0], name, result.output)
    assert initializers(tmp_path / "neg.q.onnx") == initializers(tmp_path / "sym.q.onnx")
    assert initializers(tmp_path / "neg.p.onnx") == initializers(tmp_path / "sym.p.onnx")
    report = onnxshrink.validate(minus, tmp_path / "neg.q.onnx", eval_data)
    assert report.samples == 20 and report.accuracy["labelled"] == 20
    result = invoke("validate", minus, symbolic, "--data", eval_data, "--min-cosine", "1.0", "-q")
    assert result.exit_code == 0, result.output


# -- messages that say what is wrong ----------------------------------------------------------------------------------


def test_pack_of_a_packed_model_says_so(mlp, tmp_path):
    packed = tmp_path / "m.onnxz"
    assert invoke("pack", mlp, "-o", packed, "-q").exit_code == 0
    result = invoke("pack", packed, "-o", tmp_path / "again.onnxz")
    assert result.exit_code == 2
    assert "already packed" in result.stderr and f"onnxshrink unpack {packed}" in result.stderr
    assert not (tmp_path / "again.onnxz").exists()


def renamed_input(model: onnx.ModelProto, new: str) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    old = m.graph.input[0].name
    m.graph.input[0].name = new
    for node in m.graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
    return m


def test_validate_names_the_input_that_differs(tmp_path):
    reference = tmp_path / "ref.onnx"
    onnx.save(tiny_mlp(), reference)
    half = tiny_mlp()
    half.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    data = save_data(tmp_path / "d.npz")
    for name, candidate, expected in (
        ("renamed", renamed_input(tiny_mlp(), "features"),
         "'x' (float32 [?, 8]) is an input of the reference only; the candidate takes features"),
        ("dtype", half, "input 'x' differs: reference float32 [?, 8], candidate float64 [?, 8]"),
    ):
        path = tmp_path / f"{name}.onnx"
        onnx.save(candidate, path)
        result = invoke("validate", reference, path, "--data", data)
        assert result.exit_code == 2, result.output
        assert expected in result.stderr and "onnxruntime failed" not in result.stderr, result.stderr


# -- the README's promises ---------------------------------------------------------------------------------------------


def click_commands() -> dict:
    return typer.main.get_command(app).commands


def test_every_command_takes_quiet(mlp):
    for name, command in click_commands().items():
        assert any("--quiet" in p.opts and "-q" in p.opts for p in command.params), name
    result = run_cli("recipes", "--quiet")
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""


@pytest.mark.parametrize("args, problem", [
    (["quantize", "m.onnx", "-o", "q.onnx", "--bogus-option"], "No such option: --bogus-option"),
    (["quantize", "m.onnx"], "Missing option '--output'"),
    (["prune", "m.onnx", "-o", "p.onnx", "--sparsity", "half"], "Invalid value for '--sparsity'"),
    (["shrink"], "Missing argument 'MODEL'"),
    (["nosuchcommand"], "No such command 'nosuchcommand'"),
])
def test_usage_errors_are_a_few_plain_lines_ending_with_the_problem(args, problem):
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("Usage: onnxshrink ") or "No such command" in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 3, lines
    assert problem in lines[-1], lines
    assert not any(c in result.stderr for c in "╭│╰─") and "Traceback" not in result.stderr


def synopses() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| command | what it does |"):readme.index("## Data files")]
    return [m.replace("\\|", "|") for m in re.findall(r"^\| `(onnxshrink [^`]*)`", table, flags=re.M)]


def test_the_readme_synopses_match_the_commands():
    """Each README synopsis names real options; an option outside [...] and (...|...) is one the
    command requires, an option inside them one it does not; positional arguments likewise."""
    commands = click_commands()
    documented = set()
    for synopsis in synopses():
        words = synopsis.split()
        command = commands[words[1]]
        documented.add(words[1])
        options = {o: p for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}
        arguments = [p for p in command.params if not any(o.startswith("-") for o in p.opts)]
        depth, expects_value, positional = 0, False, []
        for word in words[2:]:
            opened = word.count("[") + word.count("(")
            token = word.strip("[]()")
            if expects_value:
                expects_value = False
            elif token == "|":
                pass
            elif token.startswith("-"):
                assert token in options, f"{synopsis}: {token} is not an option of {words[1]}"
                param = options[token]
                assert param.required == (depth + opened == 0), f"{synopsis}: {token} required={param.required}"
                expects_value = not param.is_flag
            else:
                positional.append((token, depth + opened == 0))
            depth += opened - word.count("]") - word.count(")")
        assert [(p.name.upper(), p.required) for p in arguments] == [(t, required) for t, required in positional], \
            synopsis
        for param in options.values():
            if param.required:
                assert set(param.opts) & set(words), f"{synopsis}: required {param.opts} missing"
    assert documented == set(commands)


def test_a_recipe_that_neither_prunes_nor_quantizes_needs_no_calibration(mlp, tmp_path):
    out = tmp_path / "l.onnxz"
    result = invoke("shrink", mlp, "-o", out, "--recipe", "lossless", "-q")
    assert result.exit_code == 0, result.output
    assert initializers_of(onnxshrink.load(out)) == initializers_of(onnx.load(mlp))
    result = invoke("shrink", mlp, "-o", tmp_path / "i.onnxz", "--recipe", "int8", "--min-cosine", "0.9")
    assert result.exit_code == 2 and "recipe 'int8' quantizes: give --calib DATA" in result.stderr


def initializers_of(model: onnx.ModelProto) -> dict[str, bytes]:
    return {t.name: numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}


LONG = "encoder.layers.11.self_attention.query_key_value.dense"


def long_named_mlp() -> onnx.ModelProto:
    """tiny_mlp whose weights and nodes have names as long as a real transformer's."""
    model = tiny_mlp(hidden=32)
    rename = {t.name: f"{LONG}.{t.name}" for t in model.graph.initializer}
    for t in model.graph.initializer:
        t.name = rename[t.name]
    for node in model.graph.node:
        node.name = f"/{LONG}/{node.name}/{node.op_type}"
        node.input[:] = [rename.get(i, i) for i in node.input]
    return model


def run_at_80_columns(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from onnxshrink.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env={**os.environ, "COLUMNS": "80"})


def test_nothing_is_cut_at_80_columns_when_piped(tmp_path, calib):
    model = tmp_path / "long.onnx"
    onnx.save(long_named_mlp(), model)
    data = save_data(tmp_path / "eval.npz", seed=5)
    names = [t.name for t in onnx.load(model).graph.initializer]
    nodes = [n.name for n in onnx.load(model).graph.node]
    runs = {
        "recipes": (["recipes"], ["cnn-default", "transformer-default", "lossless", "int8"]),
        "inspect": (["inspect", model], names),
        "quantize": (["quantize", model, "-o", "q.onnx", "--calib", calib, "--eval", data], nodes[:1] + nodes[2:3]),
        "dynamic": (["quantize", model, "-o", "d.onnx", "--dynamic"], nodes[:1] + nodes[2:3]),
        "pack": (["pack", model, "-o", "p.onnxz"], [n for n in names if n[-2] == "w"]),
        "prune": (["prune", model, "-o", "r.onnx", "--sparsity", "0.5"], [n for n in names if n.endswith("w1")]),
        "validate": (["validate", model, "q.onnx", "--data", data], ["y"]),
        "shrink": (["shrink", model, "-o", "s.onnxz", "--recipe", "lossless"], ["lossless"]),
    }
    for tag, (args, expected) in runs.items():
        result = run_at_80_columns(*args, cwd=tmp_path)
        assert result.returncode == 0, (tag, result.stderr)
        text = result.stdout + result.stderr
        assert "…" not in text, (tag, text)
        assert all(len(line) <= 80 for line in text.splitlines()), (tag, text)
        for name in expected:
            assert name in result.stdout, (tag, name, result.stdout)
