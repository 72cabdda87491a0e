"""Data and reporting shared by the make_* scripts that build models/.

Not run on its own: scripts/make_models.py (PyTorch) and scripts/make_tf_model.py
(Keras) import it, so every bundled model is trained on the same split and
judged on the same eval images. Needs only numpy, scikit-learn, onnx and
onnxruntime, which both training environments have.

The data is scikit-learn's ``load_digits()``: 1797 8x8 images, pixels 0..16,
scaled here to 0..1. A seeded, stratified split keeps 70% for training and
30% (540 images) as the held-out test set. The eval set is those 540 test
images plus one copy of each shifted by one pixel in a seeded random
direction, with light Gaussian noise: 1080 samples, so one sample is ~0.09
accuracy points. Training uses the same kind of shift and noise.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEED = 0
TEST_FRACTION = 0.3
CALIB_SIZE = 256
NOISE_STD = 0.05
OPSET = 17

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"

# The eight one-pixel shifts (dy, dx), no (0, 0).
_SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


@dataclass(frozen=True)
class Digits:
    """Images as float32 [N, 8, 8] in 0..1, labels as int64 [N]."""

    train_x: np.ndarray
    train_y: np.ndarray
    calib_x: np.ndarray
    eval_x: np.ndarray
    eval_y: np.ndarray


def shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shift one [8, 8] image by (dy, dx) pixels, filling with zeros."""
    out = np.zeros_like(img)
    h, w = img.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random shift in {-1, 0, 1}^2 per image, plus light noise; for training."""
    out = np.empty_like(images)
    moves = rng.integers(-1, 2, size=(len(images), 2))
    for i, (img, (dy, dx)) in enumerate(zip(images, moves)):
        out[i] = shift(img, int(dy), int(dx))
    out += rng.normal(0.0, NOISE_STD, size=out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0)


def load() -> Digits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SEED, stratify=y
    )

    rng = np.random.default_rng(SEED + 1)
    calib_x = train_x[rng.choice(len(train_x), CALIB_SIZE, replace=False)]

    moved = np.stack(
        [shift(img, *_SHIFTS[k]) for img, k in zip(test_x, rng.integers(0, len(_SHIFTS), len(test_x)))]
    )
    moved = np.clip(moved + rng.normal(0.0, NOISE_STD, size=moved.shape), 0.0, 1.0)
    eval_x = np.concatenate([test_x, moved.astype(np.float32)])
    eval_y = np.concatenate([test_y, test_y])
    return Digits(train_x, train_y, calib_x, eval_x, eval_y)


def save_npz(name: str, calib: np.ndarray, eval_x: np.ndarray, eval_y: np.ndarray, out: Path) -> None:
    np.savez_compressed(out / f"{name}.calib.npz", input=calib.astype(np.float32))
    np.savez_compressed(
        out / f"{name}.eval.npz", input=eval_x.astype(np.float32), labels=eval_y.astype(np.int64)
    )


@dataclass(frozen=True)
class Report:
    name: str
    accuracy: float
    params: int
    size_bytes: int
    input_shape: str
    latency_ms: float  # median of 200 single-thread batch-1 runs
    latency_min_ms: float  # the fastest of them: the honest figure on a busy machine
    ops: str

    HEADER = "| model | eval acc (fp32, ORT) | params | .onnx size | input | 1-thread batch-1 latency, median (min) | ops |"
    RULE = "| --- | --- | --- | --- | --- | --- | --- |"

    def row(self) -> str:
        return (
            f"| {self.name} | {self.accuracy:.4f} | {self.params:,} | {self.size_bytes / 1024:.0f} KiB"
            f" | {self.input_shape} | {self.latency_ms:.3f} ms ({self.latency_min_ms:.3f} ms) | {self.ops} |"
        )


def check(name: str, params: int, out: Path) -> Report:
    """Check models/NAME.onnx against the contract and measure it with onnxruntime.

    The contract: one float32 input `input` whose first dim is "batch", one
    output `logits` of shape [batch, 10]. Accuracy is on NAME.eval.npz.
    """
    import onnx
    import onnxruntime as ort

    path = out / f"{name}.onnx"
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    (inp,) = model.graph.input
    (outp,) = model.graph.output
    assert inp.name == "input", inp.name
    assert outp.name == "logits", outp.name
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in outp.type.tensor_type.shape.dim]
    assert in_dims[0] == "batch", in_dims
    assert out_dims == ["batch", 10], out_dims

    data = np.load(out / f"{name}.eval.npz")
    calib = np.load(out / f"{name}.calib.npz")["input"]
    assert calib.shape[0] == CALIB_SIZE and list(calib.shape[1:]) == in_dims[1:]
    assert data["labels"].dtype == np.int64

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": data["input"]})[0]
    accuracy = float((logits.argmax(1) == data["labels"]).mean())

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    one = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = data["input"][:1]
    for _ in range(20):
        one.run(None, {"input": x})
    times = []
    for _ in range(200):
        t = time.perf_counter()
        one.run(None, {"input": x})
        times.append(time.perf_counter() - t)

    ops = sorted({n.op_type for n in model.graph.node})
    return Report(
        name=name,
        accuracy=accuracy,
        params=params,
        size_bytes=path.stat().st_size,
        input_shape="[" + ", ".join(str(d) for d in in_dims) + "]",
        latency_ms=statistics.median(times) * 1e3,
        latency_min_ms=min(times) * 1e3,
        ops=", ".join(ops),
    )


def print_table(reports: list[Report]) -> None:
    print(Report.HEADER)
    print(Report.RULE)
    for r in reports:
        print(r.row())
