"""Comparing a candidate model against a reference, on the same inputs, in onnxruntime.

Metrics accumulate batch by batch (sums and maxima), so memory does not grow
with the number of samples; each output is compared as its kind says
(:mod:`onnxshrink.validation.kinds`), a stateful model in a closed loop
(:mod:`onnxshrink.validation.stateful`). A :class:`Gate` turns the metrics
into a verdict, given only when a gate was measured on real data.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx

from onnxshrink import runtime
from onnxshrink.data import Batch, InputSpec, NpzData, iter_batches, model_inputs, synthetic_batches
from onnxshrink.errors import DataError, GateFailed, UsageError
from onnxshrink.validation import stateful
from onnxshrink.validation.gate import AGREEMENT_BASIS, LABELS_BASIS, Gate, changed_points, check_gate
from onnxshrink.validation.metrics import OutputStats, correct_top1

RANDOM_INPUTS = "random inputs"
# A closed loop's steps are compared this many at a time (each step is one sample).
ROWS_PER_CHUNK = 256


@dataclasses.dataclass
class ValidationReport:
    """What ``compare_models`` measured, and whether the gate held.

    ``passed`` is None when no gate was measured: no gate was given, or the
    inputs were random (``synthetic_inputs``, ``checked_on`` "random
    inputs"), which check numerical fidelity only. ``basis`` says what an
    accuracy gate was measured against (labels, or the original model's own
    answers); ``answers_changed`` the most any output's answers changed (in
    points, per its kind). ``closed_loop`` is True for a stateful model run
    on its own state (``state``: the (output, input) pairs).
    """

    passed: bool | None
    outputs: dict[str, dict[str, Any]]
    # reference/candidate: top-1 accuracy; labelled: samples with labels; lost/gained:
    # samples the candidate newly gets wrong/right (their difference is the drop).
    accuracy: dict[str, Any] | None
    latency_ms: dict[str, float | None]
    size_bytes: dict[str, int | None]
    samples: int
    synthetic_inputs: bool
    failures: list[str]
    gate: dict[str, Any] = dataclasses.field(default_factory=dict)
    basis: str | None = None
    answers_changed: dict[str, Any] | None = None
    checked_on: str = "data"
    closed_loop: bool = False
    state: list[list[str]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def accuracy_drop_points(self) -> float | None:
        if not self.accuracy or self.accuracy.get("reference") is None or self.accuracy.get("candidate") is None:
            return None
        return 100.0 * (self.accuracy["reference"] - self.accuracy["candidate"])

    @property
    def drop_points(self) -> float:
        """What an accuracy gate measures: the labelled accuracy drop, or
        without labels the most any output's answers changed (points)."""
        labelled = self.accuracy_drop_points
        if labelled is not None:
            return labelled
        return self.answers_changed["points"] if self.answers_changed else 0.0

    def raise_if_failed(self) -> None:
        if self.passed is False:
            raise GateFailed("quality gate failed: " + "; ".join(self.failures))


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
    state: stateful.StatePairs = (),
    checked_on: str = "data",
) -> ValidationReport:
    """Run ``reference`` and ``candidate`` on the same inputs and compare outputs.

    ``data`` is an .npz path, folder, NpzData, ORT-style reader or iterable of
    batches; without it, random inputs are made from the declared shapes
    (``shapes`` fills symbolic dims) and no verdict is given. With
    ``reference_outputs`` (an .npz of outputs saved from the source
    framework, keyed by output name) the candidate is compared against those
    instead of running ``reference``. A model with state pairs (found by
    name, or ``state`` as (output, input) pairs) runs in a closed loop over
    the rows in order. ``checked_on`` names the data in the report (e.g.
    "calibration data"). Neither model is modified.
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
    pairs = stateful.state_pairs(ref_proto if ref_proto is not None else cand_proto, state)
    if pairs:
        batches = stateful.rows(batches)
        first = next(batches, None)
        if first is not None:
            pairs = stateful.settle(ref_session or cand_session, first, pairs, bool(state))
            batches = itertools.chain([first], batches)
    saved: NpzData | None = None
    saved_iter = None
    if reference_outputs is not None:
        saved = NpzData(reference_outputs)
        missing = [n for n in cand_names if n not in saved.arrays]
        if missing:
            raise DataError(f"{reference_outputs}: no saved output '{missing[0]}' (arrays: {', '.join(saved.arrays)})")
        saved_specs = [InputSpec(n, saved.arrays[n][1], (None,) + tuple(saved.arrays[n][0][1:])) for n in cand_names]
        saved_iter = saved.batches(saved_specs, 1 if pairs else batch_size)
    elif ref_session is not None:
        ref_names = [o.name for o in ref_session.get_outputs()]
        if ref_names != cand_names:
            raise DataError(f"the models' outputs differ: reference {ref_names}, candidate {cand_names}")
    producers = {o: n.op_type for n in (ref_proto or cand_proto).graph.node for o in n.output}
    compared = stateful.compared_outputs(cand_names, pairs)
    stats = {n: OutputStats(n, producers.get(n)) for n in compared}
    index = {n: i for i, n in enumerate(cand_names)}
    ref_run = stateful.Runner(ref_session, pairs, "reference") if ref_session is not None else None
    cand_run = stateful.Runner(cand_session, pairs, "candidate")
    correct = {"reference": 0, "candidate": 0}
    flips = {"lost": 0, "gained": 0}  # samples the candidate newly gets wrong / newly gets right
    labelled = 0
    samples = 0
    first_feed = None
    rows: dict[str, tuple[list, list]] = {n: ([], []) for n in compared}  # closed-loop steps, added in chunks
    for batch in batches:
        if first_feed is None:
            first_feed = runtime.first_sample(batch, specs)
        # Reference first: inputs the original cannot take are the inputs' fault, and say so.
        if saved_iter is not None:
            saved_batch = _take(saved_iter, len(batch), reference_outputs)
            ref_out = [saved_batch.inputs[n] for n in cand_names]
        elif ref_run is not None:
            ref_out = ref_run(batch)
        cand_out = cand_run(batch)
        if saved_iter is None and ref_run is None:
            ref_out = cand_out
        for name in compared:
            if pairs:
                rows[name][0].append(ref_out[index[name]])
                rows[name][1].append(cand_out[index[name]])
                if len(rows[name][0]) >= ROWS_PER_CHUNK:
                    stats[name].add_rows(*rows[name])
                    rows[name] = ([], [])
            else:
                stats[name].add(ref_out[index[name]], cand_out[index[name]], len(batch), batch.inputs)
        if batch.labels is not None and compared:
            first_output = index[compared[0]]
            labelled += len(batch.labels)
            ref_right = correct_top1(ref_out[first_output], batch.labels)
            cand_right = correct_top1(cand_out[first_output], batch.labels)
            correct["reference"] += int(ref_right.sum())
            correct["candidate"] += int(cand_right.sum())
            flips["lost"] += int((ref_right & ~cand_right).sum())
            flips["gained"] += int((cand_right & ~ref_right).sum())
        samples += len(batch)
    if samples == 0:
        raise DataError("no samples to validate on")
    for name, (refs, cands) in rows.items():
        stats[name].add_rows(refs, cands)
    outputs = {n: s.result() for n, s in stats.items()}
    accuracy = None
    if labelled:
        accuracy = {"reference": correct["reference"] / labelled, "candidate": correct["candidate"] / labelled,
                    "labelled": labelled, **flips}
    latency: dict[str, float | None] = {"reference": None, "candidate": None}
    if measure_latency and first_feed is not None:
        timed_reference = ref_proto if ref_session is not None else None
        del ref_session, cand_session, ref_run, cand_run  # latency gets its own sessions: never four alive at once
        runtime.release_memory()
        latency = _latencies(timed_reference, cand_proto, first_feed)
    sizes = {
        "reference": _size(reference, ref_proto) if ref_proto is not None else None,
        "candidate": _size(candidate, cand_proto),
    }
    points, worst = changed_points(outputs)
    # Random inputs check numerical fidelity only: no verdict is drawn from them.
    failures = [] if synthetic else check_gate(gate, outputs, accuracy)
    passed = None if synthetic or not gate.active else not failures
    basis = None
    if gate.max_accuracy_drop is not None:
        basis = LABELS_BASIS if accuracy is not None else AGREEMENT_BASIS
    return ValidationReport(
        passed, outputs, accuracy, latency, sizes, samples, synthetic, failures,
        gate={k: v for k, v in dataclasses.asdict(gate).items() if v is not None}, basis=basis,
        answers_changed={"points": round(points, 6), "output": worst} if worst is not None else None,
        checked_on=RANDOM_INPUTS if synthetic else checked_on, closed_loop=bool(pairs),
        state=[[out, inp] for out, inp in pairs])


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




def _latencies(ref: onnx.ModelProto | None, cand: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Median single-thread latency of each model, measured in interleaved rounds
    (:mod:`onnxshrink.latency`, which also caps the cost for large models)."""
    from onnxshrink.latency import compare_latency, model_ms

    if ref is None:
        return {"reference": None, "candidate": model_ms(cand, feed, rounds=3, runs=10)}
    measured = compare_latency(ref, cand, feed, rounds=3, runs=10)
    return {"reference": measured.reference_ms, "candidate": measured.candidate_ms}
