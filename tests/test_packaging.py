"""The package as a user installs it: metadata, entry points, and what each path imports."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import onnxshrink

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Top-level modules the library may import, by the distribution that provides them.
PROVIDED_BY = {"onnx": "onnx", "onnxruntime": "onnxruntime", "numpy": "numpy", "onnxsim": "onnxsim",
               "typer": "typer", "rich": "rich", "tomli": "tomli"}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)


def test_metadata_is_release_grade():
    assert PROJECT["license"] == "Apache-2.0"  # an SPDX expression, not the deprecated table
    assert (ROOT / "LICENSE").read_text().count("Apache License") >= 1
    assert {"Repository", "Documentation"} <= set(PROJECT["urls"])
    assert any(c.startswith("Programming Language :: Python :: 3.") for c in PROJECT["classifiers"])
    assert importlib.metadata.version("onnxshrink") == onnxshrink.__version__


def test_every_third_party_import_is_a_declared_dependency():
    declared = {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower() for d in PROJECT["dependencies"]}
    stdlib = set(sys.stdlib_module_names)
    used: dict[str, str] = {}
    for path in (ROOT / "onnxshrink").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in stdlib and top != "onnxshrink":
                    used.setdefault(top, str(path.relative_to(ROOT)))
    undeclared = {top: where for top, where in used.items() if PROVIDED_BY.get(top, top) not in declared}
    assert not undeclared, f"imported but not declared in pyproject dependencies: {undeclared}"


def test_version_flag_and_python_dash_m():
    r = _run("-m", "onnxshrink", "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"onnxshrink {onnxshrink.__version__}"
    r = _run("-m", "onnxshrink", "--help")
    assert r.returncode == 0, r.stderr
    assert "shrink" in r.stdout and "quantize" in r.stdout


def test_onnxsim_is_imported_only_where_simplification_runs():
    code = ("import sys, onnxshrink, onnxshrink.cli, onnxshrink.packing, onnxshrink.quantization, onnxshrink.pruning; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'onnxsim'))")
    r = _run("-c", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_loading_a_packed_model_needs_neither_the_cli_nor_onnxsim(tmp_path):
    packed = tmp_path / "m.onnxz"
    onnxshrink.pack(ROOT / "models" / "digits_mlp.onnx", packed)
    code = (f"import sys, onnxshrink; onnxshrink.session({str(packed)!r}); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'onnxsim', 'typer', 'rich', 'click'}))")
    r = _run("-c", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
