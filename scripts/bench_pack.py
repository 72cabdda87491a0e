"""Benchmark of `onnxshrink pack`: size against the entropy bound and general-purpose compressors, and speed.

Writes one markdown table (to stdout, and to --out if given) with a row per model and form:

- models: every bundled model in models/ (fp32 as shipped; "int8": float weights of rank >= 2
  quantized here by symmetric per-output-channel rounding, behind DequantizeLinear; "int8 p50"/"int8 p80":
  the 50 % / 80 % smallest-magnitude weights of each such tensor zeroed first), onnx's bundled "light"
  public architectures, and a generated model of --params int8 parameters (Laplace-distributed, dense,
  50 % and 80 % zeros);
- packed bytes of the whole .onnxz, and packed tensor bytes / their order-0 entropy bound;
- zstd -19, xz -9 and gzip -9 of the same .onnx file, and packed / zstd;
- encode throughput in MB/s of tensor bytes, and decode throughput in MB/s of the restored .onnx bytes
  for both our container (load_packed) and a zstd -19 stream of the same .onnx bytes, decoded in the same
  run (one core; best of 3 in CPU time of the process: the wall time on an idle core, and a like-for-like
  ratio on a busy one), with ours / zstd's speed: the bar is our decode against zstd's, and the goal is
  >= 200 MB/s on a quiet core (DECODE_GOAL_MBPS);
- peak RSS of unpacking in a fresh process (VmHWM), with the bare interpreter+imports beside it.

Run from the project root:

    python scripts/bench_pack.py --out bench_pack.md          # everything (a few minutes)
    python scripts/bench_pack.py --quick                      # one small model, a 200k-parameter synthetic one

Numbers depend on the machine; the header of the output says which Python/numpy ran them.
"""

from __future__ import annotations

import argparse
import gzip
import lzma
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxshrink.packing import load_packed, pack_model  # noqa: E402

try:
    import zstandard
except ImportError:  # the zstd columns are left empty
    zstandard = None

DECODE_GOAL_MBPS = 200
BUNDLED = ["digits_cnn", "digits_mlp", "digits_transformer", "digits_tf", "digits_resnet"]
PUBLIC = ["light_densenet121", "light_inception_v2", "light_resnet50"]


def quantize_int8(model: onnx.ModelProto, prune: float = 0.0) -> onnx.ModelProto:
    """Float weights of rank >= 2 in the main graph -> int8 (symmetric, per output channel) behind
    DequantizeLinear, after zeroing the ``prune`` share of smallest magnitudes."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    keep, nodes = [], []
    for t in graph.initializer:
        if t.data_type != TensorProto.FLOAT or len(t.dims) < 2 or np.prod(t.dims) < 256:
            keep.append(t)
            continue
        w = numpy_helper.to_array(t).astype(np.float32)
        if prune:
            w = np.where(np.abs(w) < np.quantile(np.abs(w), prune), 0, w)
        flat = w.reshape(w.shape[0], -1)
        scale = np.maximum(np.abs(flat).max(axis=1), 1e-12) / 127
        q = np.clip(np.round(flat / scale[:, None]), -127, 127).astype(np.int8).reshape(w.shape)
        keep += [numpy_helper.from_array(q, t.name + "_q"), numpy_helper.from_array(scale.astype(np.float32), t.name + "_s")]
        nodes.append(helper.make_node("DequantizeLinear", [t.name + "_q", t.name + "_s"], [t.name], axis=0))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + rest)
    if not any(o.domain in ("", "ai.onnx") and o.version >= 13 for o in out.opset_import):
        for o in out.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = 13
    return out


def synthetic(params: int, zeros: float, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    cols = 5000 if params >= 5000 * 16 else 500
    w = np.clip(np.round(rng.laplace(0, 12, (params // cols, cols))), -127, 127).astype(np.int8)
    w[rng.random(w.shape) < zeros] = 0
    g = helper.make_graph([helper.make_node("DequantizeLinear", ["w", "s"], ["y"])], "synthetic", [],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(w.shape))],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(0.01), "s")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def best_time(fn, repeat: int = 3) -> float:
    """Best of ``repeat`` runs in CPU seconds of this process: the code is single-threaded, so this is
    the wall time on an idle core, and it stays meaningful on a busy machine."""
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return max(best, 1e-6)


def peak_rss_mb(packed: Path | None) -> float:
    """Peak RSS of a fresh interpreter that imports onnxshrink.packing and (if given) unpacks ``packed``.

    Read from /proc/self/status (VmHWM, which exec resets): getrusage's ru_maxrss keeps the
    parent's peak across fork+exec on Linux and would report the benchmark's own memory.
    """
    code = ("import resource, sys; sys.path.insert(0, sys.argv[1]); from onnxshrink.packing import load_packed; "
            "sys.argv[2] and load_packed(sys.argv[2]); "
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')] if sys.platform == 'linux' else []; "
            "print(int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), str(packed or "")], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip()) / 1024


def measure(name: str, form: str, model: onnx.ModelProto, work: Path, compressors: bool = True) -> dict:
    onnx_bytes = model.SerializeToString()
    result = pack_model(model)
    report = result.report
    tensor_mb = report.tensor_bytes_before / 1e6
    t_enc = best_time(lambda: pack_model(model), repeat=2)
    t_dec = best_time(lambda: load_packed(result.data))
    packed = work / f"{name}.{form.replace(' ', '_')}.onnxz"
    packed.write_bytes(result.data)
    row = {
        "model": name, "form": form, "onnx": len(onnx_bytes), "packed": len(result.data),
        "vs_entropy": report.tensor_bytes_after / report.entropy_bytes if report.entropy_bytes else float("nan"),
        "codecs": ", ".join(f"{k} {v}" for k, v in sorted(report.codec_counts.items()) if k != "inline"),
        "enc": tensor_mb / t_enc, "dec": len(onnx_bytes) / 1e6 / t_dec, "rss": peak_rss_mb(packed),
        "zstd": None, "xz": None, "gzip": None, "zstd_dec": None, "dec_vs_zstd": None,
    }
    if compressors:
        row["gzip"] = len(gzip.compress(onnx_bytes, 9, mtime=0))
        row["xz"] = len(lzma.compress(onnx_bytes, preset=9))
        if zstandard is not None:
            z = zstandard.ZstdCompressor(level=19).compress(onnx_bytes)
            row["zstd"] = len(z)
            t_z = best_time(lambda: zstandard.ZstdDecompressor().decompress(z))
            row["zstd_dec"] = len(onnx_bytes) / 1e6 / t_z
            row["dec_vs_zstd"] = t_z / t_dec  # speed ratio: ours / zstd's, same bytes out
    return row


def cpu_flags() -> str:
    """The SIMD flags figures depend on (x86 Linux; 'unknown' elsewhere)."""
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return "cpu flags unknown"
    return "flags: " + (", ".join(f for f in ("avx512_vnni", "avx_vnni", "avx512f", "avx2") if f in flags) or "none of avx2/avx512/vnni")


def fmt(v, spec: str = ",") -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    return format(v, spec)


def table(rows: list[dict], baseline_rss: float) -> str:
    head = ["model", "form", ".onnx bytes", "packed bytes", "tensors / entropy", "zstd -19", "xz -9", "gzip -9",
            "packed / zstd", "encode MB/s", "decode MB/s", "zstd -d MB/s", "decode speed ours / zstd",
            "unpack peak RSS MB", "codecs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ratio = r["packed"] / r["zstd"] if r["zstd"] else None
        lines.append("| " + " | ".join([
            r["model"], r["form"], fmt(r["onnx"]), fmt(r["packed"]), fmt(r["vs_entropy"], ".4f"), fmt(r["zstd"]),
            fmt(r["xz"]), fmt(r["gzip"]), fmt(ratio, ".3f"), fmt(r["enc"], ".0f"), fmt(r["dec"], ".0f"),
            fmt(r["zstd_dec"], ".0f"), fmt(r["dec_vs_zstd"], ".2f"), fmt(r["rss"], ".0f"), r["codecs"]]) + " |")
    lines.append("")
    big = [r for r in rows if r["onnx"] >= 1_000_000]  # small models are dominated by fixed costs
    if big:
        lines.append(f"Models of 1 MB or more: our decode {min(r['dec'] for r in big):.0f}-{max(r['dec'] for r in big):.0f} "
                     f"MB/s (goal >= {DECODE_GOAL_MBPS} on a quiet core)"
                     + (f", zstd -d of the same bytes {min(r['zstd_dec'] for r in big if r['zstd_dec']):.0f}-"
                        f"{max(r['zstd_dec'] for r in big if r['zstd_dec']):.0f} MB/s in this run, ours / zstd "
                        f"{min(r['dec_vs_zstd'] for r in big if r['dec_vs_zstd']):.2f}-"
                        f"{max(r['dec_vs_zstd'] for r in big if r['dec_vs_zstd']):.2f}."
                        if any(r["zstd_dec"] for r in big) else "."))
    lines.append(f"Peak RSS of the interpreter with onnxshrink.packing imported and nothing unpacked: {baseline_rss:.0f} MB. "
                 f"Python {platform.python_version()}, numpy {np.__version__}, onnx {onnx.__version__}, "
                 f"{platform.machine()} ({cpu_flags()}); one thread, best of 3 in CPU time; encode MB/s are of tensor bytes, "
                 f"decode MB/s of the restored .onnx bytes (ours and zstd's alike).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="also write the markdown table here")
    ap.add_argument("--params", type=int, default=10_240_000, help="parameters of the generated int8 model")
    ap.add_argument("--quick", action="store_true", help="digits_mlp and a 200k-parameter generated model only")
    args = ap.parse_args(argv)
    models = ["digits_mlp"] if args.quick else BUNDLED
    params = 200_000 if args.quick else args.params
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in models:
            path = ROOT / "models" / f"{name}.onnx"
            if not path.exists():
                print(f"(skipping {name}: {path} not found)", file=sys.stderr)
                continue
            model = onnx.load(path)
            for form, m in [("fp32", model), ("int8", quantize_int8(model)), ("int8 p50", quantize_int8(model, 0.5)),
                            ("int8 p80", quantize_int8(model, 0.8))]:
                rows.append(measure(name, form, m, work))
                print(f"done {name} {form}", file=sys.stderr)
        if not args.quick:
            data = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
            for name in PUBLIC:
                if (data / f"{name}.onnx").exists():
                    rows.append(measure(name, "as shipped (onnx wheel)", onnx.load(data / f"{name}.onnx"), work))
        label = f"synthetic {params / 1e6:.1f}M"
        for form, zeros in [("int8", 0.0), ("int8 p50", 0.5), ("int8 p80", 0.8)]:
            rows.append(measure(label, form, synthetic(params, zeros), work))
            print(f"done {label} {form}", file=sys.stderr)
        text = table(rows, peak_rss_mb(None))
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
