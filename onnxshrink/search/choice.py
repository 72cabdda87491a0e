"""Which of two trials wins: the acceptance of one (the gate, a size ratio,
a latency bound), and the comparisons :mod:`onnxshrink.search.loop` makes
between a new trial and the winner so far (smaller, lighter in memory, faster)."""

from __future__ import annotations

from onnxshrink.search.budget import used
from onnxshrink.search.floor import BOLDER_MIN_GAIN
from onnxshrink.search.options import ShrinkOptions
from onnxshrink.search.trial import Trial

# A --weight-bits winner whose weights load as float32 (Conv) gives way to its Conv layers in
# static int8 when that is at most this much larger on disk (1 / 0.85: 18 %): digits_resnet 24.6x
# against 26.0x for 0.26x of fp32's weight bytes in memory against 1.00x, 0.15x its latency against 1.0x.
CONV_INT8_MIN_GAIN = 0.85
# A --weight-bits winner not clearly faster than the original gives way to static int8 with one
# scale per MatMul/Gemm weight when that is at most this much larger on disk (1 / 0.8: 25 %):
# digits_mlp 1.01-1.02x fp32's latency -> 0.96x, its .onnxz 14.9 -> 18.1 kB (6-bit codes).
ONE_SCALE_MIN_GAIN = 0.8


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
    (being no slower than the original is a preference of
    :func:`onnxshrink.search.loop.search`, not a condition)."""
    return trial.gate_passed and (options.latency_bound is None or fast_enough(trial, options))


def smallest_fast_enough(trials: list[Trial], options: ShrinkOptions) -> Trial | None:
    """The smallest of ``trials`` that passes the gate and is fast enough (None when none is)."""
    return min((t for t in trials if t.gate_passed and fast_enough(t, options)), key=lambda t: t.outcome.size,
               default=None)


def better(new: Trial, old: Trial | None, gate) -> bool:
    """Whether a passing ``new`` should replace ``old``: accuracy is given up
    only for a real gain, so a less accurate ``new`` must be clearly smaller
    (resnet at 0.2 pt: 1.7 % smaller for one sample more lost), a no less
    accurate one only smaller."""
    if not new.passed:
        return False
    if old is None:
        return True
    less_accurate = used(new.outcome.validation, gate) > used(old.outcome.validation, gate)
    return new.outcome.size < (BOLDER_MIN_GAIN if less_accurate else 1.0) * old.outcome.size


def lighter(trial: Trial, other: Trial, share: float, other_share: float) -> bool:
    """Whether a passing ``trial`` should replace ``other`` for what it holds
    in memory (``share`` against ``other_share`` of the original's weight
    bytes): lighter in its load form, no slower than the original (or than
    ``other``) and at most a little larger on disk."""
    if not trial.passed or trial.outcome.size * CONV_INT8_MIN_GAIN > other.outcome.size:
        return False
    a, b = trial.outcome.latency, other.outcome.latency
    if a is not None and b is not None and a.slower and a.ratio > b.ratio:
        return False
    return share < other_share


def dominates(trial: Trial, other: Trial) -> bool:
    """Smaller and faster (both measured)."""
    a, b = trial.outcome.latency, other.outcome.latency
    return a is not None and b is not None and trial.outcome.size < other.outcome.size and a.ratio < b.ratio


def not_clearly_faster(trial: Trial) -> bool:
    """Whether ``trial`` was measured and may run no faster than the original
    (its ratio is within the noise of 1 or above)."""
    latency = trial.outcome.latency
    return latency is not None and latency.ratio + latency.noise > 1.0


def faster_within_memory(trial: Trial, other: Trial, share: float) -> bool:
    """Whether a passing ``trial`` should replace ``other`` for its speed: measured
    faster than ``other`` and than the original, within the default load form's
    memory share (``share`` of the original's weight bytes) and at most a
    quarter larger on disk."""
    from onnxshrink.packing.forms import AUTO_MEMORY_SHARE

    a, b = trial.outcome.latency, other.outcome.latency
    if not trial.passed or a is None or b is None or trial.outcome.size * ONE_SCALE_MIN_GAIN > other.outcome.size:
        return False
    return a.ratio < min(b.ratio, 1.0) and share <= AUTO_MEMORY_SHARE
