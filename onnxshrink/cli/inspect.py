"""`onnxshrink inspect MODEL`: what a model holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import onnxshrink
from onnxshrink.cli._common import (
    JsonOption,
    QuietOption,
    console,
    declare_files,
    human_bytes,
    reports_errors,
    say_written,
    summary_table,
    write_json,
)

SCHEMA = "onnxshrink.inspect/1"


@reports_errors
def inspect_command(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="An .onnx model (or a packed .onnxz).")],
    json_path: JsonOption = None,
    top: Annotated[int, typer.Option("--top", min=1, help="How many of the largest tensors to list.")] = 10,
    quiet: QuietOption = False,
) -> None:
    """Show opsets, inputs/outputs, parameters, bytes by op type and by tensor, dtypes and sparsity."""
    declare_files({"MODEL": model}, {"--json": json_path})
    info = onnxshrink.inspect(model)
    if json_path:
        write_json(json_path, info.to_dict(), schema=SCHEMA)
    if quiet:
        return
    opsets = ", ".join(f"{d} {v}" for d, v in info.opsets.items())
    console.print(f"[bold]{model}[/]  IR {info.ir_version}, opset {opsets}, producer {info.producer or '-'}")
    for kind, items in (("input", info.inputs), ("output", info.outputs)):
        for io in items:
            console.print(f"  {kind:6} {io['name']}: {io['dtype']} {io['shape']}")
    console.print(
        f"  {info.nodes} nodes, {info.subgraphs} subgraphs, {info.parameters:,} parameters, "
        f"{human_bytes(info.weight_bytes)} of weights; dtypes "
        + ", ".join(f"{k} {v:,}" for k, v in info.dtype_mix.items())
    )
    by_op = summary_table("op type", "weight bytes", title="Bytes by op type", title_justify="left")
    for op, n in info.bytes_by_op.items():
        by_op.add_row(op, human_bytes(n))
    console.print(by_op)
    tensors = summary_table("tensor", "dtype", "shape", "bytes", "sparsity", "used by",
                            title=f"Largest {top} tensors", title_justify="left")
    for t in info.tensors[:top]:
        tensors.add_row(t.name, t.dtype, "x".join(map(str, t.shape)) or "scalar", human_bytes(t.bytes),
                        f"{100 * t.sparsity:.1f}%", t.used_by)
    console.print(tensors)
    say_written(json_path)
