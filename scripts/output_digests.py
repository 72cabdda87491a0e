"""Fingerprint what onnxshrink writes: run a fixed set of CLI commands on the
bundled models and print, per command, its exit code, the sha256 of the file
it wrote (or "-" when it wrote none), for ``shrink`` the sha256 of the
deterministic part of its JSON report (search list, stages, layers, sizes:
everything but latency and timings), the wall time, and the last line of
stderr (compared when the command failed). Writes nothing in
the repository: outputs go to a temporary folder, removed at the end
(``--keep DIR`` keeps them there instead).

A refactoring that promises "every output byte-identical" records the
digests before the change and compares after:

    python scripts/output_digests.py --out /tmp/before.tsv             # ~3 min on 2 busy cores
    python scripts/output_digests.py --compare /tmp/before.tsv         # exit 1 on any difference
    python scripts/output_digests.py --only shrink-cnn,pack-cnn        # a subset, by name

The commands run with the interpreter running this script (``python -c
'from onnxshrink.cli import main; main()'``), so the onnxshrink that
interpreter imports is the one measured. Times are wall seconds on a shared
machine: compare them between interleaved runs, not across days.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = Path(__file__).resolve().parent.parent / "models"
ALL = ("digits_cnn", "digits_mlp", "digits_transformer", "digits_tf", "digits_resnet")
# Report keys that do not depend on timing (latency is measured, so "final" is left out).
SHRINK_REPORT_KEYS = ("recipe", "weight_bits", "gate", "passed", "output_bytes", "stages", "layers",
                      "float16_tensors", "search")


def _data(model: str, kind: str) -> str:
    return str(MODELS / f"{model}.{kind}.npz")


def commands() -> list[tuple[str, list[str], str]]:
    """(name, CLI arguments with {out} for the output, output suffix), in a fixed order."""
    cmds: list[tuple[str, list[str], str]] = []
    short = {"digits_cnn": "cnn", "digits_mlp": "mlp", "digits_transformer": "transformer", "digits_tf": "tf",
             "digits_resnet": "resnet"}

    def gated(model: str) -> list[str]:
        return ["--calib", _data(model, "calib"), "--eval", _data(model, "eval"), "--max-accuracy-drop", "1.0"]

    for model in ("digits_cnn", "digits_transformer"):
        cmds.append((f"shrink-{short[model]}", ["shrink", f"models/{model}.onnx", *gated(model)], ".onnxz"))
    for model in ("digits_cnn", "digits_mlp"):
        cmds.append((f"shrink-w48-{short[model]}", ["shrink", f"models/{model}.onnx", *gated(model),
                                                    "--weight-bits", "4,8"], ".onnxz"))
    cmds.append(("shrink-cosine-tf", ["shrink", "models/digits_tf.onnx", "--calib", _data("digits_tf", "calib"),
                                      "--min-cosine", "0.999"], ".onnxz"))
    cmds.append(("shrink-ratio-mlp", ["shrink", "models/digits_mlp.onnx", *gated("digits_mlp"),
                                      "--target-ratio", "6"], ".onnxz"))
    # The bolder trial: a different model (cnn), the last trial's outcome reused (mlp: same pruning).
    for model in ("digits_cnn", "digits_mlp"):
        cmds.append((f"shrink-bolder-{short[model]}", ["shrink", f"models/{model}.onnx", *gated(model)[:-1], "0.2"],
                     ".onnxz"))
    cmds.append(("shrink-sparsity-cnn", ["shrink", "models/digits_cnn.onnx", *gated("digits_cnn"), "--sparsity", "0.3"],
                 ".onnxz"))
    cmds.append(("shrink-w23-mlp", ["shrink", "models/digits_mlp.onnx", "--calib", _data("digits_mlp", "calib"),
                                    "--min-cosine", "0.9999999", "--weight-bits", "2,3"], ".onnxz"))
    # Nothing passes: exit 1 and the reason (every trial failed; the ratio not reached).
    cmds.append(("shrink-fail-mlp", ["shrink", "models/digits_mlp.onnx", "--calib", _data("digits_mlp", "calib"),
                                     "--min-cosine", "0.99999999"], ".onnxz"))
    cmds.append(("shrink-ratio-fail-mlp", ["shrink", "models/digits_mlp.onnx", *gated("digits_mlp"),
                                           "--target-ratio", "30"], ".onnxz"))
    for model in ALL:
        cmds.append((f"quantize-{short[model]}", ["quantize", f"models/{model}.onnx", "--calib",
                                                  _data(model, "calib")], ".onnx"))
    # The CLI's summary of --dynamic may fail after the file is written: the file is what is hashed.
    cmds.append(("quantize-dynamic-mlp", ["quantize", "models/digits_mlp.onnx", "--dynamic"], ".onnx"))
    for model in ("digits_cnn", "digits_transformer"):
        cmds.append((f"quantize-gptq4-{short[model]}", ["quantize", f"models/{model}.onnx", "--weights-only",
                                                        "--bits", "4", "--rounding", "gptq", "--calib",
                                                        _data(model, "calib")], ".onnx"))
    for model in ("digits_cnn", "digits_transformer"):
        cmds.append((f"prune-hessian-{short[model]}", ["prune", f"models/{model}.onnx", "--sparsity", "0.5",
                                                       "--method", "hessian", "--calib", _data(model, "calib")],
                     ".onnx"))
    for model in ("digits_cnn", "digits_mlp"):
        cmds.append((f"prune-channel-{short[model]}", ["prune", f"models/{model}.onnx", "--sparsity", "0.25",
                                                       "--pattern", "channel", "--method", "hessian", "--calib",
                                                       _data(model, "calib")], ".onnx"))
    cmds.append(("prune-target-mlp", ["prune", "models/digits_mlp.onnx", *gated("digits_mlp")], ".onnx"))
    for model in ("digits_cnn", "digits_resnet"):
        cmds.append((f"pack-{short[model]}", ["pack", f"models/{model}.onnx"], ".onnxz"))
    return cmds


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "-"


def run(name: str, args: list[str], suffix: str, folder: Path) -> dict[str, str]:
    out = folder / f"{name}{suffix}"
    report = folder / f"{name}.json"
    argv = [sys.executable, "-c", "from onnxshrink.cli import main; main()", *args, "-o", str(out), "--quiet"]
    if args[0] == "shrink":
        argv += ["--json", str(report)]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=MODELS.parent, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    report_sha = "-"
    if report.exists():
        data = json.loads(report.read_text())
        kept = {k: data.get(k) for k in SHRINK_REPORT_KEYS}
        report_sha = hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()
    lines = done.stderr.strip().splitlines()
    return {"name": name, "exit": str(done.returncode), "output": _sha(out), "report": report_sha,
            "seconds": f"{seconds:.1f}", "stderr": lines[-1][:200] if lines else ""}


FIELDS = ("name", "exit", "output", "report", "seconds", "stderr")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="also write the table (tab-separated) here")
    parser.add_argument("--compare", type=Path, help="a table written earlier: report every difference, exit 1 on any")
    parser.add_argument("--only", help="comma-separated command names")
    parser.add_argument("--keep", type=Path, help="write the outputs and JSON reports into this folder (kept)")
    args = parser.parse_args()
    wanted = set(args.only.split(",")) if args.only else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxshrink-digests-") as tmp:
        folder = Path(tmp) if args.keep is None else args.keep
        folder.mkdir(parents=True, exist_ok=True)
        for name, argv, suffix in commands():
            if wanted is not None and name not in wanted:
                continue
            row = run(name, argv, suffix, folder)
            rows.append(row)
            print("\t".join(row[f] for f in FIELDS), flush=True)
    if args.out:
        args.out.write_text("".join("\t".join(r[f] for f in FIELDS) + "\n" for r in rows))
    total = sum(float(r["seconds"]) for r in rows)
    print(f"total\t{total:.1f} s", flush=True)
    if not args.compare:
        return 0
    before = {}
    for line in args.compare.read_text().splitlines():
        parts = line.split("\t")
        before[parts[0]] = dict(zip(FIELDS, parts))
    differ = 0
    for row in rows:
        old = before.get(row["name"])
        if old is None:
            print(f"{row['name']}: not in {args.compare}")
            continue
        fields = ("exit", "output", "report") + (("stderr",) if row["exit"] != "0" else ())
        changed = [f for f in fields if old.get(f) != row[f]]
        if changed:
            differ += 1
            print(f"{row['name']}: DIFFERS in {', '.join(changed)}")
    old_total = sum(float(before[r["name"]]["seconds"]) for r in rows if r["name"] in before)
    print(f"{len(rows) - differ} of {len(rows)} identical; wall {total:.1f} s now, {old_total:.1f} s before")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
