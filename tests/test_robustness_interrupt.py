"""Ctrl-C in the middle of a command: exit 130 with one line, no output and no temp file left.

A model with ~40 MB of weights makes pack and unpack take about a second; the
child says when its imports are done, and SIGINT arrives at several points
after that (loading, encoding, writing).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ROOT

# 0.05, not 0: the child writes 'ready' just before it calls main(), and a signal in that gap
# (before main's handler is in place) is Python's own traceback, outside the command's reach.
DELAYS = (0.05, 0.4, 0.9, 1.5)
START = ("import sys, onnxshrink.cli, onnxshrink.packing; sys.stderr.write('ready\\n'); sys.stderr.flush(); "
         "onnxshrink.cli.main()")


@pytest.fixture(scope="module")
def big_model(tmp_path_factory) -> Path:
    """Four 1024x2560 MatMul weights (42 MB), seeded."""
    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "x"
    for i in range(4):
        shape = (1024, 2560) if i % 2 == 0 else (2560, 1024)
        inits.append(numpy_helper.from_array((0.02 * rng.standard_normal(shape)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1024])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["b", 1024])], inits)
    path = tmp_path_factory.mktemp("big") / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def interrupted(args: list[str], delay: float) -> subprocess.CompletedProcess:
    """Start the CLI, wait for its imports, sleep ``delay``, send SIGINT, collect the result."""
    proc = subprocess.Popen([sys.executable, "-c", START, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**os.environ, "COLUMNS": "200"})
    assert proc.stderr.readline().strip() == "ready"
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _left_behind(folder: Path, output: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p == output or p.name.endswith(".tmp")]


@pytest.mark.parametrize("command", ["pack", "unpack"])
def test_sigint_leaves_no_output(big_model, tmp_path, command):
    source = big_model
    if command == "unpack":
        source = tmp_path / "src.onnxz"
        subprocess.run([sys.executable, "-c", START, "pack", str(big_model), "-o", str(source), "-q"], check=True,
                       capture_output=True)
    codes, interrupted_mid_run = [], 0
    for k, delay in enumerate(DELAYS):
        folder = tmp_path / f"out{k}"
        folder.mkdir()
        output = folder / ("model.onnxz" if command == "pack" else "model.onnx")
        p = interrupted([command, str(source), "-o", str(output), "-q"], delay)
        codes.append(p.returncode)
        assert "Traceback" not in p.stderr + p.stdout, p.stderr
        if p.returncode == 0:  # finished before the signal: the output is whole
            assert output.exists() and not _left_behind(folder, output)[1:]
            continue
        assert p.returncode == 130, (delay, p.returncode, p.stderr)
        # Typer itself turns Ctrl-C while parsing arguments into a silent exit 130.
        assert p.stderr.strip().splitlines() in ([], ["onnxshrink: interrupted; no output written"]), p.stderr
        interrupted_mid_run += p.stderr.strip() != ""
        assert _left_behind(folder, output) == [], (delay, _left_behind(folder, output))
    assert interrupted_mid_run, f"no run was interrupted inside the command: {codes}"
