"""`onnxshrink pack MODEL -o OUT.onnxz` and `onnxshrink unpack IN.onnxz -o OUT.onnx`."""

from __future__ import annotations

from collections import Counter
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from onnxshrink.cli._common import (
    JsonOption,
    OutputOption,
    QuietOption,
    console,
    declare_files,
    human_bytes,
    reports_errors,
    say_written,
    summary_table,
    write_json,
)
from onnxshrink.fileio import outputs_together
from onnxshrink.packing import PackOptions, PackReport, pack_file, unpack_file

_DEFAULTS = PackOptions()
SCHEMA = "onnxshrink.pack/1"
# How the unpack summary names each form (onnxshrink.packing.native.LayerForm.form).
_FORM_NAMES = {"matmulnbits": "on MatMulNBits", "gather_block_quantized": "on GatherBlockQuantized",
               "float": "as float32", "qdq": "integer + DequantizeLinear"}


class Materialize(str, Enum):
    """Choices of ``unpack --materialize`` (the API's MATERIALIZE_MODES; a test keeps them equal)."""

    auto = "auto"
    native = "native"
    float = "float"
    qdq = "qdq"


@reports_errors
def pack_command(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="The .onnx model to pack (only read).")],
    output: OutputOption,
    json_path: JsonOption = None,
    float16_small: Annotated[bool, typer.Option(
        "--float16-small", help="LOSSY: store float32 tensors of fewer than --float16-small-below elements "
        "(biases, norms, positional embeddings) as float16; restored as float32. The report lists them.")] = False,
    float16_small_below: Annotated[int, typer.Option(
        help="Element count below which --float16-small applies.")] = _DEFAULTS.float16_small_below,
    quiet: QuietOption = False,
) -> None:
    """Pack a model losslessly into a verified .onnxz container (Huffman / zero-run coded tensors)."""
    declare_files({"MODEL": model}, {"-o": output, "--json": json_path}, model_outputs=())
    options = PackOptions(float16_small=float16_small, float16_small_below=float16_small_below)
    with outputs_together():
        report = pack_file(model, output, options)
        if json_path:
            write_json(json_path, report.to_dict(), schema=SCHEMA)
    if not quiet:
        print_report(report, output)
        say_written(json_path)


@reports_errors
def unpack_command(
    packed: Annotated[Path, typer.Argument(metavar="PACKED", help="The .onnxz container to restore.")],
    output: OutputOption,
    materialize: Annotated[Materialize, typer.Option(
        help="The form quantized weights are written in. auto (default, the fastest measured): weight-only "
        "4/8-bit MatMul/Gemm/Gather layers on onnxruntime's low-bit kernels (com.microsoft.MatMulNBits, "
        "GatherBlockQuantized; weights stay low-bit), other weight-only weights (Conv, layers under 4096 "
        "weights) as float32, static int8 QDQ as packed for the integer kernels. native: every layer those "
        "kernels can run, the rest as packed (least memory). float: every quantized weight as float32, "
        "exactly what DequantizeLinear computes (fp32 memory). qdq: integer + DequantizeLinear exactly as "
        "packed (bit-exact; onnxruntime dequantizes on every run).")] = Materialize.auto,
    quiet: QuietOption = False,
) -> None:
    """Restore a packed .onnxz into a plain .onnx; every tensor is CRC-checked (bit-exact with --materialize qdq)."""
    declare_files({"PACKED": packed}, {"-o": output}, models=())
    forms: list = []
    model = unpack_file(packed, output, materialize=materialize.value, forms=forms)
    if not quiet:
        n = sum(1 for _ in model.graph.initializer)
        counts = Counter(f.form for f in forms)
        how = ", ".join(f"{counts[k]} {label}" for k, label in _FORM_NAMES.items() if counts[k])
        console.print(f"{output}: restored {n} initializers from {packed}" + (f"; quantized weights: {how}" if how else ""),
                      markup=False)


def print_report(report: PackReport, output: Path) -> None:
    """The per-tensor table and the totals."""
    table = summary_table("tensor", "dtype", "shape", "codec", "before", "after", "bits/elem", "entropy bound",
                          "after/bound", title=f"Packed tensors ({len(report.packed)})", title_justify="left")
    for t in report.packed:
        ratio = f"{t.bytes_after / t.entropy_bytes:.3f}" if t.entropy_bytes else "-"
        codec = f"{t.codec} ({t.stored_as})" if t.stored_as else t.codec
        table.add_row(t.name, t.dtype, "x".join(map(str, t.shape)) or "scalar", codec, human_bytes(t.bytes_before),
                      human_bytes(t.bytes_after), f"{t.bits_per_element:.2f}", human_bytes(t.entropy_bytes), ratio)
    entropy = report.entropy_bytes
    table.add_row("total", "", "", "", human_bytes(report.tensor_bytes_before), human_bytes(report.tensor_bytes_after),
                  "", human_bytes(entropy), f"{report.tensor_bytes_after / entropy:.3f}" if entropy else "-",
                  style="bold")
    console.print(table)
    if report.float16_tensors:
        console.print(f"stored as float16 (lossy, --float16-small): {', '.join(report.float16_tensors)}",
                      markup=False, soft_wrap=True)
    inline = len(report.tensors) - len(report.packed)
    console.print(
        f"{output}: {human_bytes(report.container_bytes)} from {human_bytes(report.model_bytes)} "
        f"({100 * report.container_bytes / max(report.model_bytes, 1):.1f}%); {inline} small tensors inline in the "
        f"graph, header {human_bytes(report.header_bytes)}",
        markup=False,
    )
