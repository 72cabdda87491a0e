"""Benchmark onnxshrink's int8 quantization against onnxruntime.quantization.quantize_static.

Writes a markdown report (stdout, or --out FILE) with, for every bundled model
(models/NAME.onnx with NAME.calib.npz and NAME.eval.npz) and onnx's
light_squeezenet test model:

* one row per quantizer: onnxshrink (default settings) and onnxruntime's
  quantize_static (QDQ, per-channel int8 weights, uint8 activations, MinMax,
  same calibration samples);
* accuracy on the held-out eval set (or output cosine when there are no
  labels), size ratio, single-thread batch-1 latency ratio vs fp32 (median of
  interleaved rounds, as the acceptance check measures it), ours/ORT latency,
  calibration+quantization wall time and the quantizing process's peak RSS;

and any --model PATH given (a model shipped in a pip wheel, say: random
calibration and eval inputs, so cosine only, no accuracy); then a memory
check: peak RSS of our calibration on 100 and on 2,000 samples (each
quantizer runs in a fresh process, so ru_maxrss is its own peak).

    python3 scripts/bench_quantize.py                  # every bundled model, ~3-5 min on 2 cores
    python3 scripts/bench_quantize.py --models digits_mlp --no-light --no-memory --out /tmp/bench.md
    python3 scripts/bench_quantize.py --model nudenet/320n.onnx --shape images=1x3x320x320
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ["digits_cnn", "digits_mlp", "digits_transformer", "digits_tf", "digits_resnet"]
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_squeezenet.onnx"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _ours(src: str, calib: str, out: str, queue) -> None:
    from onnxshrink.model import load_model, save_model
    from onnxshrink.quantization import QuantizeOptions, quantize_model

    start = time.perf_counter()
    result = quantize_model(load_model(src), calib, QuantizeOptions())
    save_model(result.model, out)
    queue.put((time.perf_counter() - start, _peak_rss_mb(), result.report.calibration["seconds"]))


def _ours_calibration_only(src: str, calib: str, queue) -> None:
    from onnxshrink.model import load_model
    from onnxshrink.quantization import calibrate, prepare_model
    from onnxshrink.quantization.quantizer import calibration_values

    prepared = prepare_model(load_model(src))
    before = _peak_rss_mb()
    start = time.perf_counter()
    stats = calibrate(prepared.model, calibration_values(prepared.model, prepared.types), calib)
    queue.put((time.perf_counter() - start, _peak_rss_mb(), {"samples": stats.samples, "rss_before": before}))


def _theirs(src: str, calib: str, out: str, queue) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            data = np.load(calib)
            self.names = [n for n in data.files if n != "labels"]
            self.data = data
            self.k = 0
            self.n = len(data[self.names[0]])

        def get_next(self):
            if self.k >= self.n:
                return None
            self.k += 1
            return {name: self.data[name][self.k - 1:self.k] for name in self.names}

    start = time.perf_counter()
    try:
        quantize_static(src, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
        error = None
    except Exception as e:  # report what onnxruntime could not do, keep benchmarking
        error = f"{type(e).__name__}: {' '.join(str(e).split())[:80]}"
    queue.put((time.perf_counter() - start, _peak_rss_mb(), error))


def in_child(target, *args):
    """Run ``target`` in a fresh process; its (seconds, peak RSS MB, extra)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def session(path: str, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def outputs(path: str, data: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    s = session(path, threads=2)
    n = len(data[names[0]])
    fixed = s.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) and fixed > 0 else 64
    return np.concatenate([s.run(None, {k: data[k][i:i + step] for k in names})[0] for i in range(0, n, step)])


def latency_ms(path: str, feed: dict[str, np.ndarray], runs: int = 30) -> float:
    s = session(path)
    for _ in range(5):
        s.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        s.run(None, feed)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def latency_ratio(a: str, b: str, feed: dict[str, np.ndarray], rounds: int = 5) -> float:
    """Median over interleaved rounds of latency(a) / latency(b)."""
    return float(np.median([latency_ms(a, feed) / latency_ms(b, feed) for _ in range(rounds)]))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def bench_model(name: str, src: Path, calib: Path, evaluation: Path, work: Path) -> list[str]:
    data = dict(np.load(evaluation))
    names = [i.name for i in session(str(src)).get_inputs()]
    feed = {k: data[k][:1] for k in names}
    reference = outputs(str(src), data, names)
    labels = data.get("labels")
    rows = []
    ours, theirs = str(work / f"{name}.ours.onnx"), str(work / f"{name}.ort.onnx")
    runs = {"onnxshrink": in_child(_ours, str(src), str(calib), ours),
            "onnxruntime": in_child(_theirs, str(src), str(calib), theirs)}
    size = src.stat().st_size
    base = f"{100 * float((reference.argmax(1) == labels).mean()):.2f}%" if labels is not None else "-"
    for tool, (seconds, rss, extra) in runs.items():
        path = ours if tool == "onnxshrink" else theirs
        error = extra if tool == "onnxruntime" else None
        calibration = f"{extra:.1f}" if tool == "onnxshrink" else "-"
        if error or not Path(path).exists():
            rows.append(f"| {name} | {tool} | {base} | failed: {error} | | | | | | | |")
            continue
        out = outputs(path, data, names)
        acc = f"{100 * float((out.argmax(1) == labels).mean()):.2f}%" if labels is not None else "-"
        vs_fp32 = latency_ratio(path, str(src), feed)
        vs_ort = latency_ratio(ours, theirs, feed) if tool == "onnxshrink" and Path(theirs).exists() else None
        rows.append(f"| {name} | {tool} | {base} | {acc} | {cosine(reference, out):.6f} | "
                    f"{Path(path).stat().st_size / size:.3f} | {vs_fp32:.2f} | "
                    f"{'-' if vs_ort is None else f'{vs_ort:.2f}'} | {calibration} | {seconds:.1f} | {rss:.0f} |")
    return rows


def random_data(model: Path, work: Path, shapes: dict[str, list[int]], samples: int = 8) -> tuple[Path, Path]:
    """Random calibration and eval inputs in [0, 1) (no labels: cosine only); symbolic
    dims come from ``shapes`` or are 1."""
    rng = np.random.default_rng(0)
    inputs = {}
    for i in session(str(model)).get_inputs():
        dims = shapes.get(i.name) or [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        inputs[i.name] = dims[1:]
    files = []
    for kind in ("calib", "eval"):
        path = work / f"{model.stem}.{kind}.npz"
        np.savez(path, **{n: rng.random((samples, *dims), np.float32) for n, dims in inputs.items()})
        files.append(path)
    return files[0], files[1]


def memory_check(work: Path, model: str = "digits_cnn") -> list[str]:
    """Peak RSS of calibration on 100 and on 2,000 samples of the same model."""
    src = ROOT / "models" / f"{model}.onnx"
    base = np.load(ROOT / "models" / f"{model}.calib.npz")["input"]
    rng = np.random.default_rng(0)
    lines = ["", f"Calibration memory ({model}, onnxshrink, batch 32, each in a fresh process):", "",
             "| samples | calibration s | peak RSS MB |", "|---:|---:|---:|"]
    peaks = {}
    for count in (100, 2000):
        picks = base[rng.integers(0, len(base), count)]
        path = work / f"rss_{count}.npz"
        np.savez(path, input=(picks + rng.normal(scale=0.05, size=picks.shape)).astype(np.float32))
        seconds, rss, extra = in_child(_ours_calibration_only, str(src), str(path))
        peaks[count] = rss
        lines.append(f"| {extra['samples']} | {seconds:.2f} | {rss:.0f} |")
    lines += ["", f"peak RSS 2,000 / 100 samples: {peaks[2000] / peaks[100]:.3f} (must be <= 1.10)"]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(BUNDLED))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--no-light", action="store_true", help="skip onnx's light_squeezenet")
    parser.add_argument("--no-memory", action="store_true", help="skip the 100 vs 2,000 sample RSS check")
    parser.add_argument("--model", action="append", type=Path, default=[], help="another model (random inputs)")
    parser.add_argument("--shape", action="append", default=[], help="NAME=1x3x320x320 for symbolic input dims")
    args = parser.parse_args()
    shapes = {k: [int(d) for d in v.split("x")] for k, _, v in (item.partition("=") for item in args.shape)}
    lines = [f"# int8 quantization: onnxshrink vs onnxruntime.quantization {ort.__version__}", "",
             "Single-thread batch-1 latency, median of 5 interleaved rounds of 30 runs; RSS is the quantizing "
             "process's peak; total time is load + calibration + quantization + save (ours also runs the final "
             "validation and latency check of its report); calibration time is ours alone. Size ratio is against "
             "the file as given (light_squeezenet computes its weights at run time, so folding them grows it).", "",
             "| model | quantizer | fp32 acc | int8 acc | cosine vs fp32 | size ratio | latency / fp32 | ours / ORT | "
             "calibration s | total s | peak RSS MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            files = [ROOT / "models" / f"{name}{s}" for s in (".onnx", ".calib.npz", ".eval.npz")]
            if all(f.exists() for f in files):
                lines += bench_model(name, *files, work)
                print(lines[-2] + "\n" + lines[-1], file=sys.stderr)
            else:
                lines.append(f"| {name} | (not built) | | | | | | | | | |")
        if not args.no_light and LIGHT.exists():
            lines += bench_model("light_squeezenet (opset 9, ConstantOfShape weights)", LIGHT,
                                 *random_data(LIGHT, work, shapes), work)
        for extra in args.model:
            lines += bench_model(extra.name, extra, *random_data(extra, work, shapes), work)
            print(lines[-2] + "\n" + lines[-1], file=sys.stderr)
        if not args.no_memory and (ROOT / "models" / "digits_cnn.onnx").exists():
            lines += memory_check(work)
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
