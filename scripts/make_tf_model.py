"""Train the Keras digit model bundled in models/ and export it to ONNX with tf2onnx.

Writes models/digits_tf.onnx (fp32, opset 17, NHWC input `input` [batch, 8, 8, 1],
output `logits` [batch, 10]), models/digits_tf.calib.npz and models/digits_tf.eval.npz,
on the same split and eval images as scripts/make_models.py, then checks the
model with onnx.checker and onnxruntime and prints one table row.

The NHWC input is the point: tf2onnx wraps each Conv in Transpose nodes, the
layout a compressor meets in models converted from TensorFlow.

TensorFlow gets an environment of its own, apart from the torch one:

    python3 -m venv /tmp/tf-venv
    /tmp/tf-venv/bin/pip install "tensorflow-cpu==2.21.*" "tf2onnx==1.17.*" scikit-learn onnx onnxruntime numpy
    /tmp/tf-venv/bin/python scripts/make_tf_model.py     # ~30 s on 2 idle cores

Seeds are fixed and TensorFlow runs with op determinism on. tf2onnx 1.17 with
Keras 3 cannot convert a keras.Sequential (from_keras fails with a KeyError),
so the model uses the functional API and is converted through a tf.function.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402
from tensorflow import keras  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_digits_data as data  # noqa: E402

NAME = "digits_tf"
EPOCHS = 100
SEED = data.SEED + 10


def build() -> keras.Model:
    inputs = keras.Input(shape=(8, 8, 1), name="input")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPool2D()(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name=NAME)


def train(digits: data.Digits) -> keras.Model:
    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(SEED + 100)
    model = build()
    steps = -(-len(digits.train_x) // 64)
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, EPOCHS * steps)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    for epoch in range(EPOCHS):
        order = rng.permutation(len(digits.train_x))
        x, y = data.augment(digits.train_x, rng)[order][..., None], digits.train_y[order]
        losses = [model.train_on_batch(x[i : i + 64], y[i : i + 64])[0] for i in range(0, len(x), 64)]
        if (epoch + 1) % 20 == 0:
            print(f"  {NAME} epoch {epoch + 1}/{EPOCHS} loss {np.mean(losses):.4f}", flush=True)
    return model


def rename_io(model: onnx.ModelProto, new_input: str, new_output: str) -> None:
    """Name the single graph input and output, and call their first dim "batch"."""
    graph = model.graph
    (inp,), (outp,) = graph.input, graph.output
    renames = {inp.name: new_input, outp.name: new_output}
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for vi in graph.value_info:
        vi.name = renames.get(vi.name, vi.name)
    inp.name, outp.name = new_input, new_output
    for vi in (inp, outp):
        vi.type.tensor_type.shape.dim[0].dim_param = "batch"


def export(model: keras.Model, out: Path) -> None:
    spec = (tf.TensorSpec([None, 8, 8, 1], tf.float32, name="input"),)

    @tf.function(input_signature=spec)
    def forward(x):
        return model(x, training=False)

    proto, _ = tf2onnx.convert.from_function(forward, input_signature=spec, opset=data.OPSET)
    rename_io(proto, "input", "logits")
    proto.producer_name = "tf2onnx (scripts/make_tf_model.py)"
    onnx.save(proto, out / f"{NAME}.onnx")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=data.MODELS_DIR)
    args = parser.parse_args(argv)

    digits = data.load()
    eval_x = digits.eval_x[..., None]
    # make_models.py writes the same images in NCHW; check they agree when it has run.
    cnn_eval = args.out / "digits_cnn.eval.npz"
    if cnn_eval.exists():
        np.testing.assert_array_equal(np.load(cnn_eval)["input"].transpose(0, 2, 3, 1), eval_x)

    args.out.mkdir(parents=True, exist_ok=True)
    model = train(digits)
    data.save_npz(NAME, digits.calib_x[..., None], eval_x, digits.eval_y, args.out)
    export(model, args.out)

    report = data.check(NAME, model.count_params(), args.out)
    keras_acc = float((model.predict(eval_x, verbose=0).argmax(1) == digits.eval_y).mean())
    print(f"  {NAME}: keras acc {keras_acc:.4f}, onnxruntime acc {report.accuracy:.4f}", flush=True)
    data.print_table([report])


if __name__ == "__main__":
    main()
