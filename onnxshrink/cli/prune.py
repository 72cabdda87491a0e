"""`onnxshrink prune MODEL -o OUT --sparsity S`: zero weights or remove channels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

import onnxshrink
from onnxshrink.cli._common import (
    JsonOption,
    OutputOption,
    QuietOption,
    StateOption,
    check_accuracy_flag,
    console,
    declare_files,
    err_console,
    print_metrics,
    progress_bar,
    reports_errors,
    say_written,
    summary_table,
    write_json,
)
from onnxshrink.data import NpzData
from onnxshrink.fileio import outputs_together
from onnxshrink.pruning import PruneOptions, PruneReport, prune_model
from onnxshrink.validation import parse_state

_D = PruneOptions.__dataclass_fields__  # defaults live in PruneOptions only
SCHEMA = "onnxshrink.prune/1"


@reports_errors
def prune_command(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="The .onnx model to prune.")],
    output: OutputOption,
    sparsity: Annotated[Optional[float], typer.Option("--sparsity", "-s", help="Fraction of weights (or of prunable channels) to remove; with a target, the most the search may reach.")] = None,
    pattern: Annotated[str, typer.Option("--pattern", help="unstructured, 2:4 (N:M along input channels) or channel (remove channels from the graph).")] = _D["pattern"].default,
    method: Annotated[Optional[str], typer.Option("--method", help="magnitude, wanda or hessian (default: hessian with --calib, else magnitude).")] = None,
    scope: Annotated[str, typer.Option("--scope", help="global: rank weights across layers; layer: the same sparsity in every layer.")] = _D["scope"].default,
    calib: Annotated[Optional[Path], typer.Option("--calib", help=".npz of model inputs for activation statistics.")] = None,
    eval_data: Annotated[Optional[Path], typer.Option("--eval", help=".npz with inputs and 'labels' for --max-accuracy-drop and the report.")] = None,
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", help="Weight or node name (shell pattern) to leave alone; repeatable.")] = None,
    min_size: Annotated[int, typer.Option("--min-size", help="Leave weights with fewer elements alone.")] = _D["min_size"].default,
    max_accuracy_drop: Annotated[Optional[float], typer.Option("--max-accuracy-drop", help="Target: search the highest sparsity losing at most this many accuracy points on --eval.")] = None,
    min_cosine: Annotated[Optional[float], typer.Option("--min-cosine", help="Target: search the highest sparsity keeping every output's cosine >= this.")] = None,
    include_recurrent: Annotated[bool, typer.Option("--include-recurrent", help="Also prune LSTM/GRU/RNN weights.")] = _D["include_recurrent"].default,
    simplify: Annotated[bool, typer.Option("--simplify", help="Constant-fold with onnxsim first (weights built at run time become prunable).")] = _D["simplify"].default,
    damp: Annotated[float, typer.Option("--damp", help="Hessian damping, a fraction of its mean diagonal.")] = _D["damp"].default,
    block_size: Annotated[int, typer.Option("--block-size", help="Columns per block in Hessian pruning.")] = _D["block_size"].default,
    reconstruct: Annotated[bool, typer.Option("--reconstruct/--no-reconstruct", help="Channel pattern, hessian: refit consumer layers to the kept channels by least squares.")] = _D["reconstruct"].default,
    channel_multiple: Annotated[int, typer.Option("--channel-multiple", help="Channel pattern: keep a multiple of this many channels per group.")] = _D["channel_multiple"].default,
    calib_samples: Annotated[int, typer.Option("--calib-samples", help="Use at most this many calibration samples.")] = _D["calib_samples"].default,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per onnxruntime run while collecting statistics.")] = _D["batch_size"].default,
    state: StateOption = None,
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="Time the pruned model against the original (1 thread, batch 1).")] = True,
    json_path: JsonOption = None,
    quiet: QuietOption = False,
) -> None:
    """Prune weights: unstructured, 2:4, or whole channels removed from the graph (faster in onnxruntime)."""
    options = PruneOptions(
        sparsity=sparsity, pattern=pattern, method=method, scope=scope, exclude=tuple(exclude or ()),
        min_size=min_size, max_accuracy_drop=max_accuracy_drop, min_cosine=min_cosine,
        include_recurrent=include_recurrent, simplify=simplify, damp=damp, block_size=block_size,
        reconstruct=reconstruct, channel_multiple=channel_multiple, calib_samples=calib_samples, batch_size=batch_size,
        state=parse_state(state),
    )
    declare_files({"MODEL": model, "--calib": calib, "--eval": eval_data}, {"-o": output, "--json": json_path})
    check_accuracy_flag(max_accuracy_drop, eval_data)
    source = onnxshrink.load(model)
    with progress_bar(quiet) as progress:
        result = prune_model(source, options, calib=NpzData(calib) if calib else None,
                             eval_data=NpzData(eval_data) if eval_data else None, progress=progress,
                             measure_latency=latency)
    with outputs_together():
        onnxshrink.save(result.model, output)
        if json_path:
            write_json(json_path, result.report.to_dict(), schema=SCHEMA)
    if not quiet:
        print_report(result.report, output)
        say_written(json_path)


def print_report(report: PruneReport, output: Path) -> None:
    if report.pattern == "channel":
        table = summary_table("tensor", "op", "shape before", "shape after", "removed")
        for t in report.tensors:
            table.add_row(t.name, t.op_type, "x".join(map(str, t.shape_before)), "x".join(map(str, t.shape_after)),
                          f"{100 * t.zeros_after / max(t.params, 1):.1f}%")
    else:
        table = summary_table("tensor", "op", "shape", "params", "sparsity", "method", "output err")
        for t in report.tensors:
            table.add_row(t.name, t.op_type, "x".join(map(str, t.shape)), str(t.params), f"{100 * t.sparsity:.1f}%",
                          t.method, "-" if t.output_error is None else f"{t.output_error:.2e}")
    console.print(table)
    console.print(f"pattern {report.pattern}, method {report.method}, scope {report.scope}; "
                  f"weight sparsity {100 * report.weight_sparsity:.1f}%")
    if report.channel_groups:
        cut = [g for g in report.channel_groups if "kept_because" not in g]
        console.print(f"channels: removed {report.removed_channels} in {len(cut)} groups; "
                      f"{len(report.channel_groups) - len(cut)} groups kept whole")
    p0, p1 = report.params_before, report.params_after
    console.print(f"params: {p0:,} -> {p1:,} ({100 * (1 - p1 / max(p0, 1)):.1f}% fewer); non-zero "
                  f"{report.nonzero_before:,} -> {report.nonzero_after:,}")
    f0, f1 = report.flops_before, report.flops_after
    if f0:
        console.print(f"FLOPs (1 sample): {f0:,} -> {f1:,} ({100 * (1 - f1 / f0):.1f}% fewer)")
    if report.skipped:
        shown = [f"{name} ({why})" for name, why in list(report.skipped.items())[:4]]
        more = f" and {len(report.skipped) - 4} more" if len(report.skipped) > 4 else ""
        console.print(f"left alone: {', '.join(shown)}{more}")
    if report.search:
        console.print(f"search: {len(report.search)} allocations measured")
    lat = report.latency.to_dict() if report.latency is not None else None
    if report.validation is not None or lat is not None:
        validation = report.validation.to_dict() if report.validation is not None else None
        print_metrics({"latency": lat, "validation": validation}, validation)
    slower = report.latency.slower_text("the pruned model") if report.latency is not None else None
    for note in report.notes:
        if note == slower:
            err_console.print(f"onnxshrink: warning: {note}", markup=False)
        else:
            console.print(f"note: {note}")
    console.print(f"wrote {output}")
