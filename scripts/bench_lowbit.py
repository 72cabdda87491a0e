"""Benchmark low-bit weight quantization side by side with its peers (issue 9);
writes a markdown document (--out, default bench/lowbit.md, rewritten after
every model so a long run shows its tables early) with four tables:

* issue 9's bars, one row per model;
* side by side, one row per configuration of every bundled model
  (models/NAME.onnx with NAME.calib.npz and NAME.eval.npz): fp32; ours int8
  weight-only (the DequantizeLinear graph, and the same model loaded with
  ``materialize="float"``); ours int4 weight-only, nearest and GPTQ rounding;
  ``onnxshrink shrink --weight-bits 4,8 --max-accuracy-drop 1.0`` (the packed
  .onnxz, measured unpacked); ONNX Shrink Ray (``onnx-shrink-ray``) in its
  integer_weights and its float_weights (256 levels) modes, with their CLI's
  defaults; onnxruntime's MatMulNBits quantizer (4 bits, block 32, symmetric)
  where the model has MatMul weights. Columns: accuracy (argmax of the first
  output against the eval labels), size of the file as written and after
  ``zstd -19``, and latency relative to fp32 (1 thread, batch 1, median of
  interleaved rounds);
* at Shrink Ray's own game: ``shrink --weight-bits 4,8 --max-accuracy-drop
  0.2`` (.onnxz bytes) against Shrink Ray's integer_weights model after
  ``zstd -19``;
* where GPTQ and nearest rounding part at 4 bits: granularity x min_size, and
  layer subsets, on the same layer Hessians.

Shrink Ray and onnxruntime's quantizer (which needs ``onnx_ir``) run in a
subprocess of --shrink-ray-python, so they never share our environment; what
they fail on is written in the table. Without them those cells say "not
installed". Our ``shrink`` runs through its CLI in a subprocess too.

    python scripts/bench_lowbit.py --shrink-ray-python /tmp/shrinkray-venv/bin/python --out docs/lowbit.md   # ~13 min
    python scripts/bench_lowbit.py --models digits_mlp --no-latency --out /tmp/lowbit.md   # ~15 s, no peers
"""

# No `from __future__ import annotations`: the dataclasses below must build when the
# tests load this script by path, outside sys.modules.
import argparse
import dataclasses
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnxshrink  # noqa: E402
from onnxshrink import runtime  # noqa: E402
from onnxshrink.data import NpzData  # noqa: E402
from onnxshrink.lowbit import (WeightOnlyOptions, collect_weight_statistics, quantize_weights,  # noqa: E402
                               weight_targets)
from onnxshrink.model import load_model  # noqa: E402
from onnxshrink.pruning.allocation import OutputChecker  # noqa: E402

BUNDLED = ["digits_cnn", "digits_mlp", "digits_transformer", "digits_tf", "digits_resnet"]
# Issue 9: our packed size / Shrink Ray's zstd -19 size must be at most this.
OWN_GAME_BAR = {"digits_cnn": 0.6, "digits_resnet": 0.6}
OWN_GAME_BAR_DEFAULT = 0.8
ZSTD = shutil.which("zstd") or "/usr/bin/zstd"
HEADER = ("| model | fp32 % | int8 % | int8 drop | int8 float latency | int8 DQ latency | own-game ratio (bar) "
          "| own-game accuracy ours / Shrink Ray | int4 nearest % | int4 gptq % |")
SIDE_HEADER = ("| model | configuration | accuracy % | size bytes | x smaller | zstd -19 bytes | x smaller "
               "| latency / fp32 | note |")
OWN_HEADER = ("| model | ours .onnxz bytes | ours % | ours samples lost / gained | Shrink Ray int zstd -19 bytes "
              "| Shrink Ray % | Shrink Ray lost / gained | ratio | bar | holds |")
SWEEP_HEADER = ("| model | bits | granularity | min_size | layers | weights quantized | nearest % | gptq % "
                "| gptq - nearest | output error nearest / gptq |")


@dataclasses.dataclass
class Row:
    """One configuration of one model: the model accuracy and latency are
    measured on (None when there is none) and the bytes of the file a user
    would ship. ``failure`` replaces every measured cell."""

    config: str
    model: onnx.ModelProto | None = None
    size: int | None = None
    zstd: int | None = None
    note: str = ""
    failure: str | None = None
    accuracy: float | None = None
    latency: float | None = None
    flips: tuple[int, int] | None = None  # eval samples newly wrong / newly right against fp32


@dataclasses.dataclass
class ModelResult:
    name: str
    rows: list[Row]
    own_game: list[str]
    sweep: list[str]
    summary: str


def zstd_bytes(data: bytes) -> int | None:
    """Size of ``data`` after ``zstd -19``, or None without the zstd binary."""
    if not Path(ZSTD).exists():
        return None
    return len(subprocess.run([ZSTD, "-19", "-q", "-c"], input=data, capture_output=True, check=True).stdout)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[-1].split())[:120] if lines else "no message"


def python_with(module: str, pythons: list[str | None]) -> str | None:
    """The first of ``pythons`` that can import ``module``."""
    for python in pythons:
        if python and Path(python).exists() and subprocess.run(
                [python, "-c", f"import {module}"], capture_output=True).returncode == 0:
            return python
    return None


def shrink_ray(python: str | None, src: Path, mode: str, work: Path) -> tuple[bytes | None, str | None]:
    """Shrink Ray's CLI (``--action integer_weights`` or ``float_weights``,
    256 levels) on ``src``: (model bytes, None) or (None, why not)."""
    if python is None:
        return None, "not installed"
    out = work / f"shrinkray-{mode}"
    out.mkdir(exist_ok=True)
    done = subprocess.run([python, "-m", "onnx_shrink_ray.shrink", "--action", mode, "--float_levels", "256",
                           "-o", str(out), str(src)], capture_output=True, text=True)
    written = out / f"{src.stem}_quantized_weights.onnx"
    if done.returncode != 0 or not written.exists():
        return None, f"failed (exit {done.returncode}): {_last_line(done.stderr or done.stdout)}"
    return written.read_bytes(), None


_NBITS = """
import sys, onnx
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
q = MatMulNBitsQuantizer(onnx.load(sys.argv[1]), bits=4, block_size=32, is_symmetric=True)
q.process()
onnx.save(q.model.model, sys.argv[2])
"""


def ort_nbits(python: str | None, model: onnx.ModelProto, src: Path, work: Path) -> tuple[bytes | None, str | None]:
    """onnxruntime's MatMulNBits quantizer on ``src``: (model bytes, None) or (None, why not)."""
    if not any(n.op_type == "MatMul" for n in model.graph.node):
        return None, "n/a (no MatMul)"
    if python is None:
        return None, "not installed (needs onnxruntime with onnx_ir)"
    out = work / f"{src.stem}.nbits.onnx"
    done = subprocess.run([python, "-c", _NBITS, str(src), str(out)], capture_output=True, text=True)
    if done.returncode != 0 or not out.exists():
        return None, f"failed (exit {done.returncode}): {_last_line(done.stderr)}"
    data = out.read_bytes()
    if not any(n.op_type == "MatMulNBits" for n in onnx.load_from_string(data).graph.node):
        return None, "n/a (no MatMul weight quantized)"
    return data, None


def our_shrink(src: Path, drop: float, work: Path) -> tuple[Path | None, str]:
    """``onnxshrink shrink SRC --weight-bits 4,8 --max-accuracy-drop DROP``
    through the CLI: (.onnxz path, note) or (None, why not)."""
    out = work / f"{src.stem}.drop{drop}.onnxz"
    cli = "import sys; from onnxshrink.cli import main; sys.argv[0] = 'onnxshrink'; main()"
    command = [sys.executable, "-c", cli, "shrink", str(src), "-o", str(out), "--calib",
               str(src.with_suffix(".calib.npz")), "--eval", str(src.with_suffix(".eval.npz")),
               "--weight-bits", "4,8", "--max-accuracy-drop", str(drop), "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    seconds = time.perf_counter() - start
    if done.returncode == 1:
        return None, f"gate failed, nothing written ({seconds:.0f} s)"
    if done.returncode != 0 or not out.exists():
        return None, f"failed (exit {done.returncode}): {_last_line(done.stderr)}"
    return out, f"shrink took {seconds:.0f} s"


def latency_ratios(reference: onnx.ModelProto, candidates: dict[str, onnx.ModelProto], feed: dict,
                   rounds: int = 7, runs: int = 30) -> dict[str, float]:
    """Per candidate, the median over rounds of latency(candidate) / latency(reference),
    1 thread, batch 1; each round times the reference right before each candidate."""
    base = runtime.create_session(reference, threads=1)
    sessions = {key: runtime.create_session(m, threads=1) for key, m in candidates.items()}
    ratios: dict[str, list[float]] = {key: [] for key in sessions}
    for _ in range(rounds):
        for key, session in sessions.items():
            before = runtime.median_latency_ms(base, feed, runs=runs)
            ratios[key].append(runtime.median_latency_ms(session, feed, runs=runs) / before)
    return {key: float(np.median(r)) for key, r in ratios.items()}


def _file_row(config: str, data: bytes | None, failure: str | None, note: str = "") -> Row:
    """The row of a model a peer wrote (``data``), or of its ``failure``."""
    if data is None:
        return Row(config, failure=failure)
    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # a peer wrote something that is not a model
        return Row(config, failure=f"broken: {_last_line(str(e)) or type(e).__name__}")
    return Row(config, model, len(data), zstd_bytes(data), note)


def _shrink_ray_note(mode: str, data: bytes | None) -> str:
    """What Shrink Ray did: its CLI quantizes float tensors of at least 16,384
    elements, per tensor (integer_weights: int8 codes with Cast/Mul/Add;
    float_weights: float32 values rounded to 256 levels)."""
    if data is None or mode != "integer_weights":
        return "CLI defaults"
    try:
        model = onnx.load_from_string(data)
    except Exception:  # _file_row reports it
        return ""
    constants = (a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute)
    tensors = [*model.graph.initializer, *constants]
    return f"CLI defaults: {sum(t.data_type == onnx.TensorProto.INT8 for t in tensors)} weights int8, per tensor"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _times(fp32: int, size: int | None) -> str:
    return "-" if not size else f"{fp32 / size:.2f}x"


def sweep(name: str, model: onnx.ModelProto, stats, measure) -> list[str]:
    """Rows of the nearest-vs-GPTQ table: granularity x min_size with every
    eligible weight at 4 bits, then layer subsets (channel, min_size 0) with
    the other weights left float, then 3 and 2 bits (channel, min_size 256),
    where the two roundings part. ``measure`` gives a model's accuracy (%)
    and the relative squared error of its outputs against fp32."""
    names = [t.name for t in weight_targets(model, WeightOnlyOptions(bits=4, min_size=0))[0]]
    configs = [(4, g, m, "all", {}) for g in ("channel", "block:32", "block:16") for m in (256, 0)]
    if len(names) >= 3:
        for label, keep in (("first only", names[:1]), ("last only", names[-1:]),
                            ("all but first and last", names[1:-1])):
            configs.append((4, "channel", 0, label, {n: None for n in names if n not in keep}))
    configs += [(bits, "channel", 256, "all", {}) for bits in (3, 2)]
    lines = []
    for bits, granularity, min_size, label, layer_bits in configs:
        got, count = {}, 0
        for rounding in ("nearest", "gptq"):
            options = WeightOnlyOptions(bits=bits, granularity=granularity, rounding=rounding, min_size=min_size,
                                        layer_bits=layer_bits)
            result = quantize_weights(model, options, layer_stats=stats)
            got[rounding], count = measure(result.model), len(result.report.weights)
        (a, e), (b, f) = got["nearest"], got["gptq"]
        lines.append(f"| {name} | {bits} | {granularity} | {min_size} | {label} | {count} of {len(names)} | "
                     f"{a:.2f} | {b:.2f} | {b - a:+.2f} | {e:.4f} / {f:.4f} |")
    return lines


def bench_model(name: str, work: Path, latency: bool, shrink_ray_python: str | None,
                nbits_python: str | None) -> ModelResult:
    src = ROOT / "models" / f"{name}.onnx"
    model = load_model(src)
    calib = NpzData(src.with_suffix(".calib.npz"))
    checker = OutputChecker(model, NpzData(src.with_suffix(".eval.npz")))
    fp32_bytes = src.read_bytes()
    fp32_size = len(fp32_bytes)

    def right(outputs: list[np.ndarray]) -> np.ndarray:
        return outputs[0].reshape(len(checker.labels), -1).argmax(axis=1) == checker.labels

    fp32_right = right(checker.reference)

    def scored(m: onnx.ModelProto) -> tuple[float, tuple[int, int]]:
        """Accuracy (%) and eval samples newly wrong / newly right against fp32, from one run."""
        ok = right(checker.outputs(m))
        return 100 * float(ok.mean()), (int((fp32_right & ~ok).sum()), int((ok & ~fp32_right).sum()))

    def measure(m: onnx.ModelProto) -> tuple[float, float]:
        metrics = checker.measure(m)
        return 100 * metrics["accuracy"], metrics["output_error"]

    rows = [Row("fp32", model, fp32_size, zstd_bytes(fp32_bytes))]
    int8 = quantize_weights(model, WeightOnlyOptions(bits=8)).model
    int8_bytes = int8.SerializeToString()
    rows.append(Row("ours int8 weight-only (DequantizeLinear graph)", int8, len(int8_bytes), zstd_bytes(int8_bytes),
                    "per channel, nearest"))
    packed = work / f"{name}.int8.onnxz"
    onnxshrink.pack(int8, packed)
    rows.append(Row("ours int8 weight-only, materialize=\"float\"", onnxshrink.unpack(packed, materialize="float"),
                    packed.stat().st_size, zstd_bytes(packed.read_bytes()), "the packed .onnxz, floats at load"))
    stats = collect_weight_statistics(model, calib, WeightOnlyOptions(bits=4, min_size=0))
    for rounding in ("nearest", "gptq"):
        m = quantize_weights(model, WeightOnlyOptions(bits=4, rounding=rounding), layer_stats=stats).model
        data = m.SerializeToString()
        rows.append(Row(f"ours int4 weight-only {rounding}", m, len(data), zstd_bytes(data),
                        "per channel, min_size 256"))
    shrunk = {}
    for drop in (1.0, 0.2):
        path, note = our_shrink(src, drop, work)
        shrunk[drop] = Row(f"ours shrink --weight-bits 4,8 --max-accuracy-drop {drop}", failure=note) if path is None \
            else Row(f"ours shrink --weight-bits 4,8 --max-accuracy-drop {drop}", onnxshrink.unpack(path),
                     path.stat().st_size, zstd_bytes(path.read_bytes()), f".onnxz; {note}")
    rows.append(shrunk[1.0])
    for mode, config in (("integer_weights", "Shrink Ray integer_weights"),
                         ("float_weights", "Shrink Ray float_weights (256 levels)")):
        data, why = shrink_ray(shrink_ray_python, src, mode, work)
        rows.append(_file_row(config, data, why, _shrink_ray_note(mode, data)))
    rows.append(_file_row("onnxruntime MatMulNBits 4-bit", *ort_nbits(nbits_python, model, src, work),
                          "block 32, symmetric"))
    for row in [*rows, shrunk[0.2]]:
        if row.model is not None:
            try:
                row.accuracy, row.flips = scored(row.model)
            except Exception as e:  # a peer's broken model: say so in its row
                row.failure, row.model = f"broken: {_last_line(str(e))}", None
    if latency:
        feed = {k: v[:1] for k, v in checker.batches[0].inputs.items()}
        timed = {i: r.model for i, r in enumerate(rows) if r.model is not None and i > 0}
        try:
            for i, ratio in latency_ratios(model, timed, feed).items():
                rows[i].latency = ratio
        except Exception as e:
            print(f"{name}: latency not measured ({_last_line(str(e))})", file=sys.stderr)
    rows[0].latency = 1.0 if latency else None

    ours, theirs = shrunk[0.2], next(r for r in rows if r.config == "Shrink Ray integer_weights")
    if ours.failure or theirs.failure or not theirs.zstd:
        ratio, accs, holds = "-", "-", f"no: {ours.failure or theirs.failure}"
    else:
        bar = OWN_GAME_BAR.get(name, OWN_GAME_BAR_DEFAULT)
        r = ours.size / theirs.zstd
        ratio, accs = f"{r:.3f} ({bar})", f"{ours.accuracy:.2f} / {theirs.accuracy:.2f}"
        holds = "yes" if r <= bar and ours.accuracy >= theirs.accuracy else "no"
    own_game = [f"| {name} | {_cell(ours.size)} | {_pct(ours.accuracy)} | {_flips(ours.flips)} | {_cell(theirs.zstd)} | "
                f"{_pct(theirs.accuracy)} | {_flips(theirs.flips)} | {ratio.split()[0]} | {OWN_GAME_BAR.get(name, OWN_GAME_BAR_DEFAULT)} | "
                f"{holds} |"]
    fp32, int8_row, float_row = rows[0], rows[1], rows[2]
    summary = (f"| {name} | {fp32.accuracy:.2f} | {int8_row.accuracy:.2f} | {fp32.accuracy - int8_row.accuracy:.2f} "
               f"| {_ratio(float_row.latency)} | {_ratio(int8_row.latency)} | {ratio} | {accs} "
               f"| {rows[3].accuracy:.2f} | {rows[4].accuracy:.2f} |")
    return ModelResult(name, rows, own_game, sweep(name, model, stats, measure), summary)


def _flips(f: tuple[int, int] | None) -> str:
    return "-" if f is None else f"{f[0]} / {f[1]}"


def _cell(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def side_by_side(result: ModelResult) -> list[str]:
    fp32 = result.rows[0].size
    lines = []
    for row in result.rows:
        if row.failure:
            lines.append(f"| {result.name} | {row.config} | {row.failure} | | | | | | |")
            continue
        lines.append(f"| {result.name} | {row.config} | {_pct(row.accuracy)} | {_cell(row.size)} | "
                     f"{_times(fp32, row.size)} | {_cell(row.zstd)} | {_times(fp32, row.zstd)} | "
                     f"{_ratio(row.latency)} | {row.note} |")
    return lines


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return done.stdout.strip() or "unknown"


def render(results: list[ModelResult], command: str, seconds: float, total: int) -> str:
    done = "" if len(results) == total else f" (partial: {len(results)} of {total} models so far)"
    lines = [f"# Low-bit weight quantization: onnxshrink, Shrink Ray and onnxruntime{done}", "",
             f"`{command}` at commit {_commit()} on {datetime.date.today().isoformat()}, {seconds:.0f} s, "
             f"{platform.machine()} "
             f"({os.cpu_count()} cores, shared: latencies are ratios of interleaved runs, not absolute times).", "",
             "## Issue 9's bars", "",
             "int8 weight-only: the drop must be <= 0.2 points and the float-materialised latency <= 1.05x fp32; "
             "own game: ratio <= bar with our accuracy >= Shrink Ray's.", "",
             HEADER, "|---|" + "---:|" * (HEADER.count("|") - 2)]
    lines += [r.summary for r in results]
    lines += ["", "## Side by side", "",
              "x smaller is against the fp32 .onnx file as written (so a zstd column above 1x is mostly zstd's "
              "doing); latency is the model as loaded, relative to fp32 (1 thread, batch 1, median of 7 "
              "interleaved rounds of 30 runs).", "", SIDE_HEADER, "|---|---|" + "---:|" * 6 + "---|"]
    lines += [line for r in results for line in side_by_side(r)]
    lines += ["", "## At Shrink Ray's own game", "",
              "`onnxshrink shrink --weight-bits 4,8 --max-accuracy-drop 0.2` (.onnxz bytes as written) against "
              "Shrink Ray's integer_weights model after `zstd -19`; ratio = ours / theirs. Lost / gained: eval "
              "samples newly wrong / newly right against fp32 (on the 1,080-sample eval sets one sample is 0.093 "
              "points, so the 0.2-point gate allows a net two).", "",
              OWN_HEADER, "|---|" + "---:|" * 8 + "---|"]
    lines += [line for r in results for line in r.own_game]
    lines += ["", "## Where GPTQ and nearest rounding part (symmetric; 4 bits, then 3 and 2)", "",
              "Same layer Hessians for every run; layer subsets quantize only those weights (channel, min_size 0) "
              "and leave the others float. Output error is the relative squared error of the model's outputs "
              "against fp32 on the eval set (what GPTQ lowers layer by layer, even where accuracy does not move).", "",
              SWEEP_HEADER, "|---|---:|---|---:|---|---:|---:|---:|---:|---:|"]
    lines += [line for r in results for line in r.sweep]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=BUNDLED)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "lowbit.md")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    parser.add_argument("--shrink-ray-python", help="a python with onnx-shrink-ray installed (its own venv)")
    args = parser.parse_args(argv)
    command = "python scripts/bench_lowbit.py " + " ".join(argv if argv is not None else sys.argv[1:])
    shrink_ray_python = python_with("onnx_shrink_ray.shrink", [args.shrink_ray_python or sys.executable])
    nbits_python = python_with("onnxruntime.quantization.matmul_nbits_quantizer",
                               [sys.executable, args.shrink_ray_python])
    start = time.perf_counter()
    results: list[ModelResult] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-lowbit-") as tmp:
        for name in args.models:
            results.append(bench_model(name, Path(tmp), not args.no_latency, shrink_ray_python, nbits_python))
            args.out.write_text(render(results, command.strip(), time.perf_counter() - start, len(args.models)))
            print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
