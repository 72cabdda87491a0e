"""The shrink search: which candidates to try, in what order, and which one wins.

With a budget (an accuracy or cosine gate) and no fixed sparsity, pruning is
given shares of the budget from the most aggressive down
(:data:`PRUNE_BUDGET_SHARES`); each candidate is pruned, quantized within
what is left, validated against the original in its default load form,
timed against it, and packed (:mod:`onnxshrink.search.stages`), and the
first that :func:`accepted` wins. When that first winner left much of the
budget unused, one bolder candidate (pruning gets all of it) may replace it.
With ``target_ratio`` the order is reversed: the most accurate candidate
that reaches the ratio wins.

Latency (:func:`latency_families`): unstructured and N:M sparsity leave
onnxruntime's CPU kernels as fast as they were, so when the recipe's
candidates pass the gate but run slower than asked (``max_latency_ratio``),
or slower than the original beyond the noise, the search goes on with
candidates that are faster by construction: channel pruning (fewer
multiply-adds in any form) and, where weight-only widths were asked for with
a latency bound, static int8 (integer kernels). Each family of candidates is
tried from its most aggressive share down and stops at its first that passes
the gate: a milder share of it would be no faster.

Real models: before pruning, static int8 of the unpruned model is checked at
the widest weight code range; when it misses the gate, the pruning
candidates are skipped (pruning only adds error) and the weight-only GPTQ
candidate runs before the unpruned static int8 one, whose accuracy-aware
search (nodes put back in float) gets the time left, or is skipped when the
winner is already smaller than static int8 of every node and no slower. Otherwise (:func:`search`'s tail), after the
recipe's candidates, a static
int8 recipe also tries weight-only GPTQ at 4 to 8 bits per layer, and plain
weight-only int8 always runs last: the floor the winner is compared with,
and the fallback when nothing else passed. Candidates that cannot help or do
not fit in ``ShrinkOptions.time_budget`` are skipped, each with its reason
(:mod:`onnxshrink.search.schedule`).
"""

from __future__ import annotations

import dataclasses
import time

from onnxshrink.errors import GateFailed
from onnxshrink.search.budget import budget, used
from onnxshrink.search.choice import (accepted, better, dominates, fast_enough, faster_within_memory, lighter,
                                      not_clearly_faster, smallest_fast_enough)
from onnxshrink.search.options import ShrinkOptions
from onnxshrink.search.schedule import Schedule, Skipped
from onnxshrink.search.conv_int8 import footprint
from onnxshrink.search.floor import FLOOR_BITS, floor_note, floor_size_note, prefer_floor, wants_floor
from onnxshrink.search.quantizers import static_int8_probe
from onnxshrink.search.stages import (aware_search_cannot_fit, float_nodes_cannot_win, prune_stage, quantize_and_check,
                                       weights_digest)
from onnxshrink.search.trial import INT8, INT8_ONE_SCALE, STATIC_INT8, Candidate, SearchInputs, SearchState, Trial

# Fractions of the accuracy (or cosine) budget given to pruning, most aggressive first.
PRUNE_BUDGET_SHARES = (0.75, 0.5, 0.25, 0.0)
# When the first passing candidate used less than this fraction of the budget,
# one bolder candidate (pruning gets the whole budget) is tried as well.
SLACK_FRACTION = 0.6
# Budget shares of the latency candidates (channel pruning, static int8), most aggressive first.
LATENCY_BUDGET_SHARES = (1.0, 0.75, 0.5, 0.25)
# Pruning's sensitivity scan must end within this part of the time budget:
# quantization, validation and the weight-only floor need the rest.
PRUNE_TIME_SHARE = 0.5
# When static int8 missed the gate and the unpruned width mix passed, pruning's scan may run
# until what the mix took again (the mix on the pruned model) and this part of the budget (the
# floor, validation, timing) are left: on rapidocr_det and ddddocr the scan had fitted in a
# quiet run and not in a loaded one.
AFTER_MIX_RESERVE_SHARE = 0.15
# The widths of the weight-only GPTQ candidate tried after a static int8 recipe's: 7, 6 and 5 are
# int8 codes with fewer levels (packed smaller, same kernels as 8), so the mix need not jump from
# 4 to 8 bits.
MIXED_WIDTHS = (4, 5, 6, 7, 8)


@dataclasses.dataclass
class SearchResult:
    """The winning trial and every trial run, in order; ``searching`` is False
    when the recipe fixed what to do (one candidate, no budget shares).
    ``skipped`` are the candidates not run and why; ``floor`` is the plain
    weight-only int8 trial the winner was compared with (None when not run);
    ``notes`` say what the comparison found."""

    chosen: Trial
    trials: list[Trial]
    searching: bool
    skipped: list[Skipped] = dataclasses.field(default_factory=list)
    floor: Trial | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


def candidates(inputs: SearchInputs) -> tuple[list[Candidate], bool]:
    """The recipe's candidates to try, in order, and whether that is a search."""
    recipe, gate, options = inputs.options.recipe, inputs.gate, inputs.options
    searching = recipe.prune is not None and recipe.prune.get("sparsity") is None and gate.active
    shares: tuple[float | None, ...] = PRUNE_BUDGET_SHARES if searching else (None,)
    if options.target_ratio is not None:
        shares = tuple(reversed(shares))  # least aggressive first: the most accurate that reaches the ratio
    return [Candidate(share) for share in shares], searching


def latency_families(inputs: SearchInputs) -> list[list[Candidate]]:
    """Candidates faster by construction than the recipe's, in families tried
    one after the other: static int8 at the recipe's pattern (only with a
    latency bound and weight-only widths), then channel pruning quantized as
    the options say, then (bound and widths) channel pruning with static int8.
    None without a gate to share, or when the recipe quantizes nothing and
    prunes nothing."""
    recipe, options = inputs.options.recipe, inputs.options
    if not inputs.gate.active or (recipe.prune is None and recipe.quantize is None):
        return []
    int8_too = options.latency_bound is not None and options.mixed_precision and recipe.quantize is not None
    families: list[list[Candidate]] = []
    if int8_too:
        families.append([Candidate(s, None, INT8) for s in LATENCY_BUDGET_SHARES] if recipe.prune is not None
                        else [Candidate(0.0, None, INT8)])
    if recipe.prune is not None and recipe.prune.get("sparsity") is None:
        families.append([Candidate(s, "channel") for s in LATENCY_BUDGET_SHARES])
        if int8_too:
            families.append([Candidate(s, "channel", INT8) for s in LATENCY_BUDGET_SHARES])
    return families


def _wants_probe(inputs: SearchInputs, tried: list[Candidate]) -> bool:
    """Whether the search first checks static int8 on the unpruned model: when
    the recipe's candidates prune (within shares of a gate) before static int8."""
    options = inputs.options
    return (inputs.gate.active and options.recipe.quantize is not None and not options.mixed_precision
            and options.target_ratio is None and any(c.prune_budget_share for c in tried))


def run_trial(inputs: SearchInputs, state: SearchState, candidate: Candidate, index: int) -> Trial:
    """Prune as ``candidate`` says, then quantize within what is left of the
    budget, validate, time and pack; or, when the pruned weights and the
    quantization are those of the last trial, reuse its outcome. A
    weight-only candidate skips pruning and quantizes every weight at its
    width."""
    start = time.perf_counter()
    pruned = prune_stage(inputs, state, candidate)
    seconds = {"prune": time.perf_counter() - start}
    # What follows depends only on the pruned weights and how they are quantized: a
    # trial whose pruning lands where the previous one did (a bolder budget the search
    # could not use) gets that trial's outcome instead of quantizing the same model again.
    key = weights_digest(pruned.model)
    plain = candidate.recipe_quantization
    reused = plain and state.last is not None and state.last[0] == (key, candidate.quantize)
    widths = (key, candidate.quantize, candidate.weight_bits) if candidate.weight_bits is not None else None
    if reused:
        outcome = state.last[1]
    elif widths in state.mixes:  # pruning removed nothing: the widths' mix of the same weights, already made
        outcome, reused = state.mixes[widths], True
    else:
        outcome = quantize_and_check(inputs, state, pruned, budget(inputs.gate) - pruned.used, candidate)
        if plain:
            state.last = ((key, candidate.quantize), outcome)
        elif widths is not None:
            state.mixes[widths] = outcome
        seconds.update(outcome.seconds)
    trial = Trial(index, candidate, outcome, key, pruned.pattern, reused, seconds, pruned_sparsity=pruned.sparsity)
    if outcome.failed is None:
        options = inputs.options
        trial.ratio = inputs.original_bytes / max(outcome.size, 1)
        trial.accuracy_drop = used(outcome.validation, inputs.gate) if inputs.gate.active else 0.0
        trial.gate_passed = bool(outcome.validation.passed) and \
            (options.target_ratio is None or trial.ratio >= options.target_ratio)
        trial.passed = accepted(trial, options)
    return trial


class _Runner:
    """Runs, skips and numbers the search's trials, reporting each through the schedule."""

    def __init__(self, inputs: SearchInputs, planned: int):
        self.inputs, self.planned = inputs, planned
        self.state = SearchState()
        self.schedule = Schedule(inputs.options.time_budget, inputs.on_trial)
        if inputs.options.time_budget is not None:
            self.state.deadline = self.schedule.start + inputs.options.time_budget
            self.prune_by(PRUNE_TIME_SHARE * inputs.options.time_budget)
        self.number = 0

    def prune_by(self, seconds: float) -> None:
        """Pruning's sensitivity scan must end ``seconds`` after the search started."""
        self.schedule.prune_by = seconds
        self.state.prune_deadline = self.schedule.start + seconds

    def attempt(self, candidate: Candidate, index: int, later: list[Candidate], *, first: bool = False,
                always: bool = False, reason: str | None = None) -> Trial | None:
        """Run ``candidate`` unless it cannot help (``reason``, or the
        schedule's) or does not fit in the time budget (then None, and it is
        recorded as skipped). The first trial and those that must run
        (``always``) are never skipped."""
        self.number += 1
        schedule = self.schedule
        if reason is None and not first and not always:
            reason = schedule.cannot_help(candidate) or schedule.over_budget(candidate)
        if reason is not None:
            schedule.skip(candidate, reason, self.number, self.planned, later)
            return None
        schedule.starting(candidate, self.number, self.planned, later)
        trial = run_trial(self.inputs, self.state, candidate, index)
        schedule.finished(trial, self.number, self.planned, later)
        return trial


def search(inputs: SearchInputs) -> SearchResult:
    """Try the candidates in order and return the winner with every trial run.

    After the recipe's candidates (and the bolder one), a winner slower than
    asked gives way to the latency families (:func:`latency_families`);
    weight-only GPTQ with 4- to 8-bit layers, unpruned and after the winner's
    (else the recipe's boldest) pruning, may then replace the winner when it
    is clearly smaller (static int8 recipes, as time allows); a winner slower
    than the original then gives way to the smallest no-slower trial that
    passes the gate; with ``--weight-bits``, a Conv network's winner that
    loads above a third of the original's weight bytes meets its Conv layers
    in static int8, and a weight-only winner not clearly faster than the
    original meets static int8 with one scale per MatMul/Gemm weight
    (:func:`_one_scale_int8`); and plain
    weight-only int8 always runs last: the floor the winner is compared with,
    and the fallback. Candidates that cannot help or do not fit in the time
    budget are skipped (``SearchResult.skipped``, each with its reason).
    Raises GateFailed (exit 1) when no candidate is accepted."""
    gate, options, progress = inputs.gate, inputs.options, inputs.progress
    tried, searching = candidates(inputs)
    extra = wants_floor(inputs) and options.target_ratio is None
    mixed = Candidate(0.0, weight_bits=MIXED_WIDTHS) if extra else None
    floor_candidate = Candidate(0.0, weight_only_bits=FLOOR_BITS) if wants_floor(inputs) else None
    tail = [c for c in (mixed, floor_candidate) if c is not None]
    # The widths on a pruned model too (the winner's pruning, else the recipe's boldest): pruning
    # that costs no answers leaves the mix as much room as it had unpruned (rapidocr_cls 9.5x
    # against 7.2x unpruned), and channel pruning makes the float32-loaded Conv layers faster.
    pruned_mix = extra and searching and any(c.prune_budget_share for c in tried)
    runner = _Runner(inputs, len(tried) + len(tail))
    schedule = runner.schedule
    trials: list[Trial] = []
    chosen = None
    queue = list(tried)
    probe_failed = False
    if _wants_probe(inputs, tried):
        progress("static int8 of the unpruned model", 0, 1)
        probe_failed = not static_int8_probe(inputs, runner.state)
        if probe_failed:
            # Pruning only adds error: no pruned model passes where the unpruned one does not.
            reason = ("static int8 of the unpruned model misses the gate at the widest weight code range: "
                      "pruning cannot make it pass")
            for candidate in [c for c in queue if c.prune_budget_share]:
                queue.remove(candidate)
                runner.number += 1
                schedule.skip(candidate, reason, runner.number, runner.planned, queue + tail)
            if mixed is not None:
                # Weight-only keeps activations float, where static int8 failed: it gets the time
                # first, and the accuracy-aware static int8 (float nodes put back) what is left.
                tail.remove(mixed)
                trial = runner.attempt(mixed, len(trials), queue + tail, first=True)
                mixed = None
                trials.append(trial)
                if trial.passed:
                    chosen = trial
                    seconds = options.time_budget
                    if seconds is not None:  # the scan may use what the mix on the pruned model leaves
                        runner.prune_by(max(schedule.prune_by, seconds - trial.total_seconds
                                            - AFTER_MIX_RESERVE_SHARE * seconds))
                    if pruned_mix:  # next, before static int8 with float nodes: the widths pass where it failed
                        runner.planned += 1
                        chosen = _weight_only(runner, [_pruned_mixed(chosen, tried)], trials, chosen, queue + tail)
                        pruned_mix = False
    while queue:
        candidate = queue.pop(0)
        progress("search", len(trials), len(tried))
        futile = (float_nodes_cannot_win(inputs, runner.state, chosen, candidate)
                  or aware_search_cannot_fit(inputs, runner.state, candidate)) if probe_failed else None
        trial = runner.attempt(candidate, len(trials), queue + tail, first=not trials, reason=futile)
        if trial is None:
            continue
        trials.append(trial)
        if trial.passed:
            if better(trial, chosen, gate):
                chosen = trial
            break
        if trial.gate_passed and options.target_ratio is None:
            break  # too slow: a milder share of the same sparsity runs no faster
    runner.planned -= len(queue)  # not needed: an earlier candidate passed
    if (chosen is not None and options.target_ratio is None and chosen.candidate == tried[0]
            and used(chosen.outcome.validation, gate) < SLACK_FRACTION * budget(gate)):
        # The first candidate left much of the budget unused: try pruning with all of it.
        runner.planned += 1
        trial = runner.attempt(Candidate(1.0), len(trials), tail)
        if trial is not None and trial.failed is None:
            trials.append(trial)
            if better(trial, chosen, gate):
                chosen = trial
    if chosen is None or not fast_enough(chosen, options):
        # A trial already run may be fast enough (the bolder one was chosen but is slower): the
        # smallest of those; else the latency families.
        faster = smallest_fast_enough(trials, options) or _faster(inputs, runner, trials, tail)
        if faster is None and chosen is not None:
            # None is fast enough: a trial both smaller and faster than the winner still beats it.
            faster = min((t for t in trials if t.gate_passed and dominates(t, chosen)),
                         key=lambda t: t.outcome.size, default=None)
        if faster is not None:
            chosen = faster
        searching = searching or len(trials) > 1
    notes: list[str] = []
    weight_only = [mixed] if mixed is not None else []
    if pruned_mix:
        runner.planned += 1
        weight_only.append(_pruned_mixed(chosen, tried))
    chosen = _weight_only(runner, weight_only, trials, chosen, [floor_candidate] if floor_candidate else [])
    if chosen is not None and not fast_enough(chosen, options):
        # A smaller winner that runs slower than the original gives way to the smallest trial that
        # passes the gate and is no slower (issue 17: a slower result is not chosen over a no-slower one).
        faster = smallest_fast_enough(trials, options)
        if faster is not None:
            notes.append(f"the search's best candidate ({chosen.ratio:.1f}x smaller) passed the gate but ran "
                         f"{chosen.outcome.latency.ratio:.2f}x the original's latency: the no-slower "
                         f"{faster.ratio:.1f}x one is kept")
            chosen = faster
    mine = footprint(chosen.outcome.model, inputs.original) \
        if chosen is not None and options.mixed_precision and inputs.calib else None
    if mine is not None and mine.heavy:
        # Its low-bit weights do not stay low-bit in memory, its Conv weights loading as float32 (no
        # low-bit Conv kernel): the same pruning with the Conv layers in static int8
        # (onnxshrink.search.conv_int8) replaces it when measured lighter and no slower.
        runner.planned += 1
        convs = Candidate(chosen.candidate.prune_budget_share, chosen.candidate.pattern, INT8,
                          weight_bits=options.weight_bits)
        trial = runner.attempt(convs, len(trials), tail)
        if trial is not None and trial.failed is None:
            trials.append(trial)
            theirs = footprint(trial.outcome.model, inputs.original)
            if lighter(trial, chosen, theirs.share, mine.share):
                notes.append(f"the Conv layers run in static int8 (integer kernels) rather than as float32 "
                             f"weights: {theirs.share:.2f}x of the original's weight bytes in "
                             f"memory against {mine.share:.2f}x")
                chosen = trial
    if chosen is not None and options.mixed_precision and inputs.calib and options.recipe.quantize is not None \
            and inputs.gate.active and chosen.candidate.quantize not in STATIC_INT8 and not_clearly_faster(chosen):
        # Weight-only layers pay for their low-bit kernels with an unfused activation node each
        # (MatMulNBits has none), which on a small model costs what the narrow weights save
        # (digits_mlp: 1.01-1.02x fp32). Static int8 fuses the activations into the integer
        # kernels' output ranges; with one scale per MatMul/Gemm weight QGemm runs a row at
        # 0.96x: it replaces the winner when measured faster within the memory share.
        chosen = _one_scale_int8(runner, chosen, trials, notes)
    floor = None
    if floor_candidate is not None:
        # Plain weight-only int8: the floor the chosen model is held to, and the fallback. It always
        # runs (seconds of quantization, one validation and one pack) so that no result hides it.
        floor = runner.attempt(floor_candidate, len(trials), [], always=True)
        if prefer_floor(chosen, floor, gate):
            if chosen is not None:
                notes.append(f"plain weight-only int8 passes the gate and is smaller ({floor.ratio:.1f}x against "
                             f"{chosen.ratio:.1f}x) than the recipe's best candidate: it is kept instead")
            else:
                notes.append("no candidate of the recipe passed the gate; plain weight-only int8 did and is kept")
            trials.append(floor)
            chosen = floor
        elif chosen is not None:
            note = floor_note(chosen, floor, gate) or floor_size_note(chosen, floor)
            if note:
                notes.append(note)
    progress("search", len(trials), len(trials))
    if chosen is None:
        last = trials[-1] if trials else floor
        why = _why(last, options)
        if floor is not None and last is not floor:  # the mildest candidate says most about the gate
            why += f"; plain weight-only int8: {_why(floor, options)}"
        raise GateFailed(f"no candidate passed the gate after {len(trials) + (floor is not None and floor not in trials)} "
                         f"tries ({why}); nothing written")
    return SearchResult(chosen, trials, searching, schedule.skipped, floor, notes)


def _faster(inputs: SearchInputs, runner: "_Runner", trials: list[Trial], tail: list[Candidate]) -> Trial | None:
    """The latency families (appending their trials to ``trials``): the first
    trial that passes the gate and is fast enough; None when none is. Runs
    only when some trial passed the gate but was too slow: when none passed
    it, quantization alone failed it, and so would these."""
    options = inputs.options
    if not any(t.gate_passed for t in trials):
        return None
    for family in latency_families(inputs):
        runner.planned += len(family)
        for k, candidate in enumerate(family):
            inputs.progress("search", len(trials), len(trials) + 1)
            trial = runner.attempt(candidate, len(trials), family[k + 1:] + tail)
            if trial is None:
                runner.planned -= 1
                continue
            trials.append(trial)
            if trial.gate_passed:
                runner.planned -= len(family) - k - 1
                if fast_enough(trial, options):
                    return trial
                break  # the family's most aggressive passing share is its fastest
    return None


def _one_scale_int8(runner: "_Runner", chosen: Trial, trials: list[Trial], notes: list[str]) -> Trial:
    """``chosen``, or static int8 with one scale per MatMul/Gemm weight after
    the same pruning when that passes the gate and is measured faster
    (:func:`onnxshrink.search.choice.faster_within_memory`); its trial is
    appended to ``trials``."""
    runner.planned += 1
    candidate = Candidate(chosen.candidate.prune_budget_share, chosen.candidate.pattern, INT8_ONE_SCALE)
    trial = runner.attempt(candidate, len(trials), [])
    if trial is None or trial.failed is not None:
        return chosen
    trials.append(trial)
    share = footprint(trial.outcome.model, runner.inputs.original).share
    if not faster_within_memory(trial, chosen, share):
        return chosen
    notes.append(f"the weight-only winner ran {chosen.outcome.latency.ratio:.2f}x the original's latency; "
                 f"static int8 with one scale per MatMul/Gemm weight ran {trial.outcome.latency.ratio:.2f}x "
                 f"({share:.2f}x of the original's weight bytes in memory, {trial.ratio:.1f}x smaller "
                 f"against {chosen.ratio:.1f}x): it is kept")
    return trial


def _weight_only(runner: "_Runner", candidates: list[Candidate], trials: list[Trial], chosen: Trial | None,
                 later: list[Candidate]) -> Trial | None:
    """Run the weight-only ``candidates`` as time allows (appending their
    trials to ``trials``) and return the winner: ``chosen`` or a better one."""
    for k, candidate in enumerate(candidates):
        trial = runner.attempt(candidate, len(trials), candidates[k + 1:] + later)
        if trial is not None and trial.failed is None:
            trials.append(trial)
            if better(trial, chosen, runner.inputs.gate):
                chosen = trial
    return chosen


def _pruned_mixed(chosen: Trial | None, tried: list[Candidate]) -> Candidate:
    """The weight-only widths after the pruning of ``chosen`` when it pruned,
    else after the recipe's boldest pruning (the first of ``tried``)."""
    if chosen is not None and chosen.candidate.prune_budget_share:
        return Candidate(chosen.candidate.prune_budget_share, chosen.candidate.pattern, weight_bits=MIXED_WIDTHS)
    first = next(c for c in tried if c.prune_budget_share)
    return Candidate(first.prune_budget_share, first.pattern, weight_bits=MIXED_WIDTHS)


def _why(last: Trial, options: ShrinkOptions) -> str:
    """Why the last trial was not accepted, in words."""
    if last.failed:
        return last.failed
    if last.outcome.validation.failures:
        return "; ".join(last.outcome.validation.failures)
    if options.target_ratio is not None and last.ratio < options.target_ratio:
        return f"reached {round(last.ratio, 3)}x < {options.target_ratio}x"
    latency = last.outcome.latency
    return f"latency {latency.ratio:.2f}x the original > {options.latency_bound}" if latency else "not accepted"
