"""Train the four PyTorch digit models bundled in models/ and export them to ONNX.

Writes, for NAME in digits_cnn, digits_mlp, digits_transformer, digits_resnet:

    models/NAME.onnx        fp32, opset 17, input `input` [batch, ...], output `logits` [batch, 10]
    models/NAME.calib.npz   `input`: 256 training samples in the model's layout
    models/NAME.eval.npz    `input`: 1080 held-out samples, `labels`: int64

then checks each file with onnx.checker and onnxruntime and prints a table
(eval accuracy, params, size, single-thread batch-1 latency, op types).
digits_tf comes from scripts/make_tf_model.py, in its own environment.

Run it in an environment of its own, with the CPU build of torch pinned:

    python3 -m venv /tmp/models-venv
    /tmp/models-venv/bin/pip install torch==2.13.0 onnxscript scikit-learn onnx onnxruntime numpy
    /tmp/models-venv/bin/python scripts/make_models.py            # all four, ~5 min on 2 idle cores
    /tmp/models-venv/bin/python scripts/make_models.py digits_mlp # just one

Seeds are fixed (SEED in make_digits_data.py, plus one offset per model) and
torch runs with deterministic algorithms, so a re-run on the same CPU and
torch version gives the same weights; other CPUs may differ in the last bits.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_digits_data as data  # noqa: E402


class DigitsCNN(nn.Module):
    """Three 3x3 conv+BN+ReLU layers, one 2x2 max pool, two Linear layers."""

    layout = "nchw"

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(64)
        self.fc1 = nn.Linear(64 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.max_pool2d(x, 2)
        x = F.relu(self.bn3(self.conv3(x)))
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


class DigitsMLP(nn.Module):
    """64 -> 256 -> 128 -> 10. The middle layer is a bare `x @ w + b`, so the
    graph has MatMul + Add beside the Gemm of the two nn.Linear layers."""

    layout = "flat"

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 256)
        hidden = nn.Linear(256, 128)  # borrow its init, keep the weight as [in, out]
        self.w2 = nn.Parameter(hidden.weight.detach().t().contiguous())
        self.b2 = nn.Parameter(hidden.bias.detach().clone())
        self.fc3 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x))
        x = F.relu(x @ self.w2 + self.b2)
        return self.fc3(x)


class Attention(nn.Module):
    """Multi-head self-attention written out, so it exports as plain MatMul,
    Softmax, Reshape and Transpose nodes."""

    def __init__(self, dim: int, heads: int, tokens: int) -> None:
        super().__init__()
        self.heads, self.head_dim, self.tokens = heads, dim // heads, tokens
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.scale = self.head_dim**-0.5

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, self.tokens, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        att = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(-1, self.tokens, self.heads * self.head_dim)
        return self.o(y)


class Block(nn.Module):
    """Pre-norm encoder block: x + attn(ln(x)), then x + ffn(ln(x))."""

    def __init__(self, dim: int, heads: int, tokens: int, hidden: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, tokens)
        self.ln2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, hidden)
        self.ff2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))


class DigitsTransformer(nn.Module):
    """The 8 image rows are 8 tokens of 8 features; 2 pre-norm blocks, mean pool."""

    layout = "rows"

    def __init__(self, dim: int = 64, heads: int = 4, tokens: int = 8) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.pos = nn.Parameter(torch.randn(tokens, dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, heads, tokens, 2 * dim) for _ in range(2)])
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x).mean(dim=1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.proj is None else self.proj(x)))


class DigitsResNet(nn.Module):
    """ResNet-ish on the image upsampled to 32x32 inside the model: a stem and
    three stages of two basic blocks (32, 64, 128 channels), big enough that
    latency and channel pruning mean something."""

    layout = "nchw"

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]))
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks += [BasicBlock(cin, w, stride), BasicBlock(w, w, 1)]
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(widths[-1], 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=4.0, mode="bilinear", align_corners=False)
        x = self.blocks(F.relu(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# name -> (class, epochs, keep BatchNormalization nodes in the ONNX graph)
SPECS = {
    "digits_cnn": (DigitsCNN, 30, True),
    "digits_mlp": (DigitsMLP, 200, False),
    "digits_transformer": (DigitsTransformer, 200, False),
    "digits_resnet": (DigitsResNet, 15, False),
}


def to_layout(images: np.ndarray, layout: str) -> np.ndarray:
    """[N, 8, 8] images to the model's input layout."""
    n = len(images)
    return {"nchw": images.reshape(n, 1, 8, 8), "flat": images.reshape(n, 64), "rows": images}[layout]


def train(name: str, digits: data.Digits) -> tuple[nn.Module, int]:
    cls, epochs, _ = SPECS[name]
    offset = list(SPECS).index(name)
    torch.manual_seed(data.SEED + offset)
    rng = np.random.default_rng(data.SEED + 100 + offset)
    model = cls()
    params = sum(p.numel() for p in model.parameters())

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps_per_epoch = -(-len(digits.train_x) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * steps_per_epoch)
    labels = torch.from_numpy(digits.train_y)
    for epoch in range(epochs):
        model.train()
        x = torch.from_numpy(to_layout(data.augment(digits.train_x, rng), cls.layout))
        order = torch.from_numpy(rng.permutation(len(x)))
        total = 0.0
        for i in range(0, len(x), 64):
            idx = order[i : i + 64]
            loss = F.cross_entropy(model(x[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % max(1, epochs // 5) == 0 or epoch == epochs - 1:
            print(f"  {name} epoch {epoch + 1}/{epochs} loss {total / len(x):.4f}", flush=True)
    return model.eval(), params


def export(name: str, model: nn.Module, example: np.ndarray, out: Path) -> None:
    keep_bn = SPECS[name][2]
    path = out / f"{name}.onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(
            model,
            (torch.from_numpy(example[:2]),),
            str(path),
            dynamo=False,
            opset_version=data.OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            # PRESERVE with the module in eval() keeps BatchNormalization nodes
            # (inference form, one output) instead of folding them into Conv.
            training=torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL,
        )
    for w in caught:
        print(f"  export warning ({name}): {w.category.__name__}: {str(w.message).splitlines()[0]}")

    import onnx

    graph = onnx.load(path).graph
    bns = [n for n in graph.node if n.op_type == "BatchNormalization"]
    if keep_bn:
        assert bns and all(len(n.output) == 1 for n in bns), f"{name}: BatchNormalization lost or in training form"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"models to build, of {', '.join(SPECS)} (default: all)")
    parser.add_argument("--out", type=Path, default=data.MODELS_DIR)
    args = parser.parse_args(argv)
    names = args.names or list(SPECS)
    unknown = sorted(set(names) - set(SPECS))
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}")

    torch.use_deterministic_algorithms(True)
    digits = data.load()
    args.out.mkdir(parents=True, exist_ok=True)
    reports = []
    for name in names:
        layout = SPECS[name][0].layout
        model, params = train(name, digits)
        eval_x = to_layout(digits.eval_x, layout)
        data.save_npz(name, to_layout(digits.calib_x, layout), eval_x, digits.eval_y, args.out)
        export(name, model, eval_x, args.out)

        report = data.check(name, params, args.out)
        with torch.no_grad():
            ref = model(torch.from_numpy(eval_x)).argmax(1).numpy()
        torch_acc = float((ref == digits.eval_y).mean())
        print(f"  {name}: torch acc {torch_acc:.4f}, onnxruntime acc {report.accuracy:.4f}", flush=True)
        reports.append(report)
    data.print_table(reports)


if __name__ == "__main__":
    main()
