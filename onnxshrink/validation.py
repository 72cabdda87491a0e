"""Comparing a candidate model against a reference, on the same inputs, in onnxruntime.

Metrics accumulate batch by batch (sums and maxima), so memory does not grow
with the number of samples. A :class:`Gate` turns the metrics into a verdict.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx

from onnxshrink import runtime
from onnxshrink.data import Batch, InputSpec, NpzData, iter_batches, model_inputs, synthetic_batches
from onnxshrink.errors import DataError, GateFailed, UsageError


@dataclasses.dataclass(frozen=True)
class Gate:
    """Quality thresholds; a None field is not checked.

    ``max_accuracy_drop`` is in accuracy points (percent): 1.0 allows the
    candidate to be one point below the reference.
    """

    min_cosine: float | None = None
    max_accuracy_drop: float | None = None

    def __post_init__(self) -> None:
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise UsageError(f"--min-cosine must lie in [-1, 1], got {self.min_cosine}")
        if self.max_accuracy_drop is not None and not 0.0 <= self.max_accuracy_drop <= 100.0:
            raise UsageError(f"--max-accuracy-drop is in points and must lie in [0, 100], got {self.max_accuracy_drop}")

    @property
    def active(self) -> bool:
        return self.min_cosine is not None or self.max_accuracy_drop is not None


def as_comparable(value: Any) -> np.ndarray:
    """An output as one array: tensors as they are, complex numbers as (real,
    imaginary) pairs, sequences (lists from onnxruntime) flattened end to end."""
    if isinstance(value, (list, tuple)):
        parts = [as_comparable(v).ravel() for v in value]
        kinds = {p.dtype.kind for p in parts}
        if len(kinds) > 1 and not kinds <= set("biuf"):
            parts = [p.astype(str) for p in parts]
        return np.concatenate(parts) if parts else np.zeros(0)
    if isinstance(value, dict):
        return as_comparable([np.asarray(value[k]) for k in sorted(value, key=str)])
    array = np.asarray(value)
    if array.dtype.kind == "c":
        array = np.stack([array.real, array.imag], axis=-1)
    return array


class _OutputStats:
    """Running sums for one output: enough for cosine, errors, SQNR and top-1."""

    def __init__(self) -> None:
        self.dot = self.ref_sq = self.cand_sq = self.err_sq = 0.0
        self.abs_sum = 0.0
        self.max_abs = 0.0
        self.count = 0
        self.min_sample_cosine = 1.0
        self.top1_same = 0
        self.top1_total = 0
        self.nonfinite = 0

    def add(self, ref: Any, cand: Any) -> None:
        ref, cand = as_comparable(ref), as_comparable(cand)
        if ref.shape != cand.shape:
            raise DataError(f"output shapes differ: reference {list(ref.shape)}, candidate {list(cand.shape)}")
        if ref.size == 0:
            return
        if ref.dtype.kind not in "biuf" or cand.dtype.kind not in "biuf":
            # Strings (and the like) either match or not: each element is 1 where
            # they do, so cosine and errors count the mismatches.
            ref, cand = np.ones(ref.shape), (ref == cand).astype(np.float64)
        r = ref.astype(np.float64).reshape(len(ref), -1) if ref.ndim else ref.astype(np.float64).reshape(1, 1)
        c = cand.astype(np.float64).reshape(r.shape)
        bad = ~np.isfinite(c)
        if bad.any():
            self.nonfinite += int(bad.sum())
            c = np.where(bad, 0.0, c)
        diff = r - c
        self.dot += float((r * c).sum())
        self.ref_sq += float((r * r).sum())
        self.cand_sq += float((c * c).sum())
        self.err_sq += float((diff * diff).sum())
        self.abs_sum += float(np.abs(diff).sum())
        self.max_abs = max(self.max_abs, float(np.abs(diff).max(initial=0.0)))
        self.count += diff.size
        norms = np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1)
        same = (norms == 0) & (np.abs(r).sum(axis=1) == np.abs(c).sum(axis=1))
        per_sample = np.where(norms > 0, (r * c).sum(axis=1) / np.where(norms > 0, norms, 1), np.where(same, 1.0, 0.0))
        self.min_sample_cosine = min(self.min_sample_cosine, float(per_sample.min(initial=1.0)))
        if r.ndim == 2 and r.shape[1] > 1:
            self.top1_same += int((r.argmax(1) == c.argmax(1)).sum())
            self.top1_total += len(r)

    def result(self) -> dict[str, Any]:
        denom = math.sqrt(self.ref_sq * self.cand_sq)
        if denom > 0:
            cosine = self.dot / denom
        else:
            cosine = 1.0 if self.ref_sq == self.cand_sq else 0.0
        if self.nonfinite:
            cosine = 0.0
        sqnr = math.inf if self.err_sq == 0 else (10 * math.log10(self.ref_sq / self.err_sq) if self.ref_sq > 0 else -math.inf)
        return {
            "cosine": round(min(max(cosine, -1.0), 1.0), 9),
            "min_sample_cosine": round(self.min_sample_cosine, 9),
            "max_abs_error": self.max_abs,
            "mean_abs_error": self.abs_sum / max(self.count, 1),
            "sqnr_db": None if math.isinf(sqnr) else round(sqnr, 4),
            "top1_agreement": (self.top1_same / self.top1_total) if self.top1_total else None,
            "nonfinite_values": self.nonfinite,
        }


@dataclasses.dataclass
class ValidationReport:
    """What ``compare_models`` measured, and whether the gate held."""

    passed: bool
    outputs: dict[str, dict[str, Any]]
    # reference/candidate: top-1 accuracy; labelled: samples with labels; lost/gained:
    # samples the candidate newly gets wrong/right (their difference is the drop).
    accuracy: dict[str, Any] | None
    latency_ms: dict[str, float | None]
    size_bytes: dict[str, int | None]
    samples: int
    synthetic_inputs: bool
    failures: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def accuracy_drop_points(self) -> float | None:
        if not self.accuracy or self.accuracy.get("reference") is None or self.accuracy.get("candidate") is None:
            return None
        return 100.0 * (self.accuracy["reference"] - self.accuracy["candidate"])

    def raise_if_failed(self) -> None:
        if not self.passed:
            raise GateFailed("quality gate failed: " + "; ".join(self.failures))


def accuracy_gate_basis(data: Any, *, explicit: bool, flag: str = "--max-accuracy-drop") -> str:
    """How an accuracy gate is measured on ``data``, decided before any work;
    the one place that decides it.

    ``"labels"``: top-1 accuracy against the data's ``labels`` (data whose
    labels are seen only as it is read, readers or batches, counts as
    labelled here; the measurement refuses it later if it is not).
    Unlabelled data: an ``explicit`` gate (a flag the user gave) is refused
    with a UsageError naming the file (exit 2, before any work);
    a gate that comes from a recipe gives ``"unlabelled"`` and is left to
    the measurement, which today refuses it (exit 2, once the search gets
    there): this is the hook where a recipe's gate on unlabelled data would
    instead be measured against the original model's own answers (``shrink``
    calls it for the recipe's gate with ``explicit=False``).
    """
    if isinstance(data, (str, os.PathLike)):
        data = NpzData(data)
    if not isinstance(data, NpzData) or data.has_labels:
        return "labels"
    if explicit:
        raise UsageError(f"{flag} needs labels in {data.path}: add an array 'labels' (one class per sample), "
                         "or gate on --min-cosine instead")
    return "unlabelled"


def _as_model(model: Any) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    from onnxshrink import load  # .onnx or packed .onnxz

    return load(model)


def _size(model: Any, proto: onnx.ModelProto) -> int:
    if isinstance(model, (str, os.PathLike)):
        return runtime.model_size_bytes(model)
    from onnxshrink.model import serialized_size

    return serialized_size(proto)


def compare_models(
    reference: Any,
    candidate: Any,
    data: Any = None,
    *,
    reference_outputs: str | os.PathLike | None = None,
    gate: Gate = Gate(),
    shapes: Mapping[str, Sequence[int]] | None = None,
    batch_size: int = 64,
    measure_latency: bool = True,
    synthetic_samples: int = 8,
) -> ValidationReport:
    """Run ``reference`` and ``candidate`` on the same inputs and compare outputs.

    ``data`` is an .npz path, folder, NpzData, ORT-style reader or iterable of
    batches; without it, random inputs are made from the declared shapes
    (``shapes`` fills symbolic dims). With ``reference_outputs`` (an .npz of
    outputs saved from the source framework, keyed by output name) the
    candidate is compared against those instead of running ``reference``.
    Neither model is modified.
    """
    ref_proto = _as_model(reference) if reference is not None else None
    cand_proto = _as_model(candidate)
    specs = model_inputs(cand_proto)
    synthetic = data is None
    if synthetic:
        if reference_outputs is not None:
            raise UsageError("--reference-outputs needs --data: the inputs the saved outputs were made from")
        batches: Iterable[Batch] = synthetic_batches(specs, shapes, count=synthetic_samples)
    else:
        batches = iter_batches(data, specs, batch_size)
    if ref_proto is not None and reference_outputs is None:
        _refuse_different_inputs(model_inputs(ref_proto), specs)
    ref_session = None
    if ref_proto is not None and reference_outputs is None:
        # Reference first: when onnxruntime cannot run the original, say so, not "candidate".
        ref_session = runtime.create_session(ref_proto, threads=os.cpu_count() or 1, name="reference")
    cand_session = runtime.create_session(cand_proto, threads=os.cpu_count() or 1, name="candidate")
    cand_names = [o.name for o in cand_session.get_outputs()]
    saved: NpzData | None = None
    saved_iter = None
    if reference_outputs is not None:
        saved = NpzData(reference_outputs)
        missing = [n for n in cand_names if n not in saved.arrays]
        if missing:
            raise DataError(f"{reference_outputs}: no saved output '{missing[0]}' (arrays: {', '.join(saved.arrays)})")
        saved_specs = [InputSpec(n, saved.arrays[n][1], (None,) + tuple(saved.arrays[n][0][1:])) for n in cand_names]
        saved_iter = saved.batches(saved_specs, batch_size)
    elif ref_session is not None:
        ref_names = [o.name for o in ref_session.get_outputs()]
        if ref_names != cand_names:
            raise DataError(f"the models' outputs differ: reference {ref_names}, candidate {cand_names}")
    stats = {n: _OutputStats() for n in cand_names}
    correct = {"reference": 0, "candidate": 0}
    flips = {"lost": 0, "gained": 0}  # samples the candidate newly gets wrong / newly gets right
    labelled = 0
    samples = 0
    first_feed = None
    for batch in batches:
        if first_feed is None:
            first_feed = runtime.first_sample(batch, specs)
        # Reference first: inputs the original cannot take are the inputs' fault, and say so.
        if saved_iter is not None:
            saved_batch = _take(saved_iter, len(batch), reference_outputs)
            ref_out = [saved_batch.inputs[n] for n in cand_names]
        elif ref_session is not None:
            ref_out = runtime.run(ref_session, batch.inputs, what="reference")
        cand_out = runtime.run(cand_session, batch.inputs, what="candidate")
        if saved_iter is None and ref_session is None:
            ref_out = cand_out
        for name, r, c in zip(cand_names, ref_out, cand_out):
            stats[name].add(r, c)
        if batch.labels is not None:
            labelled += len(batch.labels)
            ref_right = _correct(ref_out[0], batch.labels)
            cand_right = _correct(cand_out[0], batch.labels)
            correct["reference"] += int(ref_right.sum())
            correct["candidate"] += int(cand_right.sum())
            flips["lost"] += int((ref_right & ~cand_right).sum())
            flips["gained"] += int((cand_right & ~ref_right).sum())
        samples += len(batch)
    if samples == 0:
        raise DataError("no samples to validate on")
    outputs = {n: s.result() for n, s in stats.items()}
    accuracy = None
    if labelled:
        accuracy = {"reference": correct["reference"] / labelled, "candidate": correct["candidate"] / labelled,
                    "labelled": labelled, **flips}
    latency: dict[str, float | None] = {"reference": None, "candidate": None}
    if measure_latency and first_feed is not None:
        timed_reference = ref_proto if ref_session is not None else None
        del ref_session, cand_session  # latency gets its own sessions: never four alive at once
        runtime.release_memory()
        latency = _latencies(timed_reference, cand_proto, first_feed)
    sizes = {
        "reference": _size(reference, ref_proto) if ref_proto is not None else None,
        "candidate": _size(candidate, cand_proto),
    }
    failures = _check_gate(gate, outputs, accuracy)
    return ValidationReport(not failures, outputs, accuracy, latency, sizes, samples, synthetic, failures)


def _refuse_different_inputs(reference: list[InputSpec], candidate: list[InputSpec]) -> None:
    """Both models must take the same inputs (names, element types, static
    dims; a symbolic dim matches any): the data is fed to both. Names the
    first input that differs."""

    def shown(spec: InputSpec) -> str:
        return f"{spec.dtype} [{', '.join('?' if d is None else str(d) for d in spec.shape)}]"

    ref, cand = {s.name: s for s in reference}, {s.name: s for s in candidate}
    for name in sorted(ref.keys() - cand.keys()):
        raise DataError(f"the models take different inputs: '{name}' ({shown(ref[name])}) is an input of the reference "
                        f"only; the candidate takes {', '.join(cand) or 'none'}")
    for name in sorted(cand.keys() - ref.keys()):
        raise DataError(f"the models take different inputs: '{name}' ({shown(cand[name])}) is an input of the candidate "
                        f"only; the reference takes {', '.join(ref) or 'none'}")
    for name, r in ref.items():
        c = cand[name]
        dims_differ = r.rank_known and c.rank_known and (
            len(r.shape) != len(c.shape) or any(a is not None and b is not None and a != b for a, b in zip(r.shape, c.shape)))
        if r.dtype != c.dtype or dims_differ:
            raise DataError(f"the models' input '{name}' differs: reference {shown(r)}, candidate {shown(c)}")


def _take(stream, count: int, where: Any) -> Batch:
    parts = []
    have = 0
    while have < count:
        try:
            b = next(stream)
        except StopIteration:
            raise DataError(f"{where}: fewer saved outputs than input samples") from None
        parts.append(b)
        have += len(b)
    if have != count:
        raise DataError(f"{where}: saved outputs do not line up with the input batches; save one row per input sample")
    names = parts[0].inputs.keys()
    return Batch({n: np.concatenate([p.inputs[n] for p in parts]) for n in names})


def _correct(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per sample: is the top-1 prediction the label."""
    logits = np.asarray(logits)
    predictions = logits.reshape(len(labels), -1).argmax(axis=1)
    return predictions == labels


def _latencies(ref: onnx.ModelProto | None, cand: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Median single-thread latency of each model, measured in interleaved rounds
    (:mod:`onnxshrink.latency`, which also caps the cost for large models)."""
    from onnxshrink.latency import compare_latency, model_ms

    if ref is None:
        return {"reference": None, "candidate": model_ms(cand, feed, rounds=3, runs=10)}
    measured = compare_latency(ref, cand, feed, rounds=3, runs=10)
    return {"reference": measured.reference_ms, "candidate": measured.candidate_ms}


def flip_text(accuracy: dict[str, Any]) -> str:
    """How many labelled samples changed verdict, and what one sample weighs:
    on small eval sets a drop of a few tenths of a point is a sample or two."""
    n = accuracy.get("labelled")
    if not n:
        return ""
    return (f"{accuracy['lost']} of {n} samples newly wrong, {accuracy['gained']} newly right; "
            f"one sample is {100.0 / n:.3g} points")


def _check_gate(gate: Gate, outputs: dict[str, dict[str, Any]], accuracy: dict[str, float] | None) -> list[str]:
    failures = []
    if gate.min_cosine is not None:
        for name, m in outputs.items():
            if m["cosine"] < gate.min_cosine:
                failures.append(f"output '{name}' cosine {m['cosine']:.6f} < {gate.min_cosine}")
    if gate.max_accuracy_drop is not None:
        if accuracy is None:
            raise UsageError("--max-accuracy-drop needs labelled data: an array 'labels' in the data file")
        drop = 100.0 * (accuracy["reference"] - accuracy["candidate"])
        if drop > gate.max_accuracy_drop + 1e-9:
            failures.append(f"accuracy drop {drop:.2f} points > {gate.max_accuracy_drop} ({flip_text(accuracy)})")
    return failures
