"""`onnxshrink quantize MODEL -o OUT --calib DATA`: int8 QDQ quantization, validated."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from onnxshrink.cli._common import (
    JsonOption,
    QuietOption,
    StateOption,
    check_accuracy_flag,
    console,
    declare_files,
    err_console,
    human_bytes,
    parse_shapes,
    print_metrics,
    progress_bar,
    reports_errors,
    say_written,
    summary_table,
    write_json,
)
from onnxshrink.cpu_targets import TARGETS
from onnxshrink.errors import UsageError
from onnxshrink.fileio import outputs_together
from onnxshrink.model import load_model, save_model
from onnxshrink.lowbit import WeightOnlyOptions, quantize_weights
from onnxshrink.quantization import METHODS, QuantizeOptions, QuantizeReport, quantize_model
from onnxshrink.validation import parse_state

# Shared with `shrink --target`.
TARGET_HELP = (f"CPU the int8 model will run on: {', '.join(TARGETS)}. The default x86-avx2 runs exactly on every CPU "
               "(static and dynamic int8 weight codes within [-64, 64]: x86 without VNNI adds u8 x s8 products in "
               "saturating int16); x86-vnni (AVX512-VNNI/AVX-VNNI) or arm allow full-range [-127, 127] weights, "
               "which can lose accuracy on x86 CPUs without VNNI. Weight-only int8 is exact everywhere at full range.")
SCHEMA = "onnxshrink.quantize/1"
WEIGHTS_ONLY_SCHEMA = "onnxshrink.quantize-weights-only/1"


def _names(values: Optional[list[str]]) -> tuple[str, ...]:
    """Repeated options and comma-separated lists both work: --exclude-ops Add,Mul."""
    return tuple(v.strip() for item in values or [] for v in item.split(",") if v.strip())


@reports_errors
def quantize_command(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="The fp32 ONNX model.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the int8 model (atomically).")],
    calib: Annotated[Optional[Path], typer.Option("--calib", help="Calibration .npz (or folder): one array per model input.")] = None,
    method: Annotated[str, typer.Option("--method", help=f"Activation range from the statistics: {', '.join(METHODS)}.")] = QuantizeOptions.method,
    percentile: Annotated[float, typer.Option("--percentile", help="Percentile kept by --method percentile.")] = QuantizeOptions.percentile,
    per_channel: Annotated[bool, typer.Option("--per-channel/--per-tensor", help="Weight scales per output channel or one per tensor.")] = QuantizeOptions.per_channel,
    per_tensor_ops: Annotated[Optional[list[str]], typer.Option("--per-tensor-ops", help="Op types whose weights get one scale each even with --per-channel, e.g. Gemm,MatMul (onnxruntime's QGemm runs a row faster so).")] = None,
    activations: Annotated[str, typer.Option("--activations", help="Activation type: uint8 or int8.")] = QuantizeOptions.activations,
    exclude_nodes: Annotated[Optional[list[str]], typer.Option("--exclude-nodes", help="Node names to keep in float (repeat or comma-separate).")] = None,
    exclude_ops: Annotated[Optional[list[str]], typer.Option("--exclude-ops", help="Op types to keep in float, e.g. Add,Mul.")] = None,
    min_cosine: Annotated[Optional[float], typer.Option("--min-cosine", help="Target: output cosine >= X; keeps sensitive nodes in float until it holds (exit 1 if it cannot).")] = None,
    max_accuracy_drop: Annotated[Optional[float], typer.Option("--max-accuracy-drop", help="Target: accuracy drop <= X points on labelled --eval data.")] = None,
    min_agreement: Annotated[Optional[float], typer.Option("--min-agreement", help="Target without labels: every output keeps at least this fraction of the original's answers (top-1 classes, decoded sequences, decisions, nearest neighbours) on --eval (else --calib) data; keeps sensitive nodes in float until it holds.")] = None,
    eval_data: Annotated[Optional[Path], typer.Option("--eval", help="Evaluation .npz (with 'labels' for --max-accuracy-drop) for the target and the final metrics.")] = None,
    dynamic: Annotated[bool, typer.Option("--dynamic", help="Weight-only dynamic quantization of MatMul/Gemm (no --calib).")] = QuantizeOptions.dynamic,
    latency_guard: Annotated[bool, typer.Option("--latency-guard/--no-latency-guard", help="Keep in float nodes onnxruntime cannot run as integer kernels (static); time the result against the original (1 thread, batch 1; every mode).")] = QuantizeOptions.latency_guard,
    fold_constants: Annotated[bool, typer.Option("--fold-constants/--no-fold-constants", help="Run onnxsim first when a layer weight is computed at run time.")] = QuantizeOptions.fold_constants,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Calibration batch size.")] = QuantizeOptions.batch_size,
    weight_range_bits: Annotated[int, typer.Option("--weight-range-bits", help="Static int8: weight codes use this many bits of range (8 = all that --target allows; 6 packs smaller, same int8 kernels).")] = QuantizeOptions.weight_range_bits,
    bias_correction: Annotated[bool, typer.Option("--bias-correction/--no-bias-correction", help="Static int8: lower each Conv/Gemm bias by the mean output shift its weight rounding causes on the calibration data.")] = QuantizeOptions.bias_correction,
    target: Annotated[str, typer.Option("--target", help=TARGET_HELP)] = QuantizeOptions.target,
    weight_rounding: Annotated[str, typer.Option("--weight-rounding", help="Static int8: 'gptq' (each rounding error is spread over the layer's other inputs through the inverse Hessian of its --calib inputs; same scales and code bound), 'nearest', or 'auto' (default: gptq up to 64 MiB of weights, nearest above). --dynamic always rounds to nearest.")] = QuantizeOptions.weight_rounding,
    shapes: Annotated[Optional[list[str]], typer.Option("--shape", help="Symbolic dims of the random check inputs (--dynamic without --eval): NAME=1x3x224x224.")] = None,
    weights_only: Annotated[bool, typer.Option("--weights-only", help="Quantize only the weights (int8/int4 behind DequantizeLinear); activations stay float; --calib optional.")] = False,
    bits: Annotated[int, typer.Option("--bits", help="With --weights-only: 8 or 4 bits per weight (7, 6 or 5: fewer levels in int8 storage, 3 or 2 in int4 storage, smaller once packed).")] = WeightOnlyOptions.bits,
    granularity: Annotated[str, typer.Option("--granularity", help="With --weights-only: 'auto' (blocks of 32 for MatMul/Gemm/Gather below 8 bits, else per channel), 'channel' or 'block:N' scales.")] = WeightOnlyOptions.granularity,
    rounding: Annotated[str, typer.Option("--rounding", help="With --weights-only: 'nearest', or 'gptq' (error-compensated; needs --calib).")] = WeightOnlyOptions.rounding,
    min_size: Annotated[int, typer.Option("--min-size", help="With --weights-only: weights with fewer elements stay float.")] = WeightOnlyOptions.min_size,
    gate_floor: Annotated[bool, typer.Option("--gate-floor/--no-gate", help="Without a target, refuse (exit 1, nothing written) a result that changes more than 2% of the original's answers on --eval (else --calib) data; --no-gate writes it anyway.")] = QuantizeOptions.gate_floor,
    state: StateOption = None,
    json_path: JsonOption = None,
    quiet: QuietOption = False,
) -> None:
    """Quantize MODEL to int8 (QDQ): int8 per-channel weights, calibrated activations, integer kernels in onnxruntime."""
    declare_files({"MODEL": model, "--calib": calib, "--eval": eval_data}, {"-o": output, "--json": json_path})
    check_accuracy_flag(max_accuracy_drop, eval_data)
    states = parse_state(state)
    if weights_only:
        if dynamic:
            raise UsageError("--weights-only and --dynamic are two different modes; give one")
        wo = WeightOnlyOptions(bits=bits, granularity=granularity, rounding=rounding, min_size=min_size,
                               exclude=_names(exclude_nodes), batch_size=batch_size, gate_floor=gate_floor,
                               state=states)
        if rounding == "gptq" and calib is None:
            raise UsageError("--rounding gptq needs calibration data: give --calib DATA")
        source = load_model(model)
        with progress_bar(quiet) as progress:
            result = quantize_weights(source, wo, calib=str(calib) if calib else None,
                                      eval_data=str(eval_data) if eval_data else None, progress=progress, name=str(model),
                                      measure_latency=latency_guard)
        with outputs_together():
            save_model(result.model, output)
            if json_path:
                write_json(json_path, result.report.to_dict(), schema=WEIGHTS_ONLY_SCHEMA)
        if not quiet:
            print_weight_only_report(result.report.to_dict(), output)
            say_written(json_path)
        return
    options = QuantizeOptions(
        method=method, percentile=percentile, per_channel=per_channel, per_tensor_ops=_names(per_tensor_ops),
        activations=activations, exclude_nodes=_names(exclude_nodes), exclude_ops=_names(exclude_ops), min_cosine=min_cosine,
        min_agreement=min_agreement,
        max_accuracy_drop=max_accuracy_drop, dynamic=dynamic, latency_guard=latency_guard,
        fold_constants=fold_constants, batch_size=batch_size, weight_range_bits=weight_range_bits,
        bias_correction=bias_correction, target=target, gate_floor=gate_floor, state=states,
        weight_rounding=weight_rounding,
        shapes=tuple((name, tuple(dims)) for name, dims in parse_shapes(shapes).items()),
    )
    if dynamic and calib is not None:
        raise UsageError("--dynamic needs no --calib; drop one of them")
    if not dynamic and calib is None:
        raise UsageError("give --calib DATA (an .npz with one array per model input), or --dynamic")
    # Large external weights stay in their files, mapped: read once, shared by every pass and session.
    source = load_model(model, map_external_data=True)
    with progress_bar(quiet) as progress:
        result = quantize_model(source, str(calib) if calib else None, options,
                                eval_data=str(eval_data) if eval_data else None, progress=progress, name=str(model))
    with outputs_together():
        save_model(result.model, output)
        if json_path:
            write_json(json_path, result.report.to_dict(), schema=SCHEMA)
    if not quiet:
        print_report(result.report, output)
        say_written(json_path)


def output_line(name: str, m: dict) -> str:
    """One output's comparison: cosine, and its kind's agreement with the original's answers."""
    line = f"output {name} ({m['kind']}): cosine {m['cosine']:.6f}, max abs error {m['max_abs_error']:.3g}"
    if m.get("agreement") is not None:
        line += f", agreement {100 * m['agreement']:.2f}% ({m['agreement_of']})"
    return line


def check_line(v: dict) -> str:
    """What the result was checked on and against, and the verdict (none on random inputs)."""
    where = v.get("checked_on", "data") + (", closed loop" if v.get("closed_loop") else "")
    gate = ", ".join(f"{k} {x}" for k, x in (v.get("gate") or {}).items()) or "no gate"
    if v.get("passed") is None:
        return f"checked on {where} ({gate}): no verdict" + (" (random inputs check numerical fidelity only)"
                                                              if v.get("synthetic_inputs") else "")
    return f"checked on {where} ({gate}): {'passed' if v['passed'] else 'FAILED'}"


def _scale_and_zero_point(params: dict) -> str:
    """``0.0123/128``; dynamic quantization computes both at run time: ``dynamic``."""
    scale, zero_point = params.get("scale"), params.get("zero_point")
    if isinstance(scale, (int, float)):
        return f"{scale:.3g}/{zero_point}"
    return str(scale if scale == zero_point else f"{scale}/{zero_point}")


def print_report(report: QuantizeReport, output: Path) -> None:
    table = summary_table("node", "op", "runs as", "input scale / zp", "output scale / zp", "weight",
                          title="quantized nodes")
    for n in report.nodes:
        inputs = ", ".join(_scale_and_zero_point(p) for p in n["inputs"].values()) or "-"
        out = _scale_and_zero_point(n["output"]) if n.get("output") else "float"
        w = n.get("weight")
        weight = "-" if not w else (f"int8 per-channel ({w['channels']})" if w["axis"] is not None else "int8 per-tensor")
        if w and w.get("bias"):
            weight += " + int32 bias"
        op = n["op_type"] + (f" + {n['fused']}" if n.get("fused") else "")
        table.add_row(n["name"], op, n["kernel"], inputs, out, weight)
    console.print(table)
    if report.left_float:
        by_reason: dict[str, list[str]] = {}
        for name, why in report.left_float.items():
            by_reason.setdefault(why, []).append(name)
        left = summary_table("why it stays in float", "nodes", title="left in float (every node is in --json)")
        for why, names in by_reason.items():
            shown = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
            left.add_row(why, shown)
        console.print(left)
    sizes = report.size_bytes
    console.print(f"size: {human_bytes(sizes['original'])} -> {human_bytes(sizes['quantized'])} "
                  f"({100 * report.size_ratio:.1f}%)")
    v = report.validation or {}
    for name, m in (v.get("outputs") or {}).items():
        console.print(output_line(name, m), markup=False)
    print_metrics(report.to_dict(), v)
    console.print(check_line(v), markup=False)
    if report.calibration.get("samples"):
        c = report.calibration
        console.print(f"calibration: {c['samples']} samples, {c['tensors']} tensors, {c['method']}, {c['seconds']:.2f} s")
    for w in report.warnings:
        err_console.print(f"onnxshrink: warning: {w}", markup=False)
    console.print(f"wrote {output}")


def print_weight_only_report(report: dict, output: Path) -> None:
    """Per weight: bits, granularity, rounding and relative error; sizes and metrics."""
    table = summary_table("weight", "bits", "granularity", "rounding", "rel. error", title="weight-only quantization")
    for w in report.get("weights", []):
        err = w.get("relative_error")
        table.add_row(str(w.get("name")), str(w.get("bits") or "float"), str(w.get("granularity", "-")),
                      str(w.get("rounding", "-")), "-" if err is None else f"{100 * err:.2f}%")
    console.print(table)
    sizes = report.get("size_bytes") or {}
    if sizes:
        console.print(" -> ".join(f"{k} {human_bytes(v)}" for k, v in sizes.items()), markup=False)
    v = report.get("validation") or {}
    for name, m in (v.get("outputs") or {}).items():
        console.print(output_line(name, m), markup=False)
    print_metrics(report, v)
    if v:
        console.print(check_line(v), markup=False)
    for w in report.get("warnings", []):
        err_console.print(f"onnxshrink: warning: {w}", markup=False)
    console.print(f"wrote {output}")
