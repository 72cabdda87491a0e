"""Benchmark pruning on the bundled models; writes a markdown report (default
bench/prune.md, or --out) with:

1. eval accuracy vs sparsity (30/50/70/90 %) for the magnitude, wanda and
   hessian methods, unstructured (global scope) and 2:4, on each bundled model;
2. channel pruning of 25/50 % of the prunable channels of digits_resnet:
   accuracy, parameters, FLOPs, and onnxruntime latency relative to the
   unpruned model (1 thread, batch 1, median of interleaved rounds);
3. with --target: the sparsity `--max-accuracy-drop 1.0` reaches.

Every figure is measured here, with onnxruntime on this machine's CPU.

    python scripts/bench_prune.py                     # all bundled models (minutes)
    python scripts/bench_prune.py --models digits_mlp --sparsities 0.5 --no-channel --out /tmp/p.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxshrink import runtime  # noqa: E402
from onnxshrink.data import NpzData  # noqa: E402
from onnxshrink.model import load_model  # noqa: E402
from onnxshrink.pruning import PruneOptions, collect_statistics, prune_model  # noqa: E402
from onnxshrink.pruning.allocation import OutputChecker  # noqa: E402

BUNDLED = ["digits_cnn", "digits_mlp", "digits_transformer", "digits_tf", "digits_resnet"]
METHODS = ["magnitude", "wanda", "hessian"]


def latency_ratio(candidate: onnx.ModelProto, reference: onnx.ModelProto, feed: dict, rounds: int = 5,
                  runs: int = 30) -> tuple[float, float, float]:
    """(median latency ratio candidate/reference, reference ms, candidate ms), 1 thread.
    Runs alternate one by one, so load on the machine hits both models alike."""
    a, b = runtime.create_session(candidate, threads=1), runtime.create_session(reference, threads=1)
    for _ in range(5):
        a.run(None, feed)
        b.run(None, feed)
    ratios, ta, tb = [], [], []
    for _ in range(rounds):
        times = {id(a): [], id(b): []}
        for _ in range(runs):
            for s in (a, b):
                start = time.perf_counter()
                s.run(None, feed)
                times[id(s)].append(time.perf_counter() - start)
        ma, mb = float(np.median(times[id(a)])), float(np.median(times[id(b)]))
        ratios.append(ma / mb)
        ta.append(ma)
        tb.append(mb)
    return float(np.median(ratios)), 1000 * float(np.median(tb)), 1000 * float(np.median(ta))


def sweep(name: str, sparsities: list[float], lines: list[str]) -> None:
    path = ROOT / "models" / f"{name}.onnx"
    model = load_model(path)
    calib = NpzData(path.with_name(f"{name}.calib.npz"))
    checker = OutputChecker(model, NpzData(path.with_name(f"{name}.eval.npz")))
    start = time.perf_counter()
    stats = collect_statistics(model, calib, PruneOptions(sparsity=0.5))
    head = " | ".join(f"{int(100 * s)}%" for s in sparsities)
    lines += [f"### {name} (dense accuracy {100 * checker.reference_accuracy:.2f}%)", "",
              f"| method | {head} | 2:4 |", "|---|" + "---:|" * (len(sparsities) + 1)]
    for method in METHODS:
        cells = []
        for pattern, levels in (("unstructured", sparsities), ("2:4", [0.5])):
            for s in levels:
                result = prune_model(model, PruneOptions(sparsity=s, pattern=pattern, method=method), calib=calib,
                                     layer_stats=stats)
                cells.append(f"{100 * checker.measure(result.model)['accuracy']:.2f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", f"_{time.perf_counter() - start:.0f} s; accuracy in %, eval set of {len(checker.labels)} samples;"
              " unstructured uses global scope; 2:4 prunes exactly half of every tensor whose input axis is a "
              "multiple of 4._", ""]


def channels(name: str, fractions: list[float], lines: list[str]) -> None:
    path = ROOT / "models" / f"{name}.onnx"
    model = load_model(path)
    calib = NpzData(path.with_name(f"{name}.calib.npz"))
    checker = OutputChecker(model, NpzData(path.with_name(f"{name}.eval.npz")))
    feed = {k: v[:1] for k, v in checker.batches[0].inputs.items()}
    stats = collect_statistics(model, calib, PruneOptions(sparsity=0.5))
    lines += [f"### channel pruning, {name} (dense accuracy {100 * checker.reference_accuracy:.2f}%)", "",
              "| channels removed | method | accuracy % | params | FLOPs | latency ratio | ms (dense -> pruned) |",
              "|---:|---|---:|---:|---:|---:|---:|"]
    for fraction in fractions:
        for method in ("magnitude", "hessian"):
            result = prune_model(model, PruneOptions(sparsity=fraction, pattern="channel", method=method),
                                 calib=calib, layer_stats=stats)
            r = result.report
            ratio, dense_ms, pruned_ms = latency_ratio(result.model, model, feed)
            lines.append(f"| {int(100 * fraction)}% | {method} | {100 * checker.measure(result.model)['accuracy']:.2f} "
                         f"| {r.params_after / r.params_before:.2f}x | {r.flops_after / max(r.flops_before, 1):.2f}x "
                         f"| {ratio:.2f}x | {dense_ms:.2f} -> {pruned_ms:.2f} |")
    lines += ["", "_hessian: consumers refitted by least squares on calibration data; magnitude: no data. "
              "Latency: onnxruntime CPU, 1 thread, batch 1, runs alternating between the two models, median of 5 rounds of 30._", ""]


def target(name: str, lines: list[str]) -> None:
    path = ROOT / "models" / f"{name}.onnx"
    model = load_model(path)
    start = time.perf_counter()
    result = prune_model(model, PruneOptions(max_accuracy_drop=1.0), calib=NpzData(path.with_name(f"{name}.calib.npz")),
                         eval_data=NpzData(path.with_name(f"{name}.eval.npz")))
    v = result.report.validation
    lines.append(f"| {name} | {100 * result.report.weight_sparsity:.1f}% | {100 * v.accuracy['reference']:.2f} "
                 f"| {100 * v.accuracy['candidate']:.2f} | {time.perf_counter() - start:.0f} s |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None, help="bundled models to sweep (default: all present)")
    parser.add_argument("--sparsities", default="0.3,0.5,0.7,0.9")
    parser.add_argument("--no-channel", action="store_true", help="skip channel pruning of digits_resnet")
    parser.add_argument("--target", action="store_true", help="also run --max-accuracy-drop 1.0 on digits_cnn and digits_resnet")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "prune.md")
    args = parser.parse_args(argv)
    names = args.models if args.models is not None else [m for m in BUNDLED if (ROOT / "models" / f"{m}.onnx").exists()]
    sparsities = [float(s) for s in args.sparsities.split(",")]
    lines = ["# Pruning benchmark", "", "Generated by `scripts/bench_prune.py`; onnxruntime "
             f"{__import__('onnxruntime').__version__}, CPU.", "", "## Accuracy vs sparsity", ""]
    for name in names:
        sweep(name, sparsities, lines)
    if not args.no_channel and (ROOT / "models" / "digits_resnet.onnx").exists():
        lines += ["## Channel pruning", ""]
        channels("digits_resnet", [0.25, 0.5], lines)
    if args.target:
        lines += ["## Accuracy target: --max-accuracy-drop 1.0", "",
                  "| model | weight sparsity | dense acc % | pruned acc % | time |", "|---|---:|---:|---:|---:|"]
        for name in ("digits_cnn", "digits_resnet"):
            target(name, lines)
        lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
