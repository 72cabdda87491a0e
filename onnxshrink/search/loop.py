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
"""

from __future__ import annotations

import dataclasses
import time

from onnxshrink.errors import GateFailed
from onnxshrink.search.budget import budget, used
from onnxshrink.search.options import ShrinkOptions
from onnxshrink.search.stages import prune_stage, quantize_and_check, weights_digest
from onnxshrink.search.trial import Candidate, SearchInputs, SearchState, Trial

# Fractions of the accuracy (or cosine) budget given to pruning, most aggressive first.
PRUNE_BUDGET_SHARES = (0.75, 0.5, 0.25, 0.0)
# When the first passing candidate used less than this fraction of the budget,
# one bolder candidate (pruning gets the whole budget) is tried as well.
SLACK_FRACTION = 0.6
# ... and it replaces that candidate only if it is this much smaller, when it is also less accurate.
BOLDER_MIN_GAIN = 0.95
# Budget shares of the latency candidates (channel pruning, static int8), most aggressive first.
LATENCY_BUDGET_SHARES = (1.0, 0.75, 0.5, 0.25)


@dataclasses.dataclass
class SearchResult:
    """The winning trial and every trial run, in order; ``searching`` is False
    when the recipe fixed what to do (one candidate, no budget shares)."""

    chosen: Trial
    trials: list[Trial]
    searching: bool


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
        families.append([Candidate(s, None, "int8") for s in LATENCY_BUDGET_SHARES] if recipe.prune is not None
                        else [Candidate(0.0, None, "int8")])
    if recipe.prune is not None and recipe.prune.get("sparsity") is None:
        families.append([Candidate(s, "channel") for s in LATENCY_BUDGET_SHARES])
        if int8_too:
            families.append([Candidate(s, "channel", "int8") for s in LATENCY_BUDGET_SHARES])
    return families


def fast_enough(trial: Trial, options: ShrinkOptions) -> bool:
    """The latency objective: within ``max_latency_ratio`` when one is asked
    for, else not slower than the original beyond the noise; true when not measured."""
    latency = trial.outcome.latency
    if latency is None:
        return True
    bound = options.latency_bound
    return latency.within(bound) if bound is not None else not latency.slower


def accepted(trial: Trial, options: ShrinkOptions) -> bool:
    """Whether a trial with a model meets every objective: the gate, the size
    ratio if one is asked for, and the latency bound if one is asked for
    (being no slower than the original is a preference, :func:`search`, not a condition)."""
    return trial.gate_passed and (options.latency_bound is None or fast_enough(trial, options))


def run_trial(inputs: SearchInputs, state: SearchState, candidate: Candidate, index: int) -> Trial:
    """Prune as ``candidate`` says, then quantize within what is left of the
    budget, validate, time and pack; or, when the pruned weights and the
    quantization are those of the last trial, reuse its outcome."""
    start = time.perf_counter()
    pruned = prune_stage(inputs, state, candidate)
    seconds = {"prune": time.perf_counter() - start}
    # What follows depends only on the pruned weights and how they are quantized: a
    # trial whose pruning lands where the previous one did (a bolder budget the search
    # could not use) gets that trial's outcome instead of quantizing the same model again.
    key = weights_digest(pruned.model)
    reused = state.last is not None and state.last[0] == (key, candidate.quantize)
    if reused:
        outcome = state.last[1]
    else:
        outcome = quantize_and_check(inputs, state, pruned, budget(inputs.gate) - pruned.used, candidate)
        state.last = ((key, candidate.quantize), outcome)
        seconds.update(outcome.seconds)
    trial = Trial(index, candidate, outcome, key, pruned.pattern, reused, seconds)
    if outcome.failed is None:
        options = inputs.options
        trial.ratio = inputs.original_bytes / max(outcome.size, 1)
        trial.accuracy_drop = used(outcome.validation, inputs.gate) if inputs.gate.active else 0.0
        trial.gate_passed = outcome.validation.passed and \
            (options.target_ratio is None or trial.ratio >= options.target_ratio)
        trial.passed = accepted(trial, options)
    return trial


def search(inputs: SearchInputs) -> SearchResult:
    """Try the candidates in order and return the winner with every trial run.
    Raises GateFailed (exit 1) when no candidate is accepted."""
    gate, options, progress = inputs.gate, inputs.options, inputs.progress
    state = SearchState()
    tried, searching = candidates(inputs)
    trials: list[Trial] = []
    chosen = None
    for i, candidate in enumerate(tried):
        progress("search", i, len(tried))
        trial = run_trial(inputs, state, candidate, i)
        trials.append(trial)
        if trial.passed:
            chosen = trial
            break
        if trial.gate_passed and options.target_ratio is None:
            break  # too slow: a milder share of the same sparsity runs no faster
    if (chosen is not None and options.target_ratio is None and chosen.candidate == tried[0]
            and used(chosen.outcome.validation, gate) < SLACK_FRACTION * budget(gate)):
        # The first candidate left much of the budget unused: try pruning with all of it.
        trial = run_trial(inputs, state, Candidate(1.0), len(trials))
        if trial.failed is None:
            trials.append(trial)
            # Accuracy is given up only for a real gain: the bolder candidate must be
            # clearly smaller, or no less accurate (resnet at 0.2 pt: 1.7 % smaller for one sample more lost).
            less_accurate = used(trial.outcome.validation, gate) > used(chosen.outcome.validation, gate)
            if trial.passed and trial.outcome.size < (BOLDER_MIN_GAIN if less_accurate else 1.0) * chosen.outcome.size:
                chosen = trial
    if chosen is None or not fast_enough(chosen, options):
        # A trial already run may be fast enough (the bolder one was chosen but is slower): the
        # smallest of those; else the latency families.
        ready = [t for t in trials if t.gate_passed and fast_enough(t, options)]
        faster = min(ready, key=lambda t: t.outcome.size) if ready else _faster(inputs, state, trials)
        if faster is None and chosen is not None:
            # None is fast enough: a trial both smaller and faster than the winner still beats it.
            faster = min((t for t in trials if t.gate_passed and _dominates(t, chosen)),
                         key=lambda t: t.outcome.size, default=None)
        if faster is not None:
            chosen = faster
        searching = searching or len(trials) > 1
    progress("search", len(trials), len(trials))
    if chosen is None:
        raise GateFailed(f"no candidate passed the gate after {len(trials)} tries ({_why(trials[-1], options)}); "
                         "nothing written")
    return SearchResult(chosen, trials, searching)


def _faster(inputs: SearchInputs, state: SearchState, trials: list[Trial]) -> Trial | None:
    """The latency families (appending their trials to ``trials``): the first
    trial that passes the gate and is fast enough; None when none is. Runs
    only when some trial passed the gate but was too slow: when none passed
    it, quantization alone failed it, and so would these."""
    options = inputs.options
    if not any(t.gate_passed for t in trials):
        return None
    for family in latency_families(inputs):
        for candidate in family:
            inputs.progress("search", len(trials), len(trials) + 1)
            trial = run_trial(inputs, state, candidate, len(trials))
            trials.append(trial)
            if trial.gate_passed:
                if fast_enough(trial, options):
                    return trial
                break  # the family's most aggressive passing share is its fastest
    return None


def _dominates(trial: Trial, other: Trial) -> bool:
    """Smaller and faster (both measured)."""
    a, b = trial.outcome.latency, other.outcome.latency
    return a is not None and b is not None and trial.outcome.size < other.outcome.size and a.ratio < b.ratio


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
