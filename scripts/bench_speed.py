"""Speed and memory of what a user runs, side by side (issue 17): writes docs/speed.md.

For every bundled model, and the transformer of the real-model corpus when its
files are there (``--corpus DIR``: minilm_l6_v2.onnx with .calib.npz/.eval.npz,
as scripts/real_corpus.py leaves them; default $ONNXSHRINK_CORPUS/models or
~/.cache/onnxshrink-corpus/models), one run measures:

- fp32, as shipped;
- ours static int8: ``onnxshrink.quantize`` with the calibration data, the .onnx as written;
- onnxruntime int8: ``onnxruntime.quantization.quantize_static`` (QDQ, its defaults) on the same data;
- ours ``shrink --weight-bits 4,8`` (bundled: ``--max-accuracy-drop 1``; the corpus model has no labels:
  ``--min-cosine``, no pruning) in its default deployed form, what ``onnxshrink unpack`` writes;
- ours weight-only int8 (``quantize --weights-only --bits 8``), packed, in its default deployed form;

each as latency / fp32 (1 thread, batch 1: the median over interleaved rounds of
median-of-runs ratios, fp32 timed right before each candidate), process RSS
after load (VmRSS of a fresh process that only imports onnxruntime, builds
the session and hands freed heap back with malloc_trim; also less that of a
session of a one-node model: what the model adds), the weights' bytes as
loaded, the .onnx file size, and the forms its quantized weights run in. A
second table times the shrink output in each ``--materialize`` form (qdq,
native, float, auto): the measurement ``auto``'s rule comes from.

Run from the project root (about 10 minutes on a shared 2-core machine; the corpus model adds ~10):

    python scripts/bench_speed.py --out docs/speed.md
    python scripts/bench_speed.py --models digits_mlp --no-corpus --quick     # a smoke run, ~1 minute
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxshrink import runtime  # noqa: E402
from onnxshrink.packing import load_packed, materialize, pack_model, write_packed  # noqa: E402

BUNDLED = ["digits_cnn", "digits_mlp", "digits_transformer", "digits_tf", "digits_resnet"]
CORPUS_MODEL = "minilm_l6_v2"
FORM_ABBREV = {"matmulnbits": "MatMulNBits", "gather_block_quantized": "GatherBlockQuantized", "float": "float32",
               "qdq": "int+DQ"}
# malloc_trim: without it, whether glibc had handed the parsed file's buffers back decided
# fp32 MiniLM's figure (100 or 127 MB added, run to run); with it the figure is what stays in use.
_RSS = """
import ctypes, gc, sys
import onnxruntime as ort
def rss():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS:')) * 1024
so = ort.SessionOptions(); so.intra_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], so, providers=['CPUExecutionProvider'])
gc.collect()
try:
    ctypes.CDLL('libc.so.6').malloc_trim(0)
except OSError:
    pass
print(rss())
"""


def cpu_flags() -> str:
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split())
        name = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                    platform.processor())
    except (OSError, StopIteration):
        return f"{platform.machine()}, CPU flags unknown"
    have = [f for f in ("avx512_vnni", "avx_vnni", "avx512f", "avx2") if f in flags]
    return f"{name} ({platform.machine()}; {', '.join(have) or 'no avx2/avx512/vnni'})"


def rss_after_load(path: Path) -> int:
    """VmRSS of a fresh process once onnxruntime has loaded ``path`` (bytes)."""
    if not sys.platform.startswith("linux"):
        return 0
    out = subprocess.run([sys.executable, "-c", _RSS, str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout)


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def feed_of(eval_path: Path, sess: ort.InferenceSession) -> dict:
    data = np.load(eval_path)
    return {i.name: data[i.name][:1] for i in sess.get_inputs()}


def latency_ratios(paths: dict[str, Path], feed: dict, rounds: int, runs: int) -> dict[str, float]:
    """latency(config) / latency(fp32) per config: median over rounds, fp32 timed right before each.
    Each timing takes at least ``runs`` runs and about 50 ms, so a scheduler hiccup on a busy
    machine is one sample among many, not the median."""
    sessions = {k: session(p) for k, p in paths.items()}
    base = sessions.pop("fp32")
    one = runtime.median_latency_ms(base, feed, runs=5) / 1000
    runs = int(min(max(runs, 0.05 / max(one, 1e-6)), 2000))
    ratios: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for key, s in sessions.items():
            before = runtime.median_latency_ms(base, feed, runs=runs)
            ratios[key].append(runtime.median_latency_ms(s, feed, runs=runs) / before)
    return {"fp32": 1.0, **{k: float(np.median(v)) for k, v in ratios.items()}}


class CalibReader:
    """onnxruntime's CalibrationDataReader over an .npz, one sample at a time."""

    def __init__(self, path: Path, names: list[str], limit: int = 64):
        data = np.load(path)
        count = min(limit, len(data[names[0]]))
        self.items = iter([{n: data[n][i:i + 1] for n in names} for i in range(count)])

    def get_next(self):
        return next(self.items, None)


def ort_static_int8(src: Path, calib: Path, out: Path) -> str:
    from onnxruntime.quantization import QuantFormat, quantize_static

    names = [i.name for i in session(src).get_inputs()]
    quantize_static(str(src), str(out), CalibReader(calib, names), quant_format=QuantFormat.QDQ)
    return "quantize_static, QDQ, its defaults (per tensor)"


def our_static_int8(src: Path, calib: Path, out: Path) -> str:
    import onnxshrink

    result = onnxshrink.quantize(onnxshrink.load(src), calib)
    onnxshrink.save(result.model, out)
    return "onnxshrink quantize (per channel)"


def cli(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from onnxshrink.cli import main; sys.argv[0] = 'onnxshrink'; main()"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=env)


def our_shrink(src: Path, calib: Path, evals: Path, out: Path, gate: list[str]) -> tuple[Path | None, str]:
    packed = out.with_suffix(".onnxz")
    start = time.perf_counter()
    done = cli("shrink", str(src), "-o", str(packed), "--calib", str(calib), "--eval", str(evals),
               "--weight-bits", "4,8", *gate, "--quiet")
    if done.returncode != 0:
        return None, f"shrink exit {done.returncode}: {done.stderr.strip()[-150:]}"
    note = f"{' '.join(gate)}; shrink {time.perf_counter() - start:.0f} s"
    return packed, note


def weight_only_int8(src: Path, out: Path) -> tuple[Path, str]:
    from onnxshrink.lowbit import WeightOnlyOptions, quantize_weights

    packed = out.with_suffix(".onnxz")
    write_packed(pack_model(quantize_weights(onnx.load(src), WeightOnlyOptions(bits=8)).model), packed)
    return packed, "per channel, nearest"


def deploy(packed: Path, out: Path, mode: str = "auto") -> str:
    """Write ``packed`` in load form ``mode`` to ``out``; the forms, summarised."""
    model = load_packed(packed)
    forms = materialize(model, mode)
    onnx.save(model, str(out))
    counts: dict[str, int] = {}
    for f in forms:
        kind = FORM_ABBREV[f.form] + (f" {f.bits}-bit" if f.form == "matmulnbits" else "")
        counts[kind] = counts.get(kind, 0) + 1
    text = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    heads = sum(n.op_type == "MultiHeadAttention" for n in model.graph.node)
    return text + (f"; {heads} attention layers on MultiHeadAttention" if heads else "")


def bench_model(name: str, src: Path, calib: Path, evals: Path, work: Path, gate: list[str], rounds: int,
                runs: int) -> tuple[list[dict], list[str]]:
    rows: list[dict] = []
    paths = {"fp32": src}
    notes = {"fp32": "as shipped"}
    forms = {"fp32": ""}
    for key, make in (("ours static int8", our_static_int8), ("onnxruntime int8", ort_static_int8)):
        out = work / f"{name}.{key.split()[0]}.int8.onnx"
        try:
            notes[key] = make(src, calib, out)
            paths[key] = out
            forms[key] = "static QDQ"
        except Exception as e:  # a peer failing on a model is a result, not a crash
            notes[key] = f"failed: {' '.join(str(e).split())[:120]}"
        print(f"{name}: {key} done", file=sys.stderr)
    packed, note = our_shrink(src, calib, evals, work / f"{name}.w48.onnx", gate)
    form_rows: list[str] = []
    if packed is not None:
        key = "ours shrink --weight-bits 4,8, default form"
        paths[key] = work / f"{name}.w48.onnx"
        forms[key] = deploy(packed, paths[key])
        notes[key] = note + f"; .onnxz {packed.stat().st_size:,} B"
        form_rows = forms_table(name, src, packed, work, evals, rounds, runs)
    else:
        notes["ours shrink --weight-bits 4,8, default form"] = note
    print(f"{name}: shrink done", file=sys.stderr)
    packed, note = weight_only_int8(src, work / f"{name}.wo8.onnx")
    key = "ours weight-only int8, default form"
    paths[key] = work / f"{name}.wo8.onnx"
    forms[key] = deploy(packed, paths[key])
    notes[key] = note
    feed = feed_of(evals, session(src))
    ratios = latency_ratios(paths, feed, rounds, runs)
    empty = rss_after_load(work / "empty.onnx")
    base_rss = rss_after_load(src)
    for key in notes:
        path = paths.get(key)
        rss = base_rss if key == "fp32" else rss_after_load(path) if path else None
        rows.append({"model": name, "config": key, "latency": ratios.get(key), "rss": rss,
                     "weights": weight_bytes(path) / weight_bytes(src) if path else None,
                     "added": (rss - empty) / max(base_rss - empty, 1) if rss else None,
                     "bytes": path.stat().st_size if path else None, "forms": forms.get(key, ""), "note": notes[key]})
    return rows, form_rows


def weight_bytes(path: Path) -> int:
    """Bytes of the model's initializers and Constant values: its weights as they sit in memory."""
    from onnxshrink.model import all_tensors

    return sum(len(t.raw_data) or t.ByteSize() for t, _ in all_tensors(onnx.load(str(path))))


def forms_table(name: str, src: Path, packed: Path, work: Path, evals: Path, rounds: int, runs: int) -> list[str]:
    paths = {"fp32": src}
    for mode in ("qdq", "native", "float", "auto"):
        paths[mode] = work / f"{name}.w48.{mode}.onnx"
        deploy(packed, paths[mode], mode)
    ratios = latency_ratios(paths, feed_of(evals, session(src)), rounds, runs)
    size = src.stat().st_size
    return [f"| {name} | " + " | ".join(f"{ratios[m]:.2f}x / {paths[m].stat().st_size / size:.2f}"
                                        for m in ("qdq", "native", "float", "auto")) + " |"]


def empty_model(path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "empty",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def memory_ratio(row: dict, fp32: dict) -> float:
    """The memory bar's figure: weights in memory, and for models of 10 MB or more also the RSS they
    add (below that the allocator's noise is larger than the weights)."""
    return max(row["weights"], row["added"] or 0) if fp32["bytes"] >= 10_000_000 else row["weights"]


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def render(rows: list[dict], form_rows: list[str], command: str, seconds: float) -> str:
    lines = [f"`{command}` on {time.strftime('%Y-%m-%d')}, {seconds:.0f} s, onnxruntime {ort.__version__}, "
             f"CPU: {cpu_flags()}. Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: "
             "latencies are ratios of interleaved runs, absolute times mean nothing here.", "",
             "| model | configuration | latency / fp32 | weights in memory / fp32's | RSS after load MB "
             "| RSS added / fp32's | .onnx bytes | forms of the quantized weights | note |",
             "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        rss = "-" if r["rss"] is None else f"{r['rss'] / 2**20:.0f}"
        size = "-" if r["bytes"] is None else f"{r['bytes']:,}"
        lines.append(f"| {r['model']} | {r['config']} | {_x(r['latency'])} | {_x(r['weights'])} | {rss} "
                     f"| {_x(r['added'])} | {size} | {r['forms']} | {r['note']} |")
    lines += ["", "Issue 17's bars, from the table above:", ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        got = {r["config"]: r for r in rows if r["model"] == model}
        w48 = got.get("ours shrink --weight-bits 4,8, default form", {})
        ours, theirs = got.get("ours static int8", {}).get("latency"), got.get("onnxruntime int8", {}).get("latency")
        parts = []
        if w48.get("latency") is not None:
            parts.append(f"shrink 4,8 default form {w48['latency']:.2f}x fp32 latency (bar 1.0: "
                         f"{'holds' if w48['latency'] <= 1.0 else 'short'}), weights in memory {_x(w48['weights'])} "
                         f"of fp32's and RSS added {_x(w48['added'])} (bar 0.35: "
                         f"{'holds' if memory_ratio(w48, got['fp32']) <= 0.35 else 'short'})")
        if ours and theirs:
            parts.append(f"our static int8 / onnxruntime's int8 latency {ours / theirs:.2f} (bar 1.05: "
                         f"{'holds' if ours / theirs <= 1.05 else 'short'})")
        lines.append(f"- {model}: " + ("; ".join(parts) or "not measured"))
    lines += ["", "The shrink output in each `--materialize` form: latency / fp32 and .onnx size / fp32's.", "",
              "| model | qdq (as packed) | native | float | auto (default) |", "|---|---:|---:|---:|---:|", *form_rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="write the tables here (docs/speed.md keeps its prose above a marker)")
    ap.add_argument("--models", nargs="*", default=BUNDLED)
    default_corpus = Path(os.environ.get("ONNXSHRINK_CORPUS", Path.home() / ".cache" / "onnxshrink-corpus")) / "models"
    ap.add_argument("--corpus", type=Path, default=default_corpus, help="folder with minilm_l6_v2.onnx and its data")
    ap.add_argument("--no-corpus", action="store_true")
    ap.add_argument("--corpus-min-cosine", default="0.99")
    ap.add_argument("--quick", action="store_true", help="3 rounds of 10 runs instead of 7 of 30")
    args = ap.parse_args(argv)
    rounds, runs = (3, 10) if args.quick else (7, 30)
    start = time.perf_counter()
    rows, form_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        empty_model(work / "empty.onnx")
        todo = [(n, ROOT / "models" / f"{n}.onnx", ["--max-accuracy-drop", "1"]) for n in args.models]
        corpus = args.corpus / f"{CORPUS_MODEL}.onnx"
        if not args.no_corpus and corpus.exists():
            todo.append((CORPUS_MODEL, corpus, ["--min-cosine", args.corpus_min_cosine, "--no-prune"]))
        elif not args.no_corpus:
            print(f"(no {corpus}: run scripts/real_corpus.py first to add the corpus transformer)", file=sys.stderr)
        for name, src, gate in todo:
            r, f = bench_model(name, src, src.with_suffix(".calib.npz"), src.with_suffix(".eval.npz"), work, gate,
                               rounds, runs if name != CORPUS_MODEL else max(runs // 3, 5))
            rows += r
            form_rows += f
    command = "python scripts/bench_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(rows, form_rows, command.strip(), time.perf_counter() - start)
    print(text)
    if args.out:
        marker = "<!-- bench_speed.py writes below this line -->"
        old = args.out.read_text() if args.out.exists() else ""
        head = old.split(marker)[0] if marker in old else ""
        args.out.write_text(f"{head}{marker}\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
