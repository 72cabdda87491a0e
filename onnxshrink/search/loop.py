"""The shrink search: which candidates to try, in what order, and which one wins.

With a budget (an accuracy or cosine gate) and no fixed sparsity, pruning is
given shares of the budget from the most aggressive down
(:data:`PRUNE_BUDGET_SHARES`); each candidate is pruned, quantized within
what is left, validated against the original and packed
(:mod:`onnxshrink.search.stages`), and the first that :func:`accepted` wins.
When that first winner left much of the budget unused, one bolder candidate
(pruning gets all of it) may replace it. With ``target_ratio`` the order is
reversed: the most accurate candidate that reaches the ratio wins.
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


@dataclasses.dataclass
class SearchResult:
    """The winning trial and every trial run, in order; ``searching`` is False
    when the recipe fixed what to do (one candidate, no budget shares)."""

    chosen: Trial
    trials: list[Trial]
    searching: bool


def candidates(inputs: SearchInputs) -> tuple[list[Candidate], bool]:
    """The candidates to try, in order, and whether that is a search."""
    recipe, gate, options = inputs.options.recipe, inputs.gate, inputs.options
    searching = recipe.prune is not None and recipe.prune.get("sparsity") is None and gate.active
    shares: tuple[float | None, ...] = PRUNE_BUDGET_SHARES if searching else (None,)
    if options.target_ratio is not None:
        shares = tuple(reversed(shares))  # least aggressive first: the most accurate that reaches the ratio
    return [Candidate(share) for share in shares], searching


def accepted(trial: Trial, options: ShrinkOptions) -> bool:
    """Whether a trial with a model meets every objective: the gate, and the size ratio if one is asked for."""
    validation = trial.outcome.validation
    return validation is not None and validation.passed and \
        (options.target_ratio is None or trial.ratio >= options.target_ratio)


def run_trial(inputs: SearchInputs, state: SearchState, candidate: Candidate, index: int) -> Trial:
    """Prune as ``candidate`` says, then quantize within what is left of the
    budget, validate and pack; or, when the pruned weights are those of the
    last trial, reuse its outcome."""
    start = time.perf_counter()
    pruned = prune_stage(inputs, state, candidate)
    seconds = {"prune": time.perf_counter() - start}
    # What follows depends only on the pruned weights: a trial whose pruning
    # lands where the previous one did (a bolder budget the search could not
    # use) gets that trial's outcome instead of quantizing the same model again.
    key = weights_digest(pruned.model)
    reused = state.last is not None and state.last[0] == key
    if reused:
        outcome = state.last[1]
    else:
        outcome = quantize_and_check(inputs, state, pruned, budget(inputs.gate) - pruned.used)
        state.last = (key, outcome)
        seconds.update(outcome.seconds)
    trial = Trial(index, candidate, outcome, key, pruned.pattern, reused, seconds)
    if outcome.failed is None:
        trial.ratio = inputs.original_bytes / max(outcome.size, 1)
        trial.accuracy_drop = used(outcome.validation, inputs.gate) if inputs.gate.active else 0.0
        trial.passed = accepted(trial, inputs.options)
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
    progress("search", len(trials), len(trials))
    if chosen is None:
        last = trials[-1]
        why = last.failed or "; ".join(last.outcome.validation.failures) or \
            f"reached {round(last.ratio, 3)}x < {options.target_ratio}x"
        raise GateFailed(f"no candidate passed the gate after {len(trials)} tries ({why}); nothing written")
    return SearchResult(chosen, trials, searching)
