"""`onnxshrink pack MODEL -o OUT.onnxz` and `onnxshrink unpack IN.onnxz -o OUT.onnx`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from onnxshrink.cli._common import JsonOption, OutputOption, QuietOption, console, human_bytes, reports_errors, write_json
from onnxshrink.pack import PackReport, pack_file, unpack_file


@reports_errors
def pack_command(
    model: Annotated[Path, typer.Argument(help="The .onnx model to pack (only read).")],
    output: OutputOption,
    json_path: JsonOption = None,
    quiet: QuietOption = False,
) -> None:
    """Pack a model losslessly into a verified .onnxz container (Huffman / zero-run coded tensors)."""
    report = pack_file(model, output)
    if json_path:
        write_json(json_path, report.to_dict())
    if not quiet:
        print_report(report, output)


@reports_errors
def unpack_command(
    packed: Annotated[Path, typer.Argument(help="The .onnxz container to restore.")],
    output: OutputOption,
    quiet: QuietOption = False,
) -> None:
    """Restore a packed .onnxz into a plain .onnx, bit-exact; every tensor is CRC-checked."""
    model = unpack_file(packed, output)
    if not quiet:
        n = sum(1 for _ in model.graph.initializer)
        console.print(f"{output}: restored {n} initializers from {packed}", markup=False)


def print_report(report: PackReport, output: Path) -> None:
    """The per-tensor table and the totals."""
    table = Table("tensor", "dtype", "shape", "codec", "before", "after", "bits/elem", "entropy bound", "after/bound",
                  title=f"Packed tensors ({len(report.packed)})", title_justify="left")
    for t in report.packed:
        ratio = f"{t.bytes_after / t.entropy_bytes:.3f}" if t.entropy_bytes else "-"
        table.add_row(t.name, t.dtype, "x".join(map(str, t.shape)) or "scalar", t.codec, human_bytes(t.bytes_before),
                      human_bytes(t.bytes_after), f"{t.bits_per_element:.2f}", human_bytes(t.entropy_bytes), ratio)
    entropy = report.entropy_bytes
    table.add_row("total", "", "", "", human_bytes(report.tensor_bytes_before), human_bytes(report.tensor_bytes_after),
                  "", human_bytes(entropy), f"{report.tensor_bytes_after / entropy:.3f}" if entropy else "-",
                  style="bold")
    console.print(table)
    inline = len(report.tensors) - len(report.packed)
    console.print(
        f"{output}: {human_bytes(report.container_bytes)} from {human_bytes(report.model_bytes)} "
        f"({100 * report.container_bytes / max(report.model_bytes, 1):.1f}%); {inline} small tensors inline in the "
        f"graph, header {human_bytes(report.header_bytes)}",
        markup=False,
    )
