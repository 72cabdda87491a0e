"""Benchmark onnxshrink on the real-model corpus (issue 16), beside onnxruntime's
own quantizers, measured by each model's task check (scripts/real_corpus.py).

For every model x configuration:

* ``shrink``: ``onnxshrink shrink MODEL -o OUT.onnxz --calib C --eval E`` (default recipe and gate,
  unlabelled eval data, as a user would run it);
* ``quantize``: ``onnxshrink quantize MODEL -o OUT.onnx --calib C`` (static int8 QDQ);
* ``w8`` / ``w4``: ``onnxshrink quantize MODEL -o OUT.onnx --weights-only --bits 8`` / ``--bits 4``;
* ``ort static``: ``onnxruntime.quantization.quantize_static`` with its defaults (QDQ) on the same
  calibration data; ``ort dynamic``: ``quantize_dynamic`` with its defaults;

it records the output's size (the packed file for .onnxz) and how many times smaller than the fp32
file it is, the task agreement with fp32 (detections F1 at IoU 0.5, identical CTC strings, top-1
labels, closed-loop VAD segment IoU, retrieval top-1), the mean output cosine, and the latency of the
deployed form (``onnxshrink.session`` for .onnxz, onnxruntime on the file otherwise; 1 thread, batch 1,
median over interleaved rounds, as a ratio to fp32). Each command and each evaluation runs in a child
process with a timeout: a failure is a cell (exit code and the last stderr line), not a crash.

Writes the table between the ``bench_real`` markers of --doc (default docs/real_models.md; the rest of
the file is kept) and every figure as JSON beside it (docs/real_models.json), after each model.

    python scripts/real_corpus.py                       # once: fetch the models, make the data
    python scripts/bench_real.py                        # every model (~40 min on 2 cores)
    python scripts/bench_real.py --models magika_v3_3 rapidocr_cls_v2 --doc /tmp/r.md --timeout 300
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import real_corpus as rc  # noqa: E402
from real_corpus_tasks import markdown_table  # noqa: E402

CONFIGS = ["shrink", "quantize", "w8", "w4", "ort static", "ort dynamic"]
# Not in the default run: shrink with an explicit output-cosine gate instead of the recipe's accuracy gate.
EXTRA_CONFIGS = ["shrink cos0.99"]
BEGIN, END = "<!-- bench_real:begin -->", "<!-- bench_real:end -->"
HEADER = ["model", "configuration", "size bytes", "x smaller", "task agreement", "task details", "output cosine",
          "latency / fp32", "status"]

ORT_STATIC = """
import sys, numpy as np, onnx
from onnxruntime.quantization import quantize_static, CalibrationDataReader
src, calib, out = sys.argv[1:4]
ranks = {i.name: len(i.type.tensor_type.shape.dim) for i in onnx.load(src, load_external_data=False).graph.input}
data = dict(np.load(calib))
n = len(next(iter(data.values())))
class Reader(CalibrationDataReader):
    def __init__(self):
        self.i = 0
    def get_next(self):
        if self.i >= n:
            return None
        i, self.i = self.i, self.i + 1
        return {k: (np.asarray(v[i]) if v.ndim == ranks[k] + 1 else v[i:i + 1]) for k, v in data.items() if k in ranks}
quantize_static(src, out, Reader())
"""
ORT_DYNAMIC = """
import sys
from onnxruntime.quantization import quantize_dynamic
quantize_dynamic(sys.argv[1], sys.argv[3])
"""


def command(config: str, model: Path, calib: Path, evaluation: Path, out: Path) -> list[str]:
    """The command line that makes ``out`` for one configuration."""
    osh = [str(Path(sys.executable).with_name("onnxshrink"))]
    # shrink's JSON report is kept beside its output (OUT.onnxz.json): which widths, trials and notes.
    if config == "shrink":
        return osh + ["shrink", str(model), "-o", str(out), "--calib", str(calib), "--eval", str(evaluation), "-q",
                      "--json", f"{out}.json"]
    if config.startswith("shrink cos"):
        return osh + ["shrink", str(model), "-o", str(out), "--calib", str(calib), "--eval", str(evaluation),
                      "--min-cosine", config[len("shrink cos"):], "-q", "--json", f"{out}.json"]
    if config == "quantize":
        return osh + ["quantize", str(model), "-o", str(out), "--calib", str(calib), "-q"]
    if config in ("w8", "w4"):
        return osh + ["quantize", str(model), "-o", str(out), "--weights-only", "--bits", config[1], "-q"]
    code = ORT_STATIC if config == "ort static" else ORT_DYNAMIC
    return [sys.executable, "-c", code, str(model), str(calib), str(out)]


def output_path(work: Path, name: str, config: str) -> Path:
    suffix = ".onnxz" if config.startswith("shrink") else ".onnx"
    return work / f"{name}.{config.replace(' ', '_')}{suffix}"


def run(cmd: list[str], timeout: float) -> tuple[int | str, str, float]:
    """(exit code or "timeout", last stderr line, seconds)."""
    start = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"no result after {timeout:.0f} s", time.perf_counter() - start
    lines = [x for x in r.stderr.splitlines() if x.strip() and "WARNING" not in x and "Warning" not in x]
    return r.returncode, (lines[-1].strip() if lines else ""), time.perf_counter() - start


def file_size(path: Path) -> int:
    extra = path.with_name(path.name + ".data")
    return path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)


def latency_ratio(model: Path, candidate: Path, evaluation: Path, budget_s: float = 8.0) -> float:
    """Median over interleaved rounds of candidate / fp32 time on the first eval sample (1 thread)."""
    ref, cand = rc.open_session(model), rc.open_session(candidate)
    data = rc.load_npz(evaluation)
    ranks = {i.name: len(i.shape) for i in ref.get_inputs()}
    feed = {k: (np.asarray(data[k][0]) if data[k].ndim == ranks[k] + 1 else data[k][:1]) for k in ranks}
    for _ in range(2):
        ref.run(None, feed)
        cand.run(None, feed)
    ratios, start = [], time.perf_counter()
    while len(ratios) < 5 or (time.perf_counter() - start < budget_s and len(ratios) < 30):
        t0 = time.perf_counter()
        ref.run(None, feed)
        t1 = time.perf_counter()
        cand.run(None, feed)
        t2 = time.perf_counter()
        ratios.append((t2 - t1) / max(t1 - t0, 1e-9))
    return float(np.median(ratios))


def evaluate(name: str, candidate: Path, cache: Path, work: Path) -> dict:
    """Task agreement, output cosine and latency ratio of one candidate (run in a child process).
    The reference's results are kept in ``work`` so each child computes them once per model."""
    import pickle
    p = rc.paths(name, cache)
    ref_file = work / f"{name}.reference.pkl"
    key = (str(p.model), str(p.eval))
    if ref_file.exists():
        rc._REFERENCE_RESULTS[key] = pickle.loads(ref_file.read_bytes())
    agreement, details = rc.task_agreement(candidate, p.model, p.eval)
    if not ref_file.exists():
        ref_file.write_bytes(pickle.dumps(rc._REFERENCE_RESULTS[key]))
    cosine = details.pop("output_cosine")
    return {"agreement": agreement, "details": details, "cosine": cosine,
            "latency_ratio": latency_ratio(p.model, candidate, p.eval) if candidate != p.model else 1.0}


def summary(details: dict) -> str:
    """The few details that say how the task changed."""
    keep = ["matched", "reference_detections", "candidate_detections", "identical", "strings", "char_similarity",
            "same_label", "samples", "segment_f1", "reference_segments", "candidate_segments", "top5_overlap",
            "spearman", "embedding_cosine", "first_changed", "first_flips"]
    parts = []
    for k in keep:
        if k in details and details[k] not in ([], None):
            v = details[k]
            parts.append(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}")
    if details.get("metadata_kept") is False:
        parts.append("METADATA LOST")
    return ", ".join(parts)[:220]


def bench_model(name: str, cache: Path, work: Path, timeout: float, configs: list[str]) -> list[dict]:
    p = rc.paths(name, cache)
    fp32 = file_size(p.model)
    rows = [{"model": name, "configuration": "fp32", "size": fp32, "ratio": 1.0, "agreement": 1.0,
             "details": {}, "cosine": 1.0, "latency_ratio": 1.0, "status": "reference", "seconds": 0.0}]
    for config in configs:
        out = output_path(work, name, config)
        for stale in (out, out.with_name(out.name + ".eval.json")):
            if stale.exists():
                stale.unlink()
        code, line, seconds = run(command(config, p.model, p.calib, p.eval, out), timeout)
        row = {"model": name, "configuration": config, "size": None, "ratio": None, "agreement": None,
               "details": {}, "cosine": None, "latency_ratio": None, "seconds": seconds, "exit": code,
               "status": f"exit {code} in {seconds:.0f} s" + (f": {line}" if code != 0 and line else "")}
        if code == 0 and out.exists():
            row["size"] = file_size(out)
            row["ratio"] = fp32 / row["size"]
            ev_code, ev_line, ev_seconds = run([sys.executable, __file__, "--evaluate", name, str(out), "--cache",
                                                str(cache), "--work", str(work)], timeout)
            result_file = out.with_name(out.name + ".eval.json")
            if ev_code == 0 and result_file.exists():
                row.update(json.loads(result_file.read_text()))
            else:
                row["status"] += f"; evaluation failed (exit {ev_code} in {ev_seconds:.0f} s): {ev_line}"
        elif code == 0:
            row["status"] += ": no output written"
        rows.append(row)
        print(f"  {name} {config}: {row['status']}, agreement {row['agreement']}", flush=True)
    return rows


def fmt(v, spec: str = ".3f", none: str = "-") -> str:
    if v is None:
        return none
    if isinstance(v, float) and np.isnan(v):
        return "nan"
    return format(v, spec)


def cell(row: dict | None) -> str:
    """x smaller / task agreement / latency ratio, or what went wrong."""
    if row is None:
        return "-"
    if row["agreement"] is None:
        exit_code = row.get("exit")
        if exit_code == 0:
            return "eval failed"
        return "timeout" if exit_code == "timeout" else f"exit {exit_code}"
    return f"{fmt(row['ratio'], '.1f')}x / {fmt(row['agreement'])} / {fmt(row['latency_ratio'], '.2f')}"


def matrix(rows: list[dict]) -> str:
    """One row per model, one column per configuration: x smaller / task agreement / latency vs fp32."""
    configs = list(dict.fromkeys(r["configuration"] for r in rows if r["configuration"] != "fp32"))
    models = list(dict.fromkeys(r["model"] for r in rows))
    by = {(r["model"], r["configuration"]): r for r in rows}
    return markdown_table(["model", "fp32 bytes"] + configs,
                          [[m, fmt(by[(m, "fp32")]["size"], ",")] + [cell(by.get((m, c))) for c in configs]
                           for m in models])


def table(rows: list[dict]) -> str:
    return markdown_table(HEADER, [[r["model"], r["configuration"], fmt(r["size"], ","), fmt(r["ratio"], ".2f"),
                                    fmt(r["agreement"]), summary(r["details"]), fmt(r["cosine"], ".4f"),
                                    fmt(r["latency_ratio"], ".2f"), r["status"]] for r in rows])


def machine() -> dict:
    import onnxruntime
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    cpu = next((x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                if x.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"date": datetime.date.today().isoformat(), "cpu": cpu, "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(), "cores": os.cpu_count(),
            "flags": {f: f in flags for f in ("avx512_vnni", "avx_vnni", "avx2", "avx512f")}}


def markers(section: str) -> tuple[str, str]:
    if not section:
        return BEGIN, END
    return f"<!-- bench_real:{section}:begin -->", f"<!-- bench_real:{section}:end -->"


def json_file(doc: Path, section: str) -> Path:
    return doc.with_name(doc.stem + (f".{section}" if section else "") + ".json")


def merged(doc: Path, section: str, rows: list[dict], info: dict) -> list[dict]:
    """``rows`` with the (model, configuration) rows they lack taken from the JSON of an earlier run (each
    keeps the date it was measured), in the corpus's and the configurations' order: re-running one
    configuration of one model replaces only that row."""
    path = json_file(doc, section)
    if not path.exists():
        return rows
    old = json.loads(path.read_text())
    fresh = {(r["model"], r["configuration"]) for r in rows}
    for r in rows:
        r.setdefault("date", info["date"])
    kept = [dict(r, date=r.get("date", old["machine"]["date"])) for r in old["rows"]
            if (r["model"], r["configuration"]) not in fresh]
    order = {e.name: i for i, e in enumerate(rc.MODELS)}
    configs = {c: i for i, c in enumerate(["fp32"] + CONFIGS + EXTRA_CONFIGS)}
    return sorted(kept + rows, key=lambda r: (order.get(r["model"], len(order)),
                                              configs.get(r["configuration"], len(configs))))


def write(doc: Path, rows: list[dict], info: dict, done: list[str], section: str = "") -> None:
    """Replace the block between the section's markers in ``doc`` (append it if absent); JSON beside."""
    begin, end = markers(section)
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["flags"].items())
    text = (f"{begin}\nMeasured {info['date']} by `python scripts/bench_real.py` on {info['cpu']} "
            f"({info['cores']} cores shared; {flags}), onnxruntime {info['onnxruntime']}, Python {info['python']}; "
            f"models: {', '.join(done)}. Latency is 1 thread, batch 1, interleaved with fp32: indicative only on "
            f"a shared machine.\n\nEach cell: x smaller than the fp32 file / task agreement with fp32 / "
            f"latency of the deployed form vs fp32.\n\n{matrix(rows)}\nEvery run:\n\n{table(rows)}{end}")
    old = doc.read_text() if doc.exists() else "# Real models (issue 16)\n\n"
    if begin in old and end in old:
        new = old[:old.index(begin)] + text + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    tmp = doc.with_suffix(".tmp")
    tmp.write_text(new)
    os.replace(tmp, doc)
    json_path = json_file(doc, section)
    jtmp = json_path.with_suffix(".json.tmp")
    jtmp.write_text(json.dumps({"machine": info, "rows": rows}, indent=1, default=str))
    os.replace(jtmp, json_path)


def main() -> None:
    names = [e.name for e in rc.MODELS]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=names, choices=names)
    ap.add_argument("--configs", nargs="*", default=CONFIGS, choices=CONFIGS + EXTRA_CONFIGS)
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of models not run now from the JSON of an earlier run")
    ap.add_argument("--section", default="", help="write between <!-- bench_real:SECTION:begin/end --> markers")
    ap.add_argument("--cache", type=Path, default=rc.default_cache())
    ap.add_argument("--work", type=Path, default=None, help="where outputs go (default CACHE/bench)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per command and per evaluation")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "real_models.md")
    ap.add_argument("--render", action="store_true", help="rewrite the doc's table from its JSON, measuring nothing")
    ap.add_argument("--evaluate", nargs=2, metavar=("NAME", "CANDIDATE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = args.work or args.cache / "bench"
    work.mkdir(parents=True, exist_ok=True)
    if args.evaluate:
        name, candidate = args.evaluate
        result = evaluate(name, Path(candidate), args.cache, work)
        Path(candidate + ".eval.json").write_text(json.dumps(result, default=str))
        return
    if args.render:
        saved = json.loads(json_file(args.doc, args.section).read_text())
        rows = saved["rows"]
        write(args.doc, rows, saved["machine"], list(dict.fromkeys(r["model"] for r in rows)), args.section)
        return
    info = machine()
    rows, done = [], []
    for name in args.models:
        print(f"{name}: preparing", flush=True)
        rc.prepare(rc.BY_NAME[name], args.cache)
        rows += bench_model(name, args.cache, work, args.timeout, args.configs)
        done.append(name)
        everything = merged(args.doc, args.section, rows, info) if args.merge else rows
        write(args.doc, everything, info, list(dict.fromkeys(r["model"] for r in everything)), args.section)


if __name__ == "__main__":
    main()
