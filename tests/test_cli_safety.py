"""No command writes over a user's file, and outputs are checked before any work.

Every output flag of every command against every input it reads, by every
spelling (the same path, ``./`` and ``..`` detours, a symlink, a hard link):
exit 2, one line naming both paths, the input's bytes unchanged. Outputs that
cannot be written (a folder, under a regular file, in a missing or read-only
folder) are refused before the work runs. Devices and FIFOs are written
through and stay what they were; a symlink output keeps its link; ``-`` is
standard output; several outputs appear together or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_cli, save_data, tiny_mlp
from typer.testing import CliRunner

import onnxshrink
from onnxshrink.cli import app
from onnxshrink.fileio import atomic_output, outputs_together

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "80"})


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.fixture
def files(tmp_path):
    """A model, its calibration and eval data, a packed copy and a recipe, in tmp_path/in."""
    folder = tmp_path / "in"
    folder.mkdir()
    model = folder / "m.onnx"
    onnx.save(tiny_mlp(hidden=32), model)
    calib = save_data(folder / "calib.npz", labels=False)
    eval_data = save_data(folder / "eval.npz", seed=2)
    packed = folder / "m.onnxz"
    onnxshrink.pack(onnxshrink.load(model), packed)
    recipe = folder / "r.toml"
    recipe.write_text('description = "pack only"\n[simplify]\nenabled = false\n[prune]\nenabled = false\n'
                      "[quantize]\nenabled = false\n[gate]\nmin_cosine = 1.0\n")
    refs = folder / "refs.npz"
    np.savez(refs, y=np.zeros((20, 4), np.float32))
    return {"MODEL": model, "--calib": calib, "--eval": eval_data, "PACKED": packed, "--recipe": recipe,
            "--reference-outputs": refs}


def command_line(command: str, f: dict, out: Path) -> list:
    """A valid command line of ``command`` over the files in ``f``, its outputs in ``out``."""
    m = f["MODEL"]
    return {
        "inspect": ["inspect", m],
        "validate": ["validate", m, m, "--data", f["--eval"]],
        "validate-saved": ["validate", m, "--data", f["--eval"], "--reference-outputs", f["--reference-outputs"]],
        "pack": ["pack", m, "-o", out / "o.onnxz"],
        "unpack": ["unpack", f["PACKED"], "-o", out / "o.onnx"],
        "quantize": ["quantize", m, "-o", out / "o.onnx", "--calib", f["--calib"], "--eval", f["--eval"]],
        "prune": ["prune", m, "-o", out / "o.onnx", "--sparsity", "0.5", "--calib", f["--calib"],
                  "--eval", f["--eval"]],
        "shrink": ["shrink", m, "-o", out / "o.onnxz", "--calib", f["--calib"], "--eval", f["--eval"],
                   "--recipe", f["--recipe"]],
    }[command]


# Each command's inputs (by the flag or argument naming them) and output flags.
COMMANDS = {
    "inspect": (["MODEL"], ["--json"]),
    "validate": (["MODEL", "--eval"], ["--json"]),
    "validate-saved": (["MODEL", "--eval", "--reference-outputs"], ["--json"]),
    "pack": (["MODEL"], ["-o", "--json"]),
    "unpack": (["PACKED"], ["-o"]),
    "quantize": (["MODEL", "--calib", "--eval"], ["-o", "--json"]),
    "prune": (["MODEL", "--calib", "--eval"], ["-o", "--json"]),
    "shrink": (["MODEL", "--calib", "--eval", "--recipe"], ["-o", "--json", "--report"]),
}
CASES = [(c, i, o) for c, (ins, outs) in COMMANDS.items() for i in ins for o in outs]
# What validate calls the files the others call MODEL and --eval.
LABELS = {"validate": {"MODEL": "REFERENCE", "--eval": "--data"}, "validate-saved": {"MODEL": "REFERENCE", "--eval": "--data"}}


def with_output(args: list, flag: str, path) -> list:
    """``args`` with output ``flag`` set to ``path`` (replacing -o's value)."""
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = path
    else:
        args += [flag, path]
    return args


def spellings(path: Path, tmp_path: Path) -> dict[str, str]:
    """Other names of the file at ``path``: ./ and .. detours, a symlink, a hard link."""
    link = tmp_path / f"link-{path.name}"
    link.symlink_to(path)
    hard = tmp_path / f"hard-{path.name}"
    os.link(path, hard)
    return {"same": str(path), "dot": f"{path.parent}/./{path.name}",
            "dotdot": f"{path.parent}/../{path.parent.name}/{path.name}", "symlink": str(link), "hardlink": str(hard)}


@pytest.mark.parametrize("command, source, flag", CASES, ids=["-".join(c) for c in CASES])
def test_no_output_can_be_an_input(files, tmp_path, command, source, flag):
    before = {p: digest(p) for p in files.values()}
    args = command_line(command, files, tmp_path)
    for spelling, path in spellings(files[source], tmp_path).items():
        result = invoke(*with_output(args, flag, path))
        assert result.exit_code == 2, (spelling, result.output)
        lines = error_lines(result)
        assert len(lines) == 1 and "would overwrite the input" in lines[0], (spelling, lines)
        label = LABELS.get(command, {}).get(source, source)
        assert f"{flag} " in lines[0] and f"{label} {files[source]}" in lines[0], lines[0]
        assert "Traceback" not in result.output
        assert {p: digest(p) for p in files.values()} == before, spelling
        assert not Path(path).is_symlink() or Path(path).resolve() == files[source]


def test_the_commands_run_when_nothing_collides(files, tmp_path):
    """The command lines above are valid: the refusals are the collisions, not the rest."""
    for command in ("inspect", "validate", "pack", "unpack", "quantize", "prune", "shrink"):
        result = invoke(*command_line(command, files, tmp_path), "-q")
        assert result.exit_code == 0, (command, result.output)


def test_an_output_on_a_models_external_data_is_refused(tmp_path):
    model = tiny_mlp(hidden=256)
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    calib = save_data(tmp_path / "calib.npz")
    weights = tmp_path / "weights.bin"
    before = digest(weights)
    for args in (["quantize", path, "-o", weights, "--calib", calib],
                 ["prune", path, "-o", tmp_path / "p.onnx", "--sparsity", "0.5", "--json", weights],
                 ["inspect", path, "--json", weights]):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert "external data file" in result.stderr and "weights.bin" in result.stderr
        assert digest(weights) == before
    # An earlier output beside the model is no input: it is replaced.
    previous = tmp_path / "q.onnx"
    previous.write_bytes(b"an earlier run")
    result = invoke("quantize", path, "-o", previous, "--calib", calib, "-q")
    assert result.exit_code == 0, result.output
    assert onnx.load(previous).graph.node and digest(weights) == before


def test_the_data_file_beside_a_model_output_is_checked_too(files, tmp_path):
    """A large model is saved with its data in <output>.data: that file must not be an input either."""
    out = files["--calib"].with_name("o.onnx")
    calib = files["--calib"].rename(out.with_name("o.onnx.data"))
    before = digest(calib)
    result = invoke("quantize", files["MODEL"], "-o", out, "--calib", calib)
    assert result.exit_code == 2 and "o.onnx.data" in result.stderr and "its data file" in result.stderr
    assert digest(calib) == before and not out.exists()


def test_two_outputs_on_one_file_are_refused(files, tmp_path):
    out = tmp_path / "o.onnx"
    for extra in (["--json", out], ["--json", tmp_path / "o.onnx.data"]):
        result = invoke("quantize", files["MODEL"], "-o", out, "--calib", files["--calib"], *extra)
        assert result.exit_code == 2 and "give each output its own path" in result.stderr
    assert not out.exists()
    result = invoke("shrink", files["MODEL"], "-o", tmp_path / "s.onnxz", "--recipe", "lossless",
                    "--json", "-", "--report", "-")
    assert result.exit_code == 2 and "same file" in result.stderr


# -- outputs that cannot be written are refused before the work -------------------------------------------------


@pytest.fixture
def no_work(monkeypatch):
    """Make the work of shrink, quantize, prune and pack fail loudly if it runs."""

    def ran(*args, **kwargs):
        raise AssertionError("the work ran before the output was checked")

    for module, name in (("shrink", "shrink"), ("quantize", "quantize_model"), ("prune", "prune_model"),
                         ("pack", "pack_file"), ("pack", "unpack_file")):
        monkeypatch.setattr(f"onnxshrink.cli.{module}.{name}", ran)


def unwritable_outputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    afile = tmp_path / "afile"
    afile.write_text("x")
    (tmp_path / "adir").mkdir()
    return {"folder": (tmp_path / "adir", "is a folder"),
            "under a file": (afile / "x.out", "is a file, not a folder"),
            "missing folder": (tmp_path / "nope" / "x.out", "no such folder")}


@pytest.mark.parametrize("flag", ["-o", "--json", "--report"])
def test_unwritable_outputs_are_refused_before_any_work(files, tmp_path, no_work, flag):
    base = ["shrink", files["MODEL"], "-o", tmp_path / "s.onnxz", "--calib", files["--calib"],
            "--eval", files["--eval"], "--max-accuracy-drop", "1", "--json", tmp_path / "s.json"]
    for why, (path, message) in unwritable_outputs(tmp_path).items():
        result = invoke(*with_output(base, flag, path))
        assert result.exit_code == 2, (why, result.output)
        lines = error_lines(result)
        assert len(lines) == 1 and message in lines[0] and flag in lines[0], (why, lines)
        assert not (tmp_path / "s.onnxz").exists() and not (tmp_path / "s.json").exists()
    assert not (tmp_path / "nope").exists(), "a missing output folder is not created"


@pytest.mark.parametrize("command", ["quantize", "prune", "pack", "unpack"])
def test_every_command_checks_its_outputs_first(files, tmp_path, no_work, command):
    args = command_line(command, files, tmp_path)
    for why, (path, message) in unwritable_outputs(tmp_path).items():
        result = invoke(*with_output(args, "-o", path))
        assert result.exit_code == 2 and message in result.stderr, (why, result.output)


def test_a_read_only_folder_is_refused_before_any_work(files, tmp_path, no_work, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: make the check see the folder as the kernel would for a user
        real_access = os.access
        monkeypatch.setattr("onnxshrink.cli._paths.os.access",
                            lambda path, mode: False if Path(path) == locked else real_access(path, mode))
    try:
        result = invoke("quantize", files["MODEL"], "-o", locked / "q.onnx", "--calib", files["--calib"])
        assert result.exit_code == 2 and "cannot write in folder" in result.stderr
    finally:
        locked.chmod(0o755)
    assert list(locked.iterdir()) == []


def test_outputs_appear_together_or_not_at_all(files, tmp_path, monkeypatch):
    """shrink writes the model, the JSON and the HTML report: a failure on the
    last leaves none of them (the model is not left behind alone)."""
    out, js, html = tmp_path / "s.onnxz", tmp_path / "s.json", tmp_path / "s.html"
    args = ["shrink", files["MODEL"], "-o", out, "--recipe", "lossless", "--json", js, "--report", html, "-q"]

    def broken(report):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("onnxshrink.cli.shrink.render_html", broken)
    result = invoke(*args)
    assert result.exit_code != 0
    assert not out.exists() and not js.exists() and not html.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "temporary files left behind"
    monkeypatch.undo()
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert out.exists() and json.loads(js.read_text())["passed"] and html.read_text().startswith("<!")


def test_outputs_together_commits_on_success_and_discards_on_error(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    with pytest.raises(RuntimeError):
        with outputs_together():
            with atomic_output(a) as tmp:
                tmp.write_text("a")
            assert not a.exists(), "renamed before the block ended"
            with atomic_output(b) as tmp:
                tmp.write_text("b")
            raise RuntimeError("later step failed")
    assert not a.exists() and not b.exists() and list(tmp_path.iterdir()) == []
    with outputs_together():
        with atomic_output(a) as tmp:
            tmp.write_text("a")
        with atomic_output(b) as tmp:
            tmp.write_text("b")
    assert a.read_text() == "a" and b.read_text() == "b"


# -- special outputs: standard output, devices, FIFOs, symlinks -----------------------------------------------------


def test_json_dash_is_standard_output(files, tmp_path):
    """The real entry point, in a folder of its own: stdout is the JSON alone,
    the summary goes to stderr, and no file named '-' appears."""
    result = run_cli("inspect", files["MODEL"], "--json", "-", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["parameters"] > 0
    assert "nodes" in result.stderr  # the summary, moved out of the way
    quiet = run_cli("quantize", files["MODEL"], "-o", tmp_path / "q.onnx", "--calib", files["--calib"],
                    "--json", "-", "-q", cwd=tmp_path)
    assert quiet.returncode == 0 and json.loads(quiet.stdout)["size_bytes"] and quiet.stderr == ""
    assert not (tmp_path / "-").exists()


def test_a_model_output_cannot_be_standard_output(files, tmp_path):
    result = invoke("quantize", files["MODEL"], "-o", "-", "--calib", files["--calib"])
    assert result.exit_code == 2 and "standard output" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_a_device_output_is_written_through_and_stays_a_device(files, tmp_path):
    # Our own null device (major 1, minor 3) in tmp_path: never the system's /dev/null.
    null = tmp_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    for args in (["quantize", files["MODEL"], "-o", tmp_path / "q.onnx", "--calib", files["--calib"], "--json", null],
                 ["inspect", files["MODEL"], "--json", null], ["pack", files["MODEL"], "-o", null]):
        result = invoke(*args, "-q")
        assert result.exit_code == 0, result.output
        assert stat.S_ISCHR(os.lstat(null).st_mode) and os.stat(null).st_rdev == os.makedev(1, 3)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".null")]


def test_a_fifo_output_is_written_through(files, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = invoke("inspect", files["MODEL"], "--json", fifo, "-q")
    reader.join(timeout=30)
    assert result.exit_code == 0, result.output
    assert json.loads(received[0])["parameters"] > 0
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_symlink_output_replaces_its_target_and_stays_a_link(files, tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    result = invoke("inspect", files["MODEL"], "--json", link, "-q")
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and link.resolve() == target
    assert json.loads(target.read_text())["parameters"] > 0
