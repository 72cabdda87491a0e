"""`onnxshrink prune`: every option has a flag, exit codes, the JSON report."""

from __future__ import annotations

import dataclasses
import json
import typing

import numpy as np
import onnx
import typer
from typer.testing import CliRunner

from onnxshrink.cli.prune import prune_command
from onnxshrink.pruning import PruneOptions, n_m_holds

from test_prune import small_net

app = typer.Typer()
app.command("prune")(prune_command)
app.command("other")(lambda: None)  # two commands, so "prune" is a subcommand as in the real app


def test_every_option_has_a_flag_named_after_it():
    hints = typing.get_type_hints(prune_command, include_extras=True)
    flags = set()
    for hint in hints.values():
        for meta in getattr(hint, "__metadata__", ()):
            # in Annotated, typer reads a string first argument as the first flag
            decls = [getattr(meta, "default", None)] + list(getattr(meta, "param_decls", None) or ())
            flags.update(d for d in decls if isinstance(d, str))
    for field in dataclasses.fields(PruneOptions):
        flag = "--" + field.name.replace("_", "-")
        assert flag in flags or any(f.startswith(flag + "/") for f in flags), flag


def write_data(path, n=48, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, 4, 6, 6)).astype(np.float32)
    np.savez(path, x=x)


def test_prune_writes_model_and_json(tmp_path):
    src, out, js, cal = tmp_path / "m.onnx", tmp_path / "o.onnx", tmp_path / "r.json", tmp_path / "c.npz"
    onnx.save(small_net(), src)
    write_data(cal)
    r = CliRunner().invoke(app, ["prune", str(src), "-o", str(out), "--sparsity", "0.5", "--pattern", "2:4",
                                 "--calib", str(cal), "--min-size", "64", "--json", str(js)])
    assert r.exit_code == 0, r.output
    report = json.loads(js.read_text())
    assert report["method"] == "hessian" and report["pattern"] == "2:4"
    assert {t["name"] for t in report["tensors"]} == {"conv_w", "gemm_w", "mm_w"}
    assert report["params"]["nonzero_after"] < report["params"]["nonzero_before"]
    assert report["validation"]["outputs"]["y"]["cosine"] > 0
    pruned = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}
    assert n_m_holds(pruned["gemm_w"], 1)
    assert "conv_w" in r.output  # the table


def test_usage_errors_exit_2(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(small_net(), src)
    runner = CliRunner()
    for args in (["--sparsity", "0.5", "--pattern", "3:4"],
                 ["--sparsity", "0.5", "--method", "wanda"],  # needs --calib
                 ["--max-accuracy-drop", "1"],  # needs --eval
                 []):  # neither sparsity nor target
        r = runner.invoke(app, ["prune", str(src), "-o", str(tmp_path / "o.onnx"), *args])
        assert r.exit_code == 2, (args, r.output)
        assert "error" in r.output
    assert not (tmp_path / "o.onnx").exists()
