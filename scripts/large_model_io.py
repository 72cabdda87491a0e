"""Load and re-save a model with ~2.5 GB of external data; check bit-exactness and peak memory.

Writes (under --workdir, default a temp folder, removed afterwards unless --keep):
  big/model.onnx + big/weights.bin   the generated model (large_model_passes.make_model: 10 MatMul weights),
  out/model.onnx + out/model.onnx.data   onnxshrink's re-save,
and prints one line per step: peak RSS of the load+save process and its ratio to the
weight bytes (the foundation issue asks < 1.5x), plus whether every tensor is bit-identical.

Run: python scripts/large_model_io.py [--gb 2.5] [--workdir DIR] [--keep]
Not part of CI (it needs ~6 GB of disk and ~4 GB of RAM).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# The same generated model and digests as the pass-level check beside this script.
from large_model_passes import make_model, tensor_digests


CHILD = r"""
import json, resource, sys
from onnxshrink.model import load_model, save_model
m = load_model(sys.argv[1])
after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
save_model(m, sys.argv[2])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak_after_load": after_load, "peak": peak}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.5)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="onnxshrink-large-"))
    try:
        src, weight_bytes = make_model(work / "big", args.gb * 1e9)
        out = work / "out" / "model.onnx"
        res = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out)], capture_output=True, text=True)
        if res.returncode:
            print(res.stderr)
            return 1
        rss = json.loads(res.stdout)
        same = tensor_digests(src) == tensor_digests(out)
        print(f"weights: {weight_bytes / 1e9:.2f} GB in {len(tensor_digests(src))} tensors")
        print(f"load+save peak RSS: {rss['peak'] / 1e9:.2f} GB = {rss['peak'] / weight_bytes:.2f}x the weight bytes "
              f"(after load {rss['peak_after_load'] / weight_bytes:.2f}x)")
        print(f"round trip bit-exact: {same}")
        return 0 if same and rss["peak"] < 1.5 * weight_bytes else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
