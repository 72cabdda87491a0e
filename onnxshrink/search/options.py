"""What a shrink run is asked to do: a recipe plus the command line's overrides."""

from __future__ import annotations

import dataclasses

from onnxshrink.errors import UsageError
from onnxshrink.recipes import Recipe
from onnxshrink.validation import Gate

# Widths --weight-bits allows: below 8, weight-only quantization with a width per layer.
WEIGHT_WIDTHS = (2, 3, 4, 5, 6, 7, 8)
# Seconds the search may spend by default: with simplify, the last float16
# check and writing, a 100 MB model's shrink stays within 10 minutes on 2 cores.
DEFAULT_TIME_BUDGET = 420.0


@dataclasses.dataclass(frozen=True)
class ShrinkOptions:
    """What a shrink run does: a recipe plus the command line's overrides.

    ``gate`` overrides the recipe's gate when it has a threshold set.
    ``target_ratio`` asks for at least that size reduction (original .onnx
    bytes over output bytes); the search then prefers the most accurate
    candidate that reaches it. ``state`` names a stateful model's (output,
    input) pairs when their names do not say so: every check then runs in a
    closed loop (:mod:`onnxshrink.validation.stateful`). ``max_latency_ratio``
    bounds the output's latency in its default load form against the
    original's (1 thread, batch 1; overrides the recipe's); the search then
    also tries channel pruning and, with weight-only widths, static int8.
    ``measure_latency`` False skips every latency measurement (no latency in
    the report, and no candidate is passed over for being slower than the
    original). ``time_budget`` (seconds, None: no limit) is what the search
    may spend: a candidate whose estimated cost does not fit in what is left
    is skipped, with the reason in the report (the first trial always runs,
    and the weight-only int8 fallback when nothing passed). Skipping depends
    on measured times, so only a run the budget cut short can differ from
    one machine to another; the report lists what was skipped.
    """

    recipe: Recipe
    gate: Gate = Gate()
    target_ratio: float | None = None
    calib_samples: int = 256
    weight_bits: tuple[int, ...] = (8,)
    state: tuple[tuple[str, str], ...] = ()
    max_latency_ratio: float | None = None
    measure_latency: bool = True
    time_budget: float | None = DEFAULT_TIME_BUDGET

    def __post_init__(self) -> None:
        if self.target_ratio is not None and self.target_ratio <= 1.0:
            raise UsageError(f"--target-ratio must be above 1, got {self.target_ratio}")
        if not self.weight_bits or any(b not in WEIGHT_WIDTHS for b in self.weight_bits):
            raise UsageError(f"--weight-bits takes widths among {', '.join(map(str, WEIGHT_WIDTHS))} (e.g. 4,8), "
                             f"got {','.join(map(str, self.weight_bits))}")
        if self.max_latency_ratio is not None and not self.max_latency_ratio > 0:
            raise UsageError(f"--max-latency-ratio must be above 0, got {self.max_latency_ratio}")
        if self.latency_bound is not None and not self.measure_latency:
            raise UsageError("--max-latency-ratio needs latency measured: drop --no-latency")
        if self.time_budget is not None and not self.time_budget > 0:
            raise UsageError(f"--time-budget must be a positive number of seconds, got {self.time_budget}")

    @property
    def mixed_precision(self) -> bool:
        """Weight-only quantization with per-layer widths, instead of static int8 QDQ."""
        return min(self.weight_bits) < 8

    @property
    def latency_bound(self) -> float | None:
        """The output's largest allowed latency over the original's: the flag's, else the recipe's."""
        return self.max_latency_ratio if self.max_latency_ratio is not None else self.recipe.max_latency_ratio

    @property
    def effective_gate(self) -> Gate:
        if self.gate.active:
            return self.gate
        return Gate(**self.recipe.gate)
