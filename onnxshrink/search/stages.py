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
from onnxshrink.errors import GateFailed
from onnxshrink.search.budget import budget, sub_gate, used
from onnxshrink.search.conv_int8 import static_int8_convs
from onnxshrink.search.trial import Candidate, Outcome, SearchInputs, SearchState, Stage
from onnxshrink.validation import Gate, compare_models

# Ranges tried for static int8 weight codes, narrowest first (4: codes in [-7, 7]); each
# also within the CPU target's bound, so the "8" step is [-64, 64] unless the recipe's
# quantize target is x86-vnni or arm (onnxshrink.cpu_targets).
WEIGHT_RANGE_BITS = (4, 6, 8)
# Channel pruning for latency keeps a multiple of this many channels per group:
# onnxruntime's blocked (NCHWc) Conv kernels work on 8 or 16 channels at a time,
# and digits_cnn pruned to 13/25/50 channels ran 1.04x its original where 16/24/40 ran 0.81x.
LATENCY_CHANNEL_MULTIPLE = 8
# The accuracy-aware static int8 search (float nodes put back one by one) may
# use at most this part of the time budget: the weight-only candidates follow.
AWARE_TIME_SHARE = 0.25
# The original's outputs on the gate's data, kept for the search's many gate
# checks, up to this many bytes (beyond, it is run again with each check).
KEPT_REFERENCE_BYTES = 256 << 20


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


def gate_passes(inputs: SearchInputs, state: SearchState, model: onnx.ModelProto) -> bool:
    """Whether ``model`` (as it loads) passes the gate against the original on
    the gate's data, as :func:`compare_models` judges it, with the original's
    outputs run once per search and kept (:class:`KeptReference`): the
    search's range, width and placement checks each cost one run of the
    candidate only, not two runs."""
    from onnxshrink.validation.reference import KeptReference

    if state.reference is None:
        state.reference = KeptReference(inputs.original, inputs.check, state=inputs.options.state,
                                        cache_bytes=KEPT_REFERENCE_BYTES)
    return not state.reference.measure(model).failures(inputs.gate)


def deployed(inputs: SearchInputs, model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` in the form the output loads in by default: a packed output's
    weight-only layers as ``unpack``/``session`` put them (MatMulNBits at
    accuracy level 4 quantizes activations too, so the gate is measured on
    that); an unpacked output as written."""
    from onnxshrink.packing.forms import changes, deployed_model

    if not inputs.options.recipe.pack or not changes(model, "auto"):
        return model
    return deployed_model(model)[0]


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


def mixed_precision(inputs: SearchInputs, state: SearchState, model: onnx.ModelProto, reshaped: bool = False,
                    weight_bits: tuple[int, ...] | None = None):
    """Weight-only quantization with GPTQ rounding: every weight at the narrowest
    width; while that fails the gate, the most sensitive (largest estimated
    output error) are promoted to the next width, as few as the gate allows
    (bisection on their number), the rest stay a width below. When even all at
    the widest fail, the most sensitive stay float instead, again as few as
    the gate allows, and then the least sensitive of the others go down to
    the narrowest width, as many as the gate allows. A bisection that runs
    past the time budget stops at the best mix it has. The layer Hessians
    come from the unpruned model and are reused by every trial, but for a model whose layers channel
    pruning ``reshaped`` (collected for it alone). Returns the WeightOnlyResult,
    or None when no mix passes the gate."""
    from onnxshrink.lowbit import WeightOnlyOptions, collect_weight_statistics, quantize_weights
    from onnxshrink.lowbit.weight_only import KEPT_FLOAT

    calib = inputs.calib
    widths = tuple(sorted(set(weight_bits or inputs.options.weight_bits)))
    # The search checks every mix against the gate itself: no floor inside.
    base_options = WeightOnlyOptions(bits=widths[0], rounding="gptq", gate_floor=False, state=inputs.options.state)
    if reshaped:  # channel-pruned: other shapes, other statistics
        stats = collect_weight_statistics(model, calib, base_options, progress=inputs.progress)
    else:
        if state.weight_stats is None:
            # Pruning's statistics of the same base model hold the same Hessians (stats/ collects both).
            state.weight_stats = state.prune_stats if state.prune_stats else \
                collect_weight_statistics(inputs.base, calib, base_options, progress=inputs.progress)
        stats = state.weight_stats

    def quantized(promoted: list[str], to: int, rest: int, kept_float: tuple[str, ...] = ()):
        layer_bits: dict[str, int | None] = {name: to for name in promoted}
        layer_bits.update({name: None for name in kept_float})
        opts = dataclasses.replace(base_options, bits=rest, layer_bits=layer_bits)
        return quantize_weights(model, opts, calib=calib, layer_stats=stats, measure_latency=False,
                                codes_cache=state.weight_codes)

    def fewest(count: int, make, best):
        """Bisection on how many of the ranked names get the better treatment:
        the smallest count whose model passes; ``best`` is ``make(count)``, which passes."""
        lo, hi = 0, count  # lo fails, hi passes
        while hi - lo > 1 and not out_of_time():
            mid = (lo + hi) // 2
            candidate = make(mid)
            if passes(candidate):
                hi, best = mid, candidate
            else:
                lo = mid
        return best

    def most(count: int, make, best):
        """How many of the ranked names (from the least sensitive) get the
        cheaper treatment: the largest count whose model passes, found by
        doubling from one (the gate often allows few: then a check or two)
        and then bisection; ``best`` is ``make(0)``, which passes."""
        lo, hi = 0, count + 1  # lo passes, hi fails
        step = 1
        while lo + step < hi and not out_of_time():
            candidate = make(lo + step)
            if not passes(candidate):
                hi = lo + step
                break
            lo, best, step = lo + step, candidate, 2 * step
        while hi - lo > 1 and not out_of_time():
            mid = (lo + hi) // 2
            candidate = make(mid)
            if passes(candidate):
                lo, best = mid, candidate
            else:
                hi = mid
        return best

    def out_of_time() -> bool:
        """Past the time budget: a bisection stops at the best mix it has (one that passes)."""
        return state.deadline is not None and time.perf_counter() > state.deadline

    def passes(result) -> bool:
        return gate_passes(inputs, state, deployed(inputs, result.model))

    first = quantized([], widths[0], widths[0])
    if passes(first):
        return first
    ranked = sorted((w for w in first.report.weights if w.bits), key=lambda w: -_error(w))
    names = [w.name for w in ranked]
    every = first  # all at the widest width, once the loop below has tried it
    for lower, upper in zip(widths, widths[1:]):
        every = quantized(names, upper, upper)
        if passes(every):
            return fewest(len(names), lambda k: quantized(names[:k], upper, lower), every)
    if not names:
        return None
    wide, narrow = widths[-1], widths[0]
    all_float = quantized([], wide, wide, tuple(names))
    if not passes(all_float):
        return None
    # Which stay float: the most output error at the widest width per byte a float layer
    # costs first, so that the gate is met by keeping small layers float where it can be.
    at_wide = {w.name: w for w in every.report.weights if w.bits}
    by_cost = sorted(names, key=lambda n: -_error(at_wide[n]) / max(at_wide[n].bytes_before, 1))
    kept = fewest(len(by_cost), lambda k: quantized(names, wide, wide, tuple(by_cost[:k])), all_float)
    floats = tuple(n for n, why in kept.report.skipped.items() if why == KEPT_FLOAT)
    rest = [n for n in names if n not in floats]
    if narrow == wide or not rest:
        return kept
    # The few most sensitive stay float; the least sensitive of the others may
    # still do at the narrowest width: as many as the gate allows (bisection).
    return most(len(rest), lambda j: quantized(rest[:len(rest) - j], wide, narrow, floats), kept)


def _error(record) -> float:
    """A weight's estimated layer output error (its relative weight error without a Hessian)."""
    return record.output_error if record.output_error is not None else record.relative_error


def static_int8(inputs: SearchInputs, state: SearchState, model: onnx.ModelProto, remaining: float):
    """Static int8 QDQ, held to the gate against the original. Unless the recipe
    fixes it, weight codes are tried in the widest range first: when that
    misses the gate a narrower one would too (it only adds weight error), so
    no time goes to them. When it passes, narrower ranges (fewer distinct
    levels pack smaller and still run in int8 kernels) are tried from the
    narrowest up and the first that passes wins, else the widest: each range
    costs one calibration, one build and one check. Only when plain int8
    misses the gate at the widest range are the most sensitive nodes kept in
    float (the accuracy-aware search, within ``remaining`` of the budget and
    until the time budget runs out). None when nothing passes."""
    from onnxshrink.quantization import QuantizeOptions, quantize_model

    settings, gate = inputs.options.recipe.quantize, inputs.gate
    ranges = (settings["weight_range_bits"],) if "weight_range_bits" in settings else WEIGHT_RANGE_BITS
    # The search checks the result against the gate itself: no floor inside.
    fixed = {"gate_floor": False, "state": inputs.options.state}
    if not gate.active:
        return quantize_model(model, inputs.calib, QuantizeOptions(**{**settings, "weight_range_bits": ranges[0]},
                                                                   **fixed),
                              eval_data=inputs.check, progress=inputs.progress, measure_latency=False)

    def at(bits: int):
        if bits == ranges[-1] and state.widest is not None and state.widest[0] is model:
            return state.widest[1]  # the probe's (static_int8_probe), on this very model
        # quantize_model's own check (against the pruned model, for its report) runs on one
        # calibration batch: the gate is measured by gate_passes, against the original, on the check data.
        return quantize_model(model, inputs.calib, QuantizeOptions(**{**settings, "weight_range_bits": bits}, **fixed),
                              eval_data=inputs.calib[:1], progress=inputs.progress, measure_latency=False,
                              cache=state.quantize_cache)

    widest = at(ranges[-1])
    if gate_passes(inputs, state, widest.model):
        for bits in ranges[:-1]:
            if state.deadline is not None and time.perf_counter() > state.deadline:
                break  # out of time: the widest range passed
            q = at(bits)
            if gate_passes(inputs, state, q.model):
                return q
        return widest
    del widest
    if state.deadline is not None and time.perf_counter() > state.deadline:
        return None
    options = QuantizeOptions(**{**settings, "weight_range_bits": ranges[-1]}, **sub_gate(gate, remaining))
    deadline = state.deadline
    if inputs.options.time_budget is not None:  # one node's build and check per layer: a bounded share of the time
        deadline = min(deadline, time.perf_counter() + AWARE_TIME_SHARE * inputs.options.time_budget)
    try:
        q = quantize_model(model, inputs.calib, options, eval_data=inputs.check, progress=inputs.progress,
                           deadline=deadline, cache=state.quantize_cache)
    except GateFailed:
        return None
    if gate_passes(inputs, state, q.model):
        return q
    return None


def static_int8_probe(inputs: SearchInputs, state: SearchState) -> bool:
    """Whether static int8 of the base (unpruned) model at the widest weight
    code range passes the gate: when it does not, no pruned model will with
    static int8 (pruning only adds error), and the search spends its time on
    the weight-only candidates instead. The result is kept for the unpruned
    candidate (:func:`static_int8` reuses it)."""
    from onnxshrink.quantization import QuantizeOptions, quantize_model

    settings = inputs.options.recipe.quantize
    bits = settings.get("weight_range_bits", WEIGHT_RANGE_BITS[-1])
    options = QuantizeOptions(**{**settings, "weight_range_bits": bits}, gate_floor=False, state=inputs.options.state)
    q = quantize_model(inputs.base, inputs.calib, options, eval_data=inputs.calib[:1], progress=inputs.progress,
                       measure_latency=False, cache=state.quantize_cache)
    state.widest = (inputs.base, q)
    return gate_passes(inputs, state, q.model)


def weight_only(inputs: SearchInputs, model: onnx.ModelProto, bits: int):
    """Plain weight-only quantization at ``bits`` (round to nearest, the
    default granularity): no calibration, seconds even on large models."""
    from onnxshrink.lowbit import WeightOnlyOptions, quantize_weights

    return quantize_weights(model, WeightOnlyOptions(bits=bits, gate_floor=False, state=inputs.options.state),
                            measure_latency=False)


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
            (candidate.quantize != "int8" or weight_bits is not None):
        allowed = weight_bits or options.weight_bits
        convs = ""
        if candidate.quantize == "int8":  # Conv layers in static int8 first (onnxshrink.search.conv_int8)
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
                            ", ".join(f"{n} at {b} bits" for b, n in widths.items())
                            + (f", {left_float} left float" if left_float else "")))
        for w in chosen.report.weights:
            entry = layers.setdefault(w.name, {"name": w.name, "sparsity": w.sparsity})
            entry.update({"quant_error": w.relative_error, "bits": w.bits})
    elif recipe.quantize is not None:
        q = static_int8(inputs, state, model, remaining)
        if q is None:
            # Pruning left too little of the budget: this candidate fails, a milder one follows.
            return Outcome(failed="static int8 missed the gate (at every weight code range, or when time ran out)",
                           seconds={"quantize": time.perf_counter() - start})
        errors = quantization_errors(model, q.model)
        model = q.model
        range_bits = q.report.weight_range_bits
        bound = q.report.weight_code_max
        stages.append(Stage("quantize", model,
                            f"int8, weight codes in [-{bound}, {bound}]; {count_layers(model).text()}"))
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
