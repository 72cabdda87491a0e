"""How fast a result runs against its original, the way a user runs both.

One thread, batch 1 (the first sample of the data), onnxruntime's default
graph optimizations, each model in its default load form (the caller passes
it: a packed output's is what ``unpack``/``session`` give,
:func:`onnxshrink.packing.deployed_model`). The two models are timed in
interleaved rounds, alternating which goes first, so a change in the
machine's load hits both alike; each round's candidate median over its
reference median is one ratio, and the result is the median of those ratios
with their spread as the noise. A result is *slower* only when its ratio is
above 1 by more than that noise (:attr:`Latency.slower`).

Large models cost more to time: above ``INTERLEAVE_MAX_BYTES`` of weights
the two run one after the other (one session alive at a time), and slow
runs get fewer repetitions (``ROUND_BUDGET_S``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from onnxshrink import runtime
from onnxshrink.data import InputSpec, NpzData, iter_batches, model_inputs, synthetic_batches
from onnxshrink.errors import DataError

ROUNDS = 5
RUNS = 20
WARMUP = 3
# The smallest noise a ratio is given: on a quiet machine the rounds agree to a
# percent or two, and a 2 % difference is not one a user would act on.
NOISE_FLOOR = 0.03
# Above this many bytes of weights (both models together) the models are timed
# one after the other, so only one session holds a copy of the weights.
INTERLEAVE_MAX_BYTES = 256 << 20
# A round's runs of one model are cut to fit this many seconds (at least MIN_RUNS).
ROUND_BUDGET_S = 1.0
MIN_RUNS = 3
# ... and when even MIN_RUNS runs overrun it, there are at most this many rounds.
SLOW_ROUNDS = 3

# (session, feed, runs, warmup) -> median milliseconds of one run; tests inject their own.
Timer = Callable[[Any, dict, int, int], float]


@dataclasses.dataclass(frozen=True)
class Latency:
    """A candidate's latency against its reference.

    ``ratio`` is the median over rounds of candidate / reference time;
    ``noise`` the half-width of the per-round ratios' middle (interquartile)
    range, at least ``NOISE_FLOOR``; ``form`` says how the candidate was
    loaded. Times are medians in milliseconds on ``threads`` intra-op
    threads at batch ``batch``.
    """

    reference_ms: float
    candidate_ms: float
    ratio: float
    noise: float
    form: str = "as written"
    rounds: int = ROUNDS
    runs: int = RUNS
    threads: int = 1
    batch: int = 1

    @classmethod
    def from_rounds(cls, reference_ms: Sequence[float], candidate_ms: Sequence[float], form: str = "as written",
                    runs: int = RUNS) -> "Latency":
        """The ratio and noise of paired per-round medians (round i of each)."""
        ref = np.asarray(reference_ms, dtype=np.float64)
        cand = np.asarray(candidate_ms, dtype=np.float64)
        if ref.shape != cand.shape or ref.size == 0:
            raise ValueError("latency rounds must pair up, one reference time per candidate time")
        ratios = cand / np.maximum(ref, 1e-12)
        q25, q75 = np.percentile(ratios, [25, 75])
        return cls(reference_ms=float(np.median(ref)), candidate_ms=float(np.median(cand)),
                   ratio=float(np.median(ratios)), noise=max(NOISE_FLOOR, float(q75 - q25)), form=form,
                   rounds=int(ref.size), runs=runs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Latency":
        """The inverse of :meth:`to_dict` (a report's ``latency`` object)."""
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

    @property
    def slower(self) -> bool:
        """Slower than the reference by more than the noise."""
        return self.ratio > 1.0 + self.noise

    def within(self, bound: float) -> bool:
        """Whether the measured ratio meets a latency bound (``--max-latency-ratio``)."""
        return self.ratio <= bound

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("reference_ms", "candidate_ms"):
            d[key] = round(d[key], 5)
        d["ratio"], d["noise"] = round(self.ratio, 4), round(self.noise, 4)
        d["slower"] = self.slower
        return d

    def text(self, what: str = "the original") -> str:
        """``latency 0.82x the original (0.041 vs 0.050 ms, 1 thread, batch 1, default load form)``."""
        threads = f"{self.threads} thread" + ("s" if self.threads != 1 else "")
        return (f"latency {self.ratio:.2f}x {what} ({self.candidate_ms:.3f} vs {self.reference_ms:.3f} ms, "
                f"{threads}, batch {self.batch}, {self.form})")

    def slower_text(self, what: str = "the output") -> str | None:
        """One plain line when slower beyond the noise, else None."""
        if not self.slower:
            return None
        return (f"{what} runs slower than the original: {self.ratio:.2f}x its latency (noise +-{self.noise:.2f}; "
                f"{self.candidate_ms:.3f} vs {self.reference_ms:.3f} ms, 1 thread, batch 1, {self.form})")


def median_run_ms(session: Any, feed: dict[str, np.ndarray], runs: int, warmup: int) -> float:
    """Median wall time of one run, in milliseconds (the default :data:`Timer`)."""
    return runtime.median_latency_ms(session, feed, runs=runs, warmup=warmup)


def compare_latency(reference: onnx.ModelProto, candidate: onnx.ModelProto, feed: dict[str, np.ndarray], *,
                    form: str = "as written", rounds: int = ROUNDS, runs: int = RUNS,
                    timer: Timer | None = None) -> Latency:
    """Time ``candidate`` against ``reference`` on ``feed`` (1 thread, default
    optimizations), in ``rounds`` interleaved rounds of ``runs`` runs each;
    neither model is changed. Raises UnsupportedModelError when onnxruntime
    cannot load one and DataError when one cannot run ``feed``."""
    from onnxshrink.model import data_bytes

    timer = timer or median_run_ms
    times: dict[str, list[float]] = {"reference": [], "candidate": []}
    models = {"reference": reference, "candidate": candidate}
    if data_bytes(reference) + data_bytes(candidate) > INTERLEAVE_MAX_BYTES:
        for key, model in models.items():
            session = runtime.create_session(model, threads=1, name=key)
            runs = _affordable_runs(session, feed, runs)
            rounds = min(rounds, SLOW_ROUNDS) if runs == MIN_RUNS else rounds
            times[key] = [timer(session, feed, runs, 1) for _ in range(rounds)]
            del session
            runtime.release_memory()
    else:
        sessions = {key: runtime.create_session(model, threads=1, name=key) for key, model in models.items()}
        runs = min(_affordable_runs(s, feed, runs) for s in sessions.values())
        rounds = min(rounds, SLOW_ROUNDS) if runs == MIN_RUNS else rounds
        for r in range(rounds):
            for key in (("reference", "candidate") if r % 2 == 0 else ("candidate", "reference")):
                times[key].append(timer(sessions[key], feed, runs, WARMUP))
    paired = min(len(times["reference"]), len(times["candidate"]))  # one model alone may have been cut shorter
    return Latency.from_rounds(times["reference"][:paired], times["candidate"][:paired], form=form, runs=runs)


def model_ms(model: onnx.ModelProto, feed: dict[str, np.ndarray], *, rounds: int = ROUNDS, runs: int = RUNS,
             timer: Timer | None = None) -> float:
    """Median latency of one model alone (no reference to compare with), in milliseconds."""
    timer = timer or median_run_ms
    session = runtime.create_session(model, threads=1, name="candidate")
    runs = _affordable_runs(session, feed, runs)
    return float(np.median([timer(session, feed, runs, WARMUP) for _ in range(rounds)]))


def _affordable_runs(session: Any, feed: dict[str, np.ndarray], runs: int) -> int:
    """``runs``, cut so that one round of this model takes about ``ROUND_BUDGET_S``."""
    start = time.perf_counter()
    runtime.run(session, feed, what="latency run")
    once = time.perf_counter() - start
    return max(MIN_RUNS, min(runs, int(ROUND_BUDGET_S / max(once, 1e-9))))


def sample_feed(model: onnx.ModelProto, data: Any = None, shapes: dict | None = None) -> dict[str, np.ndarray]:
    """The input of a batch-1 timing run: the first sample of ``data`` when it
    can be read again (a path, NpzData, list or tuple of batches), else random
    inputs of the declared shapes (``shapes`` fills symbolic dims)."""
    feed, _ = _sample(model, data, shapes)
    return feed


def _sample(model: onnx.ModelProto, data: Any, shapes: dict | None) -> tuple[dict[str, np.ndarray], bool]:
    """(the feed, whether it is random)."""
    specs: list[InputSpec] = model_inputs(model)
    if isinstance(data, (str, os.PathLike)):
        data = NpzData(data)
    batch = None
    if isinstance(data, (NpzData, list, tuple)):
        batch = next(iter(iter_batches(data, specs, 1)), None)
    random = batch is None
    if random:
        batch = next(iter(synthetic_batches(specs, shapes, count=1)))
    # One sample of a scalar input comes out as a numpy scalar; onnxruntime takes 0-d arrays.
    return {k: np.asarray(v) for k, v in runtime.first_sample(batch, specs).items()}, random


def time_result(reference: onnx.ModelProto, candidate: onnx.ModelProto, data: Any = None, *,
                shapes: dict | None = None, form: str = "as written") -> Latency | None:
    """A pass's result timed against its input on the first sample of ``data``
    (random inputs of the declared shapes when it cannot be read again); None
    when the models cannot run random inputs (indices out of a table's range:
    give data to time them)."""
    feed, random = _sample(reference, data, shapes)
    try:
        return compare_latency(reference, candidate, feed, form=form)
    except DataError:
        if random:
            return None
        raise


def as_validation_ms(latency: Latency | None) -> dict[str, float | None]:
    """The medians as a ValidationReport's ``latency_ms`` holds them."""
    if latency is None:
        return {"reference": None, "candidate": None}
    return {"reference": latency.reference_ms, "candidate": latency.candidate_ms}
