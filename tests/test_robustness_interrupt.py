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
# Each child first takes Ctrl-C as a terminal's process would: a parent started in the background by
# a non-interactive shell (a CI runner's job) ignores SIGINT, and an exec'd child inherits that.
DEFAULT_SIGINT = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
START = (DEFAULT_SIGINT + "import sys, onnxshrink.cli, onnxshrink.packing; sys.stderr.write('ready\\n'); "
         "sys.stderr.flush(); onnxshrink.cli.main()")


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
    codes = []
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
        assert _left_behind(folder, output) == [], (delay, _left_behind(folder, output))


# The sweep above depends on how fast this machine is (unpack of 42 MB may finish in 0.3 s); this
# one does not: the child sends itself SIGINT on the Nth call into onnxshrink.packing (or fileio,
# the writer), so the signal lands inside the command's own work every time.
SELF_INTERRUPT = (
    DEFAULT_SIGINT + "\n"
    "import os, signal, sys, onnxshrink.cli, onnxshrink.packing\n"
    "N = int(os.environ['ONNXSHRINK_TEST_NTH_CALL']); seen = [0]\n"
    "def hook(frame, event, arg):\n"
    "    if event == 'call' and ('onnxshrink/packing/' in frame.f_code.co_filename\n"
    "                            or frame.f_code.co_filename.endswith('fileio.py')):\n"
    "        seen[0] += 1\n"
    "        if seen[0] == N:\n"
    "            sys.setprofile(None); os.kill(os.getpid(), signal.SIGINT)\n"
    "sys.setprofile(hook)\n"
    "onnxshrink.cli.main()\n")


@pytest.mark.parametrize("command", ["pack", "unpack"])
@pytest.mark.parametrize("nth_call", [1, 40, 400])
def test_sigint_inside_the_work_leaves_no_output(big_model, tmp_path, command, nth_call):
    source = big_model
    if command == "unpack":
        source = tmp_path / "src.onnxz"
        subprocess.run([sys.executable, "-c", START, "pack", str(big_model), "-o", str(source), "-q"], check=True,
                       capture_output=True)
    output = tmp_path / ("model.onnxz" if command == "pack" else "model.onnx")
    p = subprocess.run([sys.executable, "-c", SELF_INTERRUPT, command, str(source), "-o", str(output), "-q"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "COLUMNS": "200", "ONNXSHRINK_TEST_NTH_CALL": str(nth_call)})
    if p.returncode == 0:  # fewer calls than nth_call: then the output must be whole
        assert nth_call > 1 and output.exists() and not _left_behind(tmp_path, output)[1:]
        return
    assert (p.returncode, p.stderr.strip()) == (130, "onnxshrink: interrupted; no output written")
    assert _left_behind(tmp_path, output) == []
