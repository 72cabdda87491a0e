"""Scheduling the search: what each trial is expected to cost, which candidates
are skipped and why, and what is reported while the search runs.

The first trial's cost is measured, not guessed: it includes the one-off work
(layer statistics, pruning's sensitivity scan) that later trials reuse, so a
later trial is estimated from the later trials already run, or else from the
first trial's quantize/validate/pack time plus a part of its pruning time.
Candidates are skipped, each with the reason, when they cannot help (a
smaller pruning budget after a larger one removed nothing) or when their
estimate does not fit in what is left of ``ShrinkOptions.time_budget``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

from onnxshrink.search.trial import Candidate, Trial, describe

# A later trial's pruning (sensitivity scan and statistics cached) is estimated
# at this fraction of the first trial's until one has been measured.
LATER_PRUNE_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class TrialProgress:
    """What the search reports when a trial starts, ends or is skipped.

    ``index`` is the trial's number (1-based) among ``planned`` (an upper
    bound: the search stops at the first candidate that passes);
    ``remaining`` the estimated seconds until the search ends at the latest
    (None until a trial has been measured); ``result`` what came of it, set
    when the trial has ended or was skipped.
    """

    index: int
    planned: int
    doing: str
    elapsed: float
    remaining: float | None
    result: str | None = None


OnTrial = Callable[[TrialProgress], None]


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A candidate the search did not run, and why."""

    candidate: Candidate
    reason: str

    def report_entry(self) -> dict[str, Any]:
        return {"prune_budget_share": self.candidate.prune_budget_share, "mode": describe(self.candidate),
                "reason": self.reason}


def minutes(seconds: float) -> str:
    """``75`` -> ``1m15s``; under a minute ``42s``."""
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Schedule:
    """The search's clock: estimates, skip decisions, and progress reports.

    ``budget`` is the time budget in seconds (None: unlimited); ``on_trial``
    receives a :class:`TrialProgress` as trials start, end or are skipped.
    """

    def __init__(self, budget: float | None, on_trial: OnTrial, clock: Callable[[], float] = time.perf_counter):
        self.budget = budget
        self.on_trial = on_trial
        self.clock = clock
        self.start = clock()
        self.runs: list[Trial] = []
        self.skipped: list[Skipped] = []
        # Seconds from the start by which pruning's sensitivity scan must end (None: no limit).
        self.prune_by: float | None = None

    @property
    def elapsed(self) -> float:
        return self.clock() - self.start

    def estimate(self, candidate: Candidate) -> float | None:
        """Seconds ``candidate`` is expected to take, from the trials run so far (None before the first)."""
        if not self.runs:
            return None
        if candidate.weight_bits is not None:  # statistics, GPTQ and a bisection of checks: as much as a first trial
            same = [t.total_seconds - t.seconds.get("prune", 0.0) for t in self.runs
                    if t.candidate.weight_bits == candidate.weight_bits and not t.reused]
            widths = same[-1] if same else self.runs[0].total_seconds
            return widths + (self._prune_seconds() if candidate.prune_budget_share else 0.0)
        after = [t.seconds_after_prune for t in self.runs if not t.reused and t.candidate.weight_bits is None]
        rest = sum(after) / len(after) if after else 0.0
        if candidate.weight_only_bits is not None or not candidate.prune_budget_share:
            return rest if candidate.weight_only_bits is None else 0.5 * rest
        pruned = [t for t in self.runs if t.candidate.prune_budget_share]
        if not pruned:  # the statistics and scan are still to be made: as much as a first trial
            return self.runs[0].total_seconds
        return self._prune_seconds() + rest

    def _prune_seconds(self) -> float:
        """Seconds a pruning is expected to take: the later prunings' mean once
        the scan is made, as much as a first trial before."""
        pruned = [t for t in self.runs if t.candidate.prune_budget_share]
        if not pruned:  # the scan stops at its deadline (then nothing is pruned)
            first = self.runs[0].total_seconds
            return first if self.prune_by is None else min(first, max(0.0, self.prune_by - self.elapsed))
        later = [t.seconds.get("prune", 0.0) for t in pruned[1:]]
        return sum(later) / len(later) if later else LATER_PRUNE_FRACTION * pruned[0].seconds.get("prune", 0.0)

    def remaining(self, left: list[Candidate]) -> float | None:
        """Estimated seconds for ``left`` (None before any trial was measured)."""
        estimates = [self.estimate(c) for c in left]
        return None if any(e is None for e in estimates) else float(sum(estimates))

    def time_left(self) -> float | None:
        return None if self.budget is None else self.budget - self.elapsed

    def over_budget(self, candidate: Candidate) -> str | None:
        """Why ``candidate`` does not fit in the time left, or None when it does (or nothing is known yet)."""
        left, estimate = self.time_left(), self.estimate(candidate)
        if left is None or estimate is None or estimate <= left:
            return None
        return (f"time budget: it would take about {minutes(estimate)}, {minutes(max(left, 0))} of "
                f"{minutes(self.budget)} left")

    def cannot_help(self, candidate: Candidate) -> str | None:
        """Why ``candidate`` cannot give another model than a trial already run, or None."""
        share = candidate.prune_budget_share
        if candidate.weight_only_bits is not None or not share:
            return None
        if self.prune_by is not None and self.elapsed >= self.prune_by and \
                not any(t.candidate.prune_budget_share for t in self.runs):
            return "pruning's part of the time budget is spent before its sensitivity scan: it would remove nothing"
        for t in self.runs:
            done = t.candidate.prune_budget_share
            same_kind = t.candidate.pattern == candidate.pattern and t.candidate.weight_only_bits is None
            if same_kind and done and done >= share and t.pruned_sparsity == 0.0:
                return (f"pruning removed 0% of the weights within {100 * done:.0f}% of the budget: "
                        f"a share no larger cannot remove more")
        return None

    def skip(self, candidate: Candidate, reason: str, index: int, planned: int, left: list[Candidate]) -> None:
        self.skipped.append(Skipped(candidate, reason))
        self.on_trial(TrialProgress(index, planned, describe(candidate), self.elapsed, self.remaining(left),
                                    f"skipped: {reason}"))

    def starting(self, candidate: Candidate, index: int, planned: int, left: list[Candidate]) -> None:
        self.on_trial(TrialProgress(index, planned, describe(candidate), self.elapsed, self.remaining(left)))

    def finished(self, trial: Trial, index: int, planned: int, left: list[Candidate]) -> None:
        self.runs.append(trial)
        if trial.failed is not None:
            result = f"no model: {trial.failed}"
        else:
            result = (f"{trial.ratio:.1f}x smaller, {'passed' if trial.passed else 'failed'} the gate"
                      + (" (an earlier trial's model)" if trial.reused else ""))
        self.on_trial(TrialProgress(index, planned, describe(trial.candidate), self.elapsed, self.remaining(left),
                                    f"{result} in {minutes(trial.total_seconds)}"))
