"""Shared fixtures: tiny models built inline, and paths to the bundled models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
BUNDLED = ["digits_cnn", "digits_mlp", "digits_transformer", "digits_tf", "digits_resnet"]
ONNX_TEST_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"


def tiny_mlp(seed: int = 0, hidden: int = 16) -> onnx.ModelProto:
    """x[batch,8] -> Gemm -> Relu -> MatMul + Add -> y[batch,4]."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(size=(hidden, 8)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=hidden).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(size=(hidden, 4)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["m"], name="fc2"),
        helper.make_node("Add", ["m", "b2"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    onnx.checker.check_model(model)
    return model


def save_data(path: Path, n: int = 20, seed: int = 1, labels: bool = True, **arrays) -> Path:
    rng = np.random.default_rng(seed)
    contents = {"x": rng.normal(size=(n, 8)).astype(np.float32)}
    if labels:
        contents["labels"] = rng.integers(0, 4, size=n).astype(np.int64)
    contents.update(arrays)
    np.savez(path, **contents)
    return path


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess (exit codes, stderr, no traceback)."""
    return subprocess.run(
        [sys.executable, "-c", "from onnxshrink.cli import main; main()", *map(str, args)],
        capture_output=True, text=True, cwd=cwd or ROOT, env={**os.environ, "COLUMNS": "200"},
    )


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    onnx.save(tiny_mlp(), path)
    return path


@pytest.fixture
def mlp_data(tmp_path: Path) -> Path:
    return save_data(tmp_path / "data.npz")


# A child's own peak RSS. Its ru_maxrss is no good for that: Linux carries the
# parent's high-water mark across fork + exec, so a child of a large pytest
# process reports at least pytest's size. VmHWM is the exec'd image's alone.
PEAK_RSS_PRELUDE = r"""
import atexit as _atexit, os as _os
def _write_peak():
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    with open(_os.environ["ONNXSHRINK_PEAK_FILE"], "w") as out:
        out.write(str(kb * 1024))
_atexit.register(_write_peak)
"""


def child_peak_rss(code: str, *args: str, tmp: Path) -> int:
    """Run ``python -c code args`` (it must exit 0) and return its own peak RSS in bytes."""
    peak_file = tmp / f"peak-{os.getpid()}-{len(list(tmp.glob('peak-*')))}"
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS_PRELUDE + code, *map(str, args)], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "ONNXSHRINK_PEAK_FILE": str(peak_file)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(peak_file.read_text())


def load_script(name: str):
    """scripts/NAME.py as a module (the scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bundled(name: str) -> Path:
    return MODELS / f"{name}.onnx"
