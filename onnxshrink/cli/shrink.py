"""`onnxshrink shrink MODEL -o OUT.onnxz`: the whole pipeline, gated; and `onnxshrink recipes`."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Annotated, Optional

import onnx
import typer

import onnxshrink
from onnxshrink.cli.quantize import TARGET_HELP
from onnxshrink.cli._common import (
    JsonOption,
    OutputOption,
    QuietOption,
    StateOption,
    check_accuracy_flag,
    console,
    declare_files,
    err_console,
    human_bytes,
    print_metrics,
    progress_bar,
    reports_errors,
    say_written,
    summary_table,
    write_json,
)
from onnxshrink.cleanup import growth_warning
from onnxshrink.cpu_targets import check_target
from onnxshrink.data import model_inputs, synthetic_batches
from onnxshrink.errors import UsageError
from onnxshrink.fileio import outputs_together, write_bytes_atomic
from onnxshrink.model import save_model
from onnxshrink.pipeline import ShrinkOptions, shrink
from onnxshrink.search.options import DEFAULT_TIME_BUDGET, WEIGHT_WIDTHS
from onnxshrink.recipes import Recipe, builtin_recipes, load_recipe, recipe_for
from onnxshrink.report import render_html
from onnxshrink.validation import AGREEMENT_BASIS, Gate, accuracy_gate_basis, parse_state

SCHEMA = "onnxshrink.shrink/1"
# Above this many layers the summary lists none (they are all in --json and --report).
SUMMARY_LAYERS = 40


def with_overrides(recipe: Recipe, *, sparsity: float | None, pattern: str | None, prune_method: str | None,
                   quant_method: str | None, prune: bool | None, quantize: bool | None,
                   simplify: bool | None, target: str | None = None) -> Recipe:
    """The recipe with the command line's flags laid over it."""
    changes: dict = {}
    prune_cfg = dict(recipe.prune or {})
    for key, value in (("sparsity", sparsity), ("pattern", pattern), ("method", prune_method)):
        if value is not None:
            prune_cfg[key] = value
    if prune is False:
        changes["prune"] = None
    elif prune or recipe.prune is not None or prune_cfg:
        changes["prune"] = prune_cfg
    quant_cfg = dict(recipe.quantize or {})
    if quant_method is not None:
        quant_cfg["method"] = quant_method
    if target is not None:
        check_target(target)  # refused before any work, not when the search first quantizes
        quant_cfg["target"] = target
    if quantize is False:
        changes["quantize"] = None
    elif quantize or recipe.quantize is not None or quant_cfg:
        changes["quantize"] = quant_cfg
    if simplify is not None:
        changes["simplify"] = simplify
    return dataclasses.replace(recipe, **changes)


def _widths(text: str) -> tuple[int, ...]:
    try:
        return tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise UsageError(f"--weight-bits takes widths like 4,8, got '{text}'") from None


@reports_errors
def shrink_command(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="The .onnx model to shrink (only read).")],
    output: OutputOption,
    calib: Annotated[Optional[Path], typer.Option("--calib", help="Calibration data: .npz (or folder) of model inputs; needed by every recipe that prunes or quantizes.")] = None,
    eval_data: Annotated[Optional[Path], typer.Option("--eval", help="Eval data the gate is measured on (with 'labels' for an accuracy gate).")] = None,
    recipe: Annotated[str, typer.Option("--recipe", help="A built-in recipe name (see `onnxshrink recipes`), a .toml file, or 'auto'.")] = "auto",
    target_ratio: Annotated[Optional[float], typer.Option("--target-ratio", help="Require at least this size reduction (x).")] = None,
    max_accuracy_drop: Annotated[Optional[float], typer.Option("--max-accuracy-drop", help="Gate: at most this many accuracy points lost (needs --eval).")] = None,
    min_cosine: Annotated[Optional[float], typer.Option("--min-cosine", help="Gate: every output's cosine similarity at least this.")] = None,
    sparsity: Annotated[Optional[float], typer.Option("--sparsity", help="Prune to this sparsity instead of searching.")] = None,
    pattern: Annotated[Optional[str], typer.Option("--pattern", help="Pruning pattern: unstructured, 2:4 or channel.")] = None,
    prune_method: Annotated[Optional[str], typer.Option("--prune-method", help="magnitude, wanda or hessian.")] = None,
    quant_method: Annotated[Optional[str], typer.Option("--quant-method", help="minmax, percentile, entropy or mse.")] = None,
    prune: Annotated[Optional[bool], typer.Option("--prune/--no-prune", help="Run or skip the prune stage.")] = None,
    quantize: Annotated[Optional[bool], typer.Option("--quantize/--no-quantize", help="Run or skip the quantize stage.")] = None,
    simplify: Annotated[Optional[bool], typer.Option("--simplify/--no-simplify", help="Run or skip onnxsim constant folding.")] = None,
    target: Annotated[Optional[str], typer.Option("--target", help=TARGET_HELP + " Default: the recipe's, else x86-avx2.")] = None,
    weight_bits: Annotated[str, typer.Option("--weight-bits", help=f"Allowed weight widths among {','.join(map(str, WEIGHT_WIDTHS))}, e.g. 4,8 or 3,4,8: weight-only quantization with a per-layer width chosen under the gate, the most sensitive layers wider or float; Conv layers (no low-bit kernel in onnxruntime) go static int8 with narrow codes when that is lighter in memory and no slower (default 8: static int8).")] = "8",
    max_latency_ratio: Annotated[Optional[float], typer.Option("--max-latency-ratio", help="Require the output, in its default load form, to run within this many times the original's latency (1 thread, batch 1); also searches channel pruning, and static int8 beside --weight-bits widths.")] = None,
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="Time each candidate and the output against the original (1 thread, batch 1); --no-latency skips it (and the preference for a candidate no slower than the original).")] = True,
    time_budget: Annotated[float, typer.Option("--time-budget", help="Seconds the search may spend (0: no limit); candidates whose estimated cost does not fit are skipped, and the report says so.")] = DEFAULT_TIME_BUDGET,
    report_html: Annotated[Optional[Path], typer.Option("--report", help="Write a self-contained HTML report here.")] = None,
    state: StateOption = None,
    json_path: JsonOption = None,
    quiet: QuietOption = False,
) -> None:
    """Simplify, prune, quantize, validate against a gate and pack, in one step; nothing is written if the gate fails."""
    recipe_file = None if recipe == "auto" or recipe in builtin_recipes() else Path(recipe)
    declare_files({"MODEL": model, "--calib": calib, "--eval": eval_data, "--recipe": recipe_file},
                  {"-o": output, "--json": json_path, "--report": report_html})
    if max_accuracy_drop is not None and min_cosine is not None:
        raise UsageError("give one gate: --max-accuracy-drop or --min-cosine, not both")
    check_accuracy_flag(max_accuracy_drop, eval_data)
    source = onnxshrink.load(model)
    chosen = load_recipe(recipe_for(source) if recipe == "auto" else recipe)
    chosen = with_overrides(chosen, sparsity=sparsity, pattern=pattern, prune_method=prune_method,
                            quant_method=quant_method, prune=prune, quantize=quantize, simplify=simplify,
                            target=target)
    options = ShrinkOptions(recipe=chosen, gate=Gate(min_cosine=min_cosine, max_accuracy_drop=max_accuracy_drop),
                            target_ratio=target_ratio, weight_bits=_widths(weight_bits), state=parse_state(state),
                            max_latency_ratio=max_latency_ratio, measure_latency=latency,
                            time_budget=time_budget if time_budget != 0 else None)
    basis = None
    if max_accuracy_drop is None and options.effective_gate.max_accuracy_drop is not None:
        # The recipe's own accuracy gate: how it is measured on this data is decided in one place
        # (without labels: against the original model's own answers).
        basis = accuracy_gate_basis(eval_data if eval_data is not None else calib, explicit=False)
    calib_data = _calibration(source, chosen, calib, eval_data, quiet)
    with progress_bar(quiet, plain=True) as progress:
        result = shrink(source, calib_data, options, eval_data=eval_data, model_name=str(model), progress=progress,
                        on_trial=progress.trial)
    result.report["original_bytes"] = model.stat().st_size
    result.report["ratio"] = round(model.stat().st_size / max(result.report["output_bytes"], 1), 4)
    result.report["output"] = str(output)
    grew = growth_warning(result.report["original_bytes"], result.report["output_bytes"], "the output")
    result.report["warnings"] = result.report.get("warnings", []) + ([grew] if grew else [])
    with outputs_together():
        if result.packed is not None:
            write_bytes_atomic(output, result.packed)
        else:
            save_model(result.model, output)
        if json_path:
            write_json(json_path, result.report, schema=SCHEMA)
        if report_html:
            write_bytes_atomic(report_html, render_html({"schema": SCHEMA, **result.report}).encode("utf-8"))
    if not quiet:
        print_summary(result.report, chosen.name)
        console.print(f"{output}: {human_bytes(result.report['output_bytes'])}, {result.report['ratio']:.1f}x smaller",
                      markup=False)
        print_metrics(result.report, result.report.get("final"))
        final = result.validation
        if final is not None and basis == AGREEMENT_BASIS and not final.accuracy:
            changed = final.answers_changed or {}
            console.print(f"gate: max_accuracy_drop {options.effective_gate.max_accuracy_drop} measured as "
                          f"{AGREEMENT_BASIS} on the {final.checked_on}: {changed.get('points', 0.0):.2f}% of them "
                          f"changed (output '{changed.get('output')}')"
                          + ("; closed loop" if final.closed_loop else ""), markup=False)
        for note in result.report["notes"]:
            console.print(f"note: {note}", markup=False, soft_wrap=True)
        for skipped in result.report["skipped"]:
            console.print(f"skipped: {skipped['mode']}: {skipped['reason']}", markup=False, soft_wrap=True)
        say_written(json_path)
        say_written(report_html, "HTML report")
        for warning in result.report["warnings"]:
            err_console.print(f"onnxshrink: warning: {warning}", markup=False)
        if options.mixed_precision and result.packed is not None:
            # As packed, onnxruntime would dequantize weight-only codes on every run (several times fp32's latency).
            from onnxshrink.packing import deployed_model

            forms = Counter(f.form for f in deployed_model(result.model)[1])
            how = ", ".join(f"{n} {label}" for form, label in (("matmulnbits", "on MatMulNBits"),
                                                                ("gather_block_quantized", "on GatherBlockQuantized"),
                                                                ("float", "as float32"), ("qdq", "as packed"))
                            if (n := forms[form]))
            console.print(f"weights are stored as integer codes; onnxshrink.session(path) and onnxshrink unpack "
                          f"{output} -o MODEL.onnx run them {how} (onnxruntime's low-bit kernels keep them "
                          f"low-bit in memory); --materialize float gives all float32, --materialize qdq the model exactly as "
                          f"packed", markup=False, soft_wrap=True)


def print_summary(report: dict, recipe: str) -> None:
    """The stages, the search's trials and the per-layer choices, under the input model's names."""
    table = summary_table("stage", "ONNX size", "packed size", "note", title=f"shrink ({recipe})", title_justify="left")
    for stage in report["stages"]:
        table.add_row(stage["name"], human_bytes(stage["bytes"]), human_bytes(stage.get("packed_bytes")), stage["note"])
    console.print(table)
    if report.get("searched"):
        trials = summary_table("trial", "pruning share", "packed size", "accuracy drop (points)",
                               "output cosine (whole batch)", "gate", title="search: every trial", title_justify="left")
        for row in report["search"]:
            drop, cosine = row.get("accuracy_drop_points"), row.get("cosine")
            trials.add_row(str(row["trial"]), f"{100 * (row.get('prune_budget_share') or 0):.0f}%",
                           human_bytes(row.get("size_bytes")), "-" if drop is None else f"{drop:.2f}",
                           "-" if cosine is None else f"{cosine:.5f}",
                           ("passed" if row["passed"] else row.get("failed") or "failed")
                           + (", kept" if row["chosen"] else ""))
        console.print(trials)
    layers = report.get("layers") or []
    if layers and len(layers) <= SUMMARY_LAYERS:
        table = summary_table("layer", "op", "pruned", "stored as", "weight error", title="per layer",
                              title_justify="left")
        for layer in layers:
            error = layer.get("quant_error")
            table.add_row(layer["name"], layer["op"], f"{100 * layer['sparsity']:.1f}%",
                          ("kept in float" + ("" if layer["precision"] == "float" else f" ({layer['precision']})"))
                          if layer.get("kept_float") else layer["precision"],
                          "-" if error is None else f"{100 * error:.2f}%")
        console.print(table)
        for layer in layers:  # what onnxsim made a layer from, under the input model's names
            if layer.get("origin"):
                origin = layer["origin"].removeprefix(layer["name"]).lstrip(" ,")
                console.print(f"{layer['name']}: {origin}", markup=False)
    elif layers:
        console.print(f"{len(layers)} layers: each one's choices are in --json and --report", markup=False)


def _calibration(source: onnx.ModelProto, recipe: Recipe, calib: Path | None, eval_data: Path | None, quiet: bool):
    """The data shrink calibrates on: ``--calib``, which every recipe that
    prunes or quantizes needs; a recipe that does neither (lossless) only
    checks its gate, on ``--eval`` or else on random inputs of the declared shapes."""
    if calib is not None:
        return calib
    stages = [s for s, on in (("prunes", recipe.prune is not None and recipe.prune.get("method") != "magnitude"),
                              ("quantizes", recipe.quantize is not None)) if on]
    if stages:
        raise UsageError(f"recipe '{recipe.name}' {' and '.join(stages)}: give --calib DATA (an .npz of model inputs)")
    if eval_data is not None:
        return eval_data
    if not quiet:
        err_console.print("onnxshrink: warning: no --calib or --eval: the gate is checked on random inputs "
                          "of the declared shapes", markup=False)
    return list(synthetic_batches(model_inputs(source)))


@reports_errors
def recipes_command(quiet: QuietOption = False) -> None:
    """List the recipes that ship with onnxshrink."""
    if quiet:
        return
    table = summary_table("recipe", "stages", "gate", "description")
    for name, path in sorted(builtin_recipes().items()):
        r = load_recipe(name)
        stages = [s for s, on in (("simplify", r.simplify), ("prune", r.prune is not None),
                                  ("quantize", r.quantize is not None), ("pack", r.pack)) if on]
        table.add_row(name, " > ".join(stages), ", ".join(f"{k} = {v}" for k, v in r.gate.items()), r.description)
    console.print(table)
