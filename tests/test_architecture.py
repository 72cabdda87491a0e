"""The layering of onnxshrink/ (docs/architecture.md), checked from the source.

Imports are read with ast (every import statement, also those inside
functions), so a late import does not hide a circle. The runtime path of a
packed model is checked in a fresh interpreter: what it really loads.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

PACKAGE = Path(__file__).resolve().parent.parent / "onnxshrink"
# Who may never import whom: (importer prefix, imported prefix, why).
FORBIDDEN = (
    ("onnxshrink.quantization", "onnxshrink.pruning", "quantize must not depend on prune (shared math is in stats/)"),
    ("onnxshrink.lowbit", "onnxshrink.pruning", "quantize must not depend on prune (shared math is in stats/)"),
    ("onnxshrink.stats", "onnxshrink.pruning", "stats/ is below the passes"),
    ("onnxshrink.stats", "onnxshrink.lowbit", "stats/ is below the passes"),
    ("onnxshrink.stats", "onnxshrink.quantization", "stats/ is below the passes"),
    ("onnxshrink.packing", "onnxshrink.pruning", "packing reads and writes models, it runs no pass"),
    ("onnxshrink.packing", "onnxshrink.quantization", "packing reads and writes models, it runs no pass"),
    ("onnxshrink.packing", "onnxshrink.lowbit", "packing reads and writes models, it runs no pass"),
    ("onnxshrink.packing", "onnxshrink.search", "packing is below the search"),
)
MAX_LINES = 450
# What the runtime of a packed model (load, unpack, session) must never load.
NOT_AT_RUNTIME = ("onnxsim", "typer", "rich", "click", "torch", "tensorflow")


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The onnxshrink modules ``name`` imports (a ``from package import module`` counts as the module)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in mods and t != name)
    return found


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], dict[str, set[str]]]:
    mods = _modules()
    return mods, {name: _imports(name, path, mods) for name, path in mods.items()}


def _circles(mods: dict[str, Path], edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, package __init__s
    left out (they re-export what is below them)."""
    modules = [m for m in mods if mods[m].name != "__init__.py"]
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if mods[w].name == "__init__.py":
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in modules:
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_late_imports_and_finds_a_circle(tmp_path):
    """The checker itself: a circle closed by an import inside a function is found."""
    (tmp_path / "a.py").write_text("from pkg import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from pkg.a import x\n")
    (tmp_path / "c.py").write_text("import pkg.a\n")
    mods = {"pkg": tmp_path / "__init__.py", **{f"pkg.{n}": tmp_path / f"{n}.py" for n in "abc"}}
    (tmp_path / "__init__.py").write_text("")
    edges = {name: _imports(name, path, mods) for name, path in mods.items()}
    assert edges["pkg.b"] == {"pkg.a"} and edges["pkg.c"] == {"pkg.a"}
    assert _circles(mods, edges) == [["pkg.a", "pkg.b"]]


def test_no_import_circles(graph):
    mods, edges = graph
    assert _circles(mods, edges) == []


def test_forbidden_imports(graph):
    _, edges = graph
    bad = [f"{m} -> {t} ({why})" for m, targets in edges.items() for t in sorted(targets)
           for src, dst, why in FORBIDDEN if (m + ".").startswith(src + ".") and (t + ".").startswith(dst + ".")]
    assert bad == []


def test_only_the_cli_imports_the_cli(graph):
    _, edges = graph
    # __main__ is `python -m onnxshrink`: the command line itself.
    assert [m for m, targets in edges.items() if not m.startswith(("onnxshrink.cli", "onnxshrink.__main__"))
            and any(t.startswith("onnxshrink.cli") for t in targets)] == []


def test_modules_stay_small(graph):
    mods, _ = graph
    long = {name: n for name, path in mods.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these by concept (docs/architecture.md): {long}"


def _weight_only_model() -> "onnx.ModelProto":  # noqa: F821
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_packed_model_runtime_imports_neither_onnxsim_nor_the_cli(tmp_path):
    """Loading, unpacking and running a packed model (int8 QDQ and weight-only,
    which is materialized to float) needs only numpy, onnx and onnxruntime."""
    import onnxshrink
    from onnxshrink.lowbit import WeightOnlyOptions, quantize_weights

    models = tmp_path / "models"
    models.mkdir()
    onnxshrink.pack(PACKAGE.parent / "models" / "digits_mlp.onnx", models / "mlp.onnxz")
    lowbit = quantize_weights(_weight_only_model(), WeightOnlyOptions(bits=4)).model
    onnxshrink.pack(lowbit, models / "int4.onnxz")
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import onnxshrink
        from onnxshrink.packing import inference_session_from_packed, load_packed
        folder = {str(models)!r}
        for name, shape in (("mlp", (2, 64)), ("int4", (2, 64))):
            path = f"{{folder}}/{{name}}.onnxz"
            onnxshrink.load(path)
            onnxshrink.unpack(path, f"{{folder}}/{{name}}.onnx", materialize="float")
            load_packed(path, materialize="auto")
            session = onnxshrink.session(path)
            inference_session_from_packed(path, materialize="qdq")
            feed = {{session.get_inputs()[0].name: np.ones(shape, np.float32)}}
            assert np.isfinite(session.run(None, feed)[0]).all()
        print(" ".join(sorted({{m.split(".")[0] for m in sys.modules}} & set({NOT_AT_RUNTIME!r}))))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
