"""The search's typed records: what a trial tries, what came of it, and what
one trial hands the next.

A :class:`Candidate` is what is tried; a :class:`Trial` is one run of it,
holding an :class:`Outcome` (the quantized, validated, packed model, or why
there is none). :class:`SearchInputs` is what every trial reads and
:class:`SearchState` what the trials share: statistics of the unpruned model
and the last outcome, reused when a trial prunes exactly as the one before.
A new objective is a field here (measured into :class:`Outcome`) and one
check in :func:`onnxshrink.search.choice.accepted`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any, Callable

import onnx

from onnxshrink.data import Batch
from onnxshrink.latency import Latency
from onnxshrink.quantization.quantizer import PreparedCache
from onnxshrink.search.options import ShrinkOptions
from onnxshrink.stats.layer_inputs import LayerInputStats
from onnxshrink.validation import Gate, ValidationReport

Progress = Callable[[str, int, int], None]


# Candidate.quantize values that make a trial static int8 QDQ whatever the options ask for:
# per output channel as the recipe says, or with one scale per MatMul/Gemm weight
# (onnxruntime's QGemm runs a row faster so: digits_mlp 0.96x fp32 against 1.12x, docs/speed.md).
INT8 = "int8"
INT8_ONE_SCALE = "int8-one-scale"
STATIC_INT8 = (INT8, INT8_ONE_SCALE)
ONE_SCALE_OPS = ("MatMul", "Gemm")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """What one trial tries.

    ``prune_budget_share`` is the fraction of the gate's budget pruning may
    use (None: prune as the recipe says, no search; 0: no pruning);
    ``pattern`` overrides the recipe's pruning pattern (None: the recipe's);
    ``quantize`` overrides how the options quantize (None: as they say;
    ``"int8"``: static int8 QDQ even when weight-only widths were asked for,
    a candidate of the latency search; with ``weight_bits`` too, only the Conv
    layers in static int8, the others weight-only at those widths;
    ``"int8-one-scale"``: static int8 with one scale per MatMul/Gemm weight).
    ``weight_only_bits`` (8) tries plain weight-only quantization at that
    width instead of the recipe's pruning and quantization: the floor the
    recipe's candidates are measured against, and the fallback.
    ``weight_bits`` tries weight-only GPTQ with a width per layer among
    those (as ``--weight-bits``) instead of the recipe's static int8.
    """

    prune_budget_share: float | None
    pattern: str | None = None
    quantize: str | None = None
    weight_only_bits: int | None = None
    weight_bits: tuple[int, ...] | None = None

    @property
    def recipe_quantization(self) -> bool:
        """Quantized as the recipe says (neither plain weight-only nor the width mix)."""
        return self.weight_only_bits is None and self.weight_bits is None


def describe(candidate: Candidate) -> str:
    """What a candidate tries, in words."""
    if candidate.weight_bits is not None and candidate.quantize is None and candidate.prune_budget_share:
        pattern = f"{candidate.pattern} " if candidate.pattern else ""
        return (f"{pattern}pruning within {100 * candidate.prune_budget_share:.0f}% of the gate's budget, then "
                f"weight-only GPTQ, each layer at {' or '.join(map(str, candidate.weight_bits))} bits")
    if candidate.pattern is not None or candidate.quantize is not None:
        share = candidate.prune_budget_share or 0.0
        pruning = (f"{candidate.pattern} pruning within {100 * share:.0f}% of the gate's budget" if share and candidate.pattern
                   else "no pruning" if not share else f"pruning within {100 * share:.0f}% of the gate's budget")
        if candidate.quantize == INT8 and candidate.weight_bits is not None:
            widths = " or ".join(map(str, candidate.weight_bits))
            return f"{pruning}, then the Conv layers in static int8 and the other weights at {widths} bits"
        how = {INT8: "static int8", INT8_ONE_SCALE: "static int8 with one scale per MatMul/Gemm weight"}
        return f"{pruning}, then {how.get(candidate.quantize, 'quantize')} (for latency)"
    if candidate.weight_only_bits is not None:
        return f"weight-only int{candidate.weight_only_bits}, no pruning"
    if candidate.weight_bits is not None:
        return f"weight-only GPTQ, each layer at {' or '.join(map(str, candidate.weight_bits))} bits, no pruning"
    share = candidate.prune_budget_share
    if share is None:
        return "as the recipe says"
    if share == 0:
        return "no pruning, then quantize"
    return f"pruning within {100 * share:.0f}% of the gate's budget, then quantize"


@dataclasses.dataclass
class Stage:
    """One stage's model as the trial left it, for the report's stage table."""

    name: str
    model: onnx.ModelProto
    note: str


@dataclasses.dataclass
class Outcome:
    """What became of a pruned model: quantized, validated against the
    original, packed; or ``failed`` saying why no model came out.

    ``weight_widths`` counts the weights at each width (weight-only
    quantization), ``weight_range_bits`` is the range static int8 codes use;
    ``float16`` names the tensors stored as float16 (set on the chosen one).
    ``seconds`` is the wall time of quantize, validate, time and pack;
    ``prune_steps`` what pruning's own search measured (the report's chart).
    ``latency`` is the model's in its default load form against the
    original's (None when not measured).
    """

    failed: str | None = None
    model: onnx.ModelProto | None = None
    packed: bytes | None = None
    size: int = 0
    validation: ValidationReport | None = None
    stages: list[Stage] = dataclasses.field(default_factory=list)
    layers: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    weight_widths: dict[int, int] = dataclasses.field(default_factory=dict)
    weight_range_bits: int | None = None
    float16: list[str] = dataclasses.field(default_factory=list)
    latency: Latency | None = None
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    prune_steps: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def output_bytes(self) -> bytes:
        """What would be written: the container, or the model's protobuf when not packed."""
        if self.model is None:
            raise ValueError(f"a failed outcome has no output ({self.failed})")
        return self.packed if self.packed is not None else self.model.SerializeToString()

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of :attr:`output_bytes` (computed when first asked for)."""
        return hashlib.sha256(self.output_bytes).hexdigest()


@dataclasses.dataclass
class Trial:
    """One candidate tried: its outcome and how it measured against the search's objectives.

    ``pruned_digest`` identifies the pruned weights (trials with the same
    share one outcome: ``reused``); ``pattern`` is the pruning pattern applied
    (None when nothing was pruned); ``seconds`` the wall time of what this
    trial itself ran (prune, and quantize/validate/pack unless reused).
    ``gate_passed`` is the quality gate and the size ratio; ``passed`` that
    and the latency objective (a bound, else not slower than the original
    beyond the noise, when the search asks for it) together.
    ``pruned_sparsity`` is the fraction of prunable weights pruning zeroed
    (None when the trial did not prune).
    """

    index: int
    candidate: Candidate
    outcome: Outcome
    pruned_digest: str
    pattern: str | None = None
    reused: bool = False
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    ratio: float = 0.0
    accuracy_drop: float = 0.0
    gate_passed: bool = False
    passed: bool = False
    pruned_sparsity: float | None = None

    @property
    def failed(self) -> str | None:
        return self.outcome.failed

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    @property
    def seconds_after_prune(self) -> float:
        """Wall time of quantize, validate and pack (what every trial runs anew)."""
        return sum(v for k, v in self.seconds.items() if k != "prune")

    def search_entry(self, chosen: "Trial | None") -> dict[str, Any]:

        """This trial as a row of the report's ``search`` list (docs/json.md):
        ``accuracy_drop`` is the share of the gate's budget used (accuracy
        points, or 1 - cosine under a cosine gate); the metrics themselves are
        ``accuracy_drop_points``, ``cosine`` (whole batch, lowest output) and
        ``min_sample_cosine``. A failed trial has no size and says why."""
        validation = self.outcome.validation
        outputs = validation.outputs.values() if validation is not None else []
        return {"trial": self.index, "prune_budget_share": self.candidate.prune_budget_share,
                "pattern": self.pattern, "quantize": self.candidate.quantize or "as asked",
                "size_bytes": self.outcome.size if self.failed is None else None,
                "ratio": round(self.ratio, 3), "accuracy_drop": round(self.accuracy_drop, 4),
                "accuracy_drop_points": (None if validation is None or validation.accuracy_drop_points is None
                                         else round(validation.accuracy_drop_points, 4)),
                "cosine": min((m["cosine"] for m in outputs), default=None),
                "min_sample_cosine": min((m["min_sample_cosine"] for m in outputs), default=None),
                "latency_ratio": None if self.outcome.latency is None else round(self.outcome.latency.ratio, 3),
                "passed": self.passed, "chosen": chosen is not None and self.candidate == chosen.candidate,
                "reused": self.reused, "failed": self.failed, "mode": describe(self.candidate),
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


@dataclasses.dataclass(frozen=True)
class SearchInputs:
    """What every trial reads: the original model and its size in bytes (what
    ratios are of), the base (simplified) model trials start from, the options
    and gate, the data, progress."""

    original: onnx.ModelProto
    original_bytes: int
    base: onnx.ModelProto
    options: ShrinkOptions
    gate: Gate
    calib: list[Batch]
    check: Any  # what the gate is measured on: the eval data, else the calibration batches
    progress: Progress
    checked_on: str = "eval data"  # names ``check`` in the reports
    # Times a candidate (in the form it loads in) against the original; None: latency is not measured.
    measure: Callable[[onnx.ModelProto], Latency] | None = None
    on_trial: Callable[[Any], None] = lambda status: None  # receives a schedule.TrialProgress


@dataclasses.dataclass
class SearchState:
    """What one trial hands the next; all of it depends on the base model and
    the data, none of it on the budget.

    ``prune_stats`` are the layer input statistics of the base model for
    pruning, ``weight_stats`` its layer Hessians for weight-only (GPTQ)
    quantization (pruning's when it collected them: the same Hessians),
    ``weight_codes`` each weight's GPTQ codes per width (``quantize_weights(codes_cache=...)``);
    ``prune_scans`` carries pruning's sensitivity scans and
    measured allocations (``prune_model(scan_cache=...)``); ``last`` is the
    last trial's pruned-weights digest and outcome (only the last: models are
    large, and repeats come right after each other); ``mixes`` the outcome of
    each weight-width mix by the weights it quantized (a pruning that removed
    nothing gives the unpruned model's). ``deadline`` is when the
    time budget runs out (a ``time.perf_counter()`` value; None: no limit),
    ``prune_deadline`` when pruning's sensitivity scan must be done.
    ``reference`` keeps the original's outputs on the gate's data for the
    search's gate checks (made at the first, :func:`onnxshrink.search.stages.gate_passes`),
    ``check_seconds`` how long the last of those checks took (the candidate's run and the comparison);
    ``widest`` the base model and its static int8 at the widest weight code range
    (:func:`onnxshrink.search.stages.static_int8_probe`); ``quantize_cache`` the
    preparation and calibration statistics of the last model static int8 quantized
    (reused across its weight code ranges and the accuracy-aware search).
    """

    prune_stats: dict[str, LayerInputStats] | None = None
    weight_stats: dict[str, LayerInputStats] | None = None
    prune_scans: dict = dataclasses.field(default_factory=dict)
    weight_codes: dict = dataclasses.field(default_factory=dict)
    last: tuple[str, Outcome] | None = None
    mixes: dict = dataclasses.field(default_factory=dict)
    deadline: float | None = None
    prune_deadline: float | None = None
    reference: Any = None
    check_seconds: float | None = None
    widest: tuple[onnx.ModelProto, Any] | None = None
    quantize_cache: PreparedCache = dataclasses.field(default_factory=PreparedCache)
