"""`onnxshrink validate REFERENCE CANDIDATE`: the same inputs through both, compared."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

import onnxshrink
from onnxshrink.cli._common import (
    JsonOption,
    QuietOption,
    StateOption,
    console,
    declare_files,
    err_console,
    human_bytes,
    parse_shapes,
    reports_errors,
    say_written,
    summary_table,
    write_json,
)
from onnxshrink.errors import UsageError
from onnxshrink.report.metrics import (
    SAMPLE_COSINE,
    WHOLE_COSINE,
    accuracy_label,
    latency_of,
    latency_text,
    latency_verdict,
)
from onnxshrink.validation import DEFAULT_FLOOR, Gate, accuracy_gate_basis, flip_text, parse_state

SCHEMA = "onnxshrink.validate/1"


@reports_errors
def validate_command(
    reference: Annotated[Path, typer.Argument(metavar="REFERENCE", help="The reference model (the original).")],
    candidate: Annotated[Optional[Path], typer.Argument(metavar="CANDIDATE", help="The model to check (omit with --reference-outputs to check REFERENCE itself).")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help=".npz (or folder of them) with one array per input, optional 'labels'.")] = None,
    reference_outputs: Annotated[Optional[Path], typer.Option("--reference-outputs", help=".npz of outputs saved from the source framework, keyed by output name.")] = None,
    min_cosine: Annotated[Optional[float], typer.Option("--min-cosine", help="Fail (exit 1) if any output's cosine similarity is below this.")] = None,
    max_accuracy_drop: Annotated[Optional[float], typer.Option("--max-accuracy-drop", help="Fail (exit 1) if accuracy drops by more than this many points.")] = None,
    min_agreement: Annotated[Optional[float], typer.Option("--min-agreement", help="Fail (exit 1) if any output keeps less than this fraction of the reference's answers (no labels needed).")] = None,
    shape: Annotated[Optional[list[str]], typer.Option("--shape", help="Symbolic dims for synthetic inputs: NAME=1x3x224x224.")] = None,
    no_gate: Annotated[bool, typer.Option("--no-gate", help="Without a threshold, measure only: no verdict (by default, with --data, every output must keep 98% of the reference's answers).")] = False,
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="Measure median single-thread latency.")] = True,
    state: StateOption = None,
    json_path: JsonOption = None,
    quiet: QuietOption = False,
) -> None:
    """Run both models with onnxruntime (CPU) on the same inputs and compare their outputs."""
    declare_files({"REFERENCE": reference, "CANDIDATE": candidate, "--data": data,
                   "--reference-outputs": reference_outputs}, {"--json": json_path},
                  models=("REFERENCE", "CANDIDATE"), model_outputs=())
    if candidate is None:
        if reference_outputs is None:
            raise UsageError("give a CANDIDATE model, or --reference-outputs to compare REFERENCE against saved outputs")
        reference, candidate = None, reference
    elif reference_outputs is not None:
        raise UsageError("with --reference-outputs give one model: the ONNX model to check against the saved outputs")
    gate = Gate(min_cosine=min_cosine, max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement)
    if gate.active and data is None:
        raise UsageError("a gate is measured on real inputs: give --data DATA (random inputs check numerical "
                         "fidelity only and give no verdict)")
    if max_accuracy_drop is not None:
        accuracy_gate_basis(data, explicit=True)
    if not gate.active and data is not None and not no_gate:
        gate = DEFAULT_FLOOR  # a verdict on real data by default: quantize's floor
    report = onnxshrink.validate(reference, candidate, data, reference_outputs=reference_outputs, gate=gate,
                                 shapes=parse_shapes(shape), measure_latency=latency, state=parse_state(state))
    if report.synthetic_inputs and not quiet:
        err_console.print("onnxshrink: warning: no --data: random inputs from the declared shapes check numerical "
                          "fidelity only, not task accuracy", markup=False)
    if json_path:
        write_json(json_path, report.to_dict(), schema=SCHEMA)
    if not quiet:
        table = summary_table("output", "kind", WHOLE_COSINE, SAMPLE_COSINE, "max abs err", "mean abs err", "SQNR dB",
                              "agreement")
        for name, m in report.outputs.items():
            table.add_row(name, m["kind"], f"{m['cosine']:.6f}", f"{m['min_sample_cosine']:.6f}",
                          f"{m['max_abs_error']:.3g}", f"{m['mean_abs_error']:.3g}",
                          "inf" if m["sqnr_db"] is None else f"{m['sqnr_db']:.1f}",
                          "-" if m["agreement"] is None else f"{100 * m['agreement']:.2f}% ({m['agreement_of']})")
        console.print(table)
        console.print(f"samples: {report.samples}" + (" (random inputs)" if report.synthetic_inputs else "")
                      + (f"; closed loop on state {', '.join(f'{o}->{i}' for o, i in report.state)}"
                         if report.closed_loop else ""), markup=False)
        if report.basis and not report.accuracy:
            console.print(f"accuracy gate measured as {report.basis}: at most {report.answers_changed['points']:.2f}% "
                          f"of the answers changed (output '{report.answers_changed['output']}')", markup=False)
        if report.accuracy:
            a = report.accuracy
            console.print(f"{accuracy_label(a)}: reference {100 * a['reference']:.2f}%, candidate {100 * a['candidate']:.2f}% "
                          f"(drop {report.accuracy_drop_points:.2f} points: {flip_text(a)})")
        lat = latency_of({"validation": report.to_dict()})
        if lat is not None:
            console.print(f"latency (1 thread, median of interleaved runs): {latency_text(lat, arrow='->')}",
                          markup=False, style="red" if latency_verdict(lat) == "slower" else None)
        sizes = report.size_bytes
        console.print(f"size: reference {human_bytes(sizes['reference'])}, candidate {human_bytes(sizes['candidate'])}")
        if report.passed is not None:
            console.print("[green]passed[/]" if report.passed else "[red]FAILED[/]: " + "; ".join(report.failures))
        else:
            console.print("no verdict" + (" (random inputs check numerical fidelity only)"
                                          if report.synthetic_inputs else " (no gate given)"), markup=False)
        say_written(json_path)
    report.raise_if_failed()
