"""Load and re-save a model with ~2.5 GB of external data; check bit-exactness and peak memory.

Writes (under --workdir, default a temp folder, removed afterwards unless --keep):
  big/model.onnx + big/weights.bin   the generated model (10 MatMul weights of 250 MB each),
  out/model.onnx + out/model.onnx.data   onnxshrink's re-save,
and prints one line per step: peak RSS of the load+save process and its ratio to the
weight bytes (the foundation issue asks < 1.5x), plus whether every tensor is bit-identical.

Run: python scripts/large_model_io.py [--gb 2.5] [--workdir DIR] [--keep]
Not part of CI (it needs ~6 GB of disk and ~4 GB of RAM).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper


def make_model(folder: Path, total_bytes: float, tensors: int = 10) -> tuple[Path, int]:
    """A chain of MatMuls whose weights live in one external file, written without
    ever holding more than one weight in memory."""
    folder.mkdir(parents=True, exist_ok=True)
    cols = 1024
    rows = int(total_bytes / tensors / 4 / cols)
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    offset = 0
    with open(folder / "weights.bin", "wb") as f:
        for i in range(tensors):
            w = rng.standard_normal((rows, cols), dtype=np.float32)
            f.write(w.tobytes())
            t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[rows, cols])
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", "weights.bin"), ("offset", str(offset)), ("length", str(w.nbytes))):
                e = t.external_data.add()
                e.key, e.value = k, v
            offset += w.nbytes
            inits.append(t)
            del w
    # y_i = x @ w_i^T-ish: keep the graph valid with a Gather of one row per weight.
    idx = helper.make_tensor("idx", TensorProto.INT64, [1], [0])
    outs = []
    for i in range(tensors):
        nodes.append(helper.make_node("Gather", [f"w{i}", "idx"], [f"g{i}"], axis=0))
        outs.append(f"g{i}")
    nodes.append(helper.make_node("Sum", outs, ["s"]))
    nodes.append(helper.make_node("Add", ["s", "x"], ["y"]))
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cols])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cols])], inits + [idx])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path, offset


CHILD = r"""
import json, resource, sys
from onnxshrink.model import load_model, save_model
m = load_model(sys.argv[1])
after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
save_model(m, sys.argv[2])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak_after_load": after_load, "peak": peak}))
"""


def tensor_digests(path: Path) -> dict[str, str]:
    """SHA-256 of every tensor's bytes, reading external data one tensor at a time."""
    model = onnx.load(str(path), load_external_data=False)
    out = {}
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            kv = {e.key: e.value for e in t.external_data}
            with open(path.parent / kv["location"], "rb") as f:
                f.seek(int(kv.get("offset", 0)))
                out[t.name] = hashlib.sha256(f.read(int(kv["length"]))).hexdigest()
        else:
            out[t.name] = hashlib.sha256(onnx.numpy_helper.to_array(t).tobytes()).hexdigest()
    return out


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
