"""Benchmark weight-only quantization on the bundled models; writes a markdown
report (default bench/lowbit.md, or --out) with one row per model:

* fp32 eval accuracy;
* int8 weight-only (per channel, nearest): accuracy, drop in points, size of
  the .onnx relative to fp32, and onnxruntime latency of the
  DequantizeLinear graph relative to fp32 (1 thread, batch 1, median of
  interleaved rounds), as onnxruntime runs it by default and with
  ``session.disable_quant_qdq=1`` (then its constant folding expands the
  weights to float at load);
* int4 weight-only, per channel: accuracy with nearest and with GPTQ
  rounding, and GPTQ block:32; once with the default ``min_size`` (256: tiny
  first convolutions stay float) and once with every weight quantized
  (``min_size=0``), where the two roundings part most.

Every figure is measured here, with onnxruntime on this machine's CPU; the
layer Hessians are collected once per model and reused by every run.

    python scripts/bench_lowbit.py                             # all bundled models (minutes)
    python scripts/bench_lowbit.py --models digits_mlp --out /tmp/lowbit.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxshrink import runtime  # noqa: E402
from onnxshrink.data import NpzData  # noqa: E402
from onnxshrink.lowbit import WeightOnlyOptions, collect_weight_statistics, quantize_weights  # noqa: E402
from onnxshrink.model import load_model  # noqa: E402
from onnxshrink.pruning.allocation import OutputChecker  # noqa: E402

BUNDLED = ["digits_cnn", "digits_mlp", "digits_transformer", "digits_tf", "digits_resnet"]
HEADER = ("| model | fp32 % | int8 % | int8 drop | int8 size | int8 DQ latency | int8 DQ folded latency "
          "| int4 nearest % | int4 gptq % | int4 gptq block:32 % "
          "| all int4 nearest % | all int4 gptq % | all int4 gptq block:32 % |")


def _session(model: onnx.ModelProto, fold_dequantize: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    if fold_dequantize:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def latency_ratio(candidate: onnx.ModelProto, reference: onnx.ModelProto, feed: dict, rounds: int = 3,
                  fold_dequantize: bool = False) -> float:
    """Median over interleaved rounds of latency(candidate) / latency(reference), 1 thread."""
    a, b = _session(candidate, fold_dequantize), _session(reference)
    ratios = [runtime.median_latency_ms(a, feed, runs=30) / runtime.median_latency_ms(b, feed, runs=30)
              for _ in range(rounds)]
    return float(np.median(ratios))


def bench_model(name: str, latency: bool) -> str:
    path = ROOT / "models" / f"{name}.onnx"
    model = load_model(path)
    calib = NpzData(path.with_name(f"{name}.calib.npz"))
    checker = OutputChecker(model, NpzData(path.with_name(f"{name}.eval.npz")))

    def accuracy(m: onnx.ModelProto) -> float:
        return 100 * checker.measure(m)["accuracy"]

    fp32 = 100 * checker.reference_accuracy
    int8 = quantize_weights(model, WeightOnlyOptions(bits=8)).model
    a8 = accuracy(int8)
    cells = [f"{fp32:.2f}", f"{a8:.2f}", f"{fp32 - a8:.2f}", f"{int8.ByteSize() / model.ByteSize():.3f}"]
    if latency:
        feed = {k: v[:1] for k, v in checker.batches[0].inputs.items()}
        cells += [f"{latency_ratio(int8, model, feed):.2f}x", f"{latency_ratio(int8, model, feed, fold_dequantize=True):.2f}x"]
    else:
        cells += ["-", "-"]
    stats = collect_weight_statistics(model, calib, WeightOnlyOptions(bits=4, min_size=0))
    for min_size in (256, 0):
        for rounding, granularity in (("nearest", "channel"), ("gptq", "channel"), ("gptq", "block:32")):
            options = WeightOnlyOptions(bits=4, rounding=rounding, granularity=granularity, min_size=min_size)
            cells.append(f"{accuracy(quantize_weights(model, options, layer_stats=stats).model):.2f}")
    return f"| {name} | " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=BUNDLED)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "lowbit.md")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    lines = ["## Weight-only quantization (onnxshrink.lowbit)", "", HEADER, "|---|" + "---:|" * 12]
    for name in args.models:
        lines.append(bench_model(name, not args.no_latency))
    lines += ["", f"_{time.perf_counter() - start:.0f} s; accuracy in % on the eval split; sizes are .onnx bytes "
              "relative to fp32; latency is the DequantizeLinear graph relative to fp32 (1 thread, batch 1), 'folded' with "
              "session.disable_quant_qdq=1; 'all' quantizes every weight (min_size 0), the others leave weights under 256 elements float._", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
