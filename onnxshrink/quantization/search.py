"""Accuracy-aware quantization: keep the most sensitive nodes in float until a target holds.

Sensitivity of a node is the output error it adds when it alone is
quantized (1 - cosine of the outputs against the float model, on a few
batches). Nodes are then put back in float, most sensitive first, until the
target (output cosine, or accuracy drop in points on labelled data) holds
on the evaluation data.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Iterable

import numpy as np
import onnx

from onnxshrink import runtime
from onnxshrink.data import Batch, iter_batches, model_inputs
from onnxshrink.errors import UsageError

# Reference outputs are kept in memory up to this size; beyond, the float model is re-run.
CACHE_LIMIT_BYTES = 256 << 20


@dataclasses.dataclass
class Score:
    """How a candidate compares with the float model on the evaluation data."""

    cosine: float  # the lowest over outputs
    accuracy: float | None
    reference_accuracy: float | None

    @property
    def drop_points(self) -> float | None:
        if self.accuracy is None or self.reference_accuracy is None:
            return None
        return 100.0 * (self.reference_accuracy - self.accuracy)

    def to_dict(self) -> dict[str, Any]:
        return {"cosine": self.cosine, "accuracy": self.accuracy, "reference_accuracy": self.reference_accuracy,
                "accuracy_drop_points": self.drop_points}


class Evaluator:
    """Scores quantized candidates against one float model on fixed data.

    The float model runs once; its outputs are cached (up to CACHE_LIMIT_BYTES)."""

    def __init__(self, reference: onnx.ModelProto, data: Any, batch_size: int = 64, max_samples: int | None = None):
        self.data = data
        self.specs = model_inputs(reference)
        self.batch_size = batch_size
        self.max_samples = max_samples
        self.threads = os.cpu_count() or 1
        self.reference = runtime.create_session(reference, threads=self.threads, name="reference")
        self.cache: list[tuple[Batch, list[np.ndarray]]] | None = []
        size = 0
        for batch in self._batches():
            outputs = runtime.run(self.reference, batch.inputs, what="reference")
            size += sum(o.nbytes for o in outputs) + sum(v.nbytes for v in batch.inputs.values())
            if size > CACHE_LIMIT_BYTES:
                self.cache = None
                break
            self.cache.append((batch, outputs))
        if self.cache is not None and not self.cache:
            raise UsageError("the evaluation data holds no samples")
        self.labelled = self.cache is not None and all(b.labels is not None for b, _ in self.cache)

    def _batches(self) -> Iterable[Batch]:
        seen = 0
        for batch in iter_batches(self.data, self.specs, self.batch_size):
            if self.max_samples is not None and seen >= self.max_samples:
                return
            seen += len(batch)
            yield batch

    def _pairs(self) -> Iterable[tuple[Batch, list[np.ndarray]]]:
        if self.cache is not None:
            yield from self.cache
        else:
            for batch in self._batches():
                yield batch, runtime.run(self.reference, batch.inputs, what="reference")

    def score(self, candidate: onnx.ModelProto) -> Score:
        session = runtime.create_session(candidate, threads=self.threads, name="quantized model")
        dot = ref_sq = cand_sq = None
        correct = {"reference": 0, "candidate": 0}
        labelled = 0
        for batch, ref_out in self._pairs():
            cand_out = runtime.run(session, batch.inputs, what="quantized model")
            r = [np.asarray(o, np.float64).reshape(-1) for o in ref_out]
            c = [np.nan_to_num(np.asarray(o, np.float64).reshape(-1), nan=0.0, posinf=0.0, neginf=0.0) for o in cand_out]
            if dot is None:
                dot, ref_sq, cand_sq = np.zeros(len(r)), np.zeros(len(r)), np.zeros(len(r))
            dot += [float(a @ b) for a, b in zip(r, c)]
            ref_sq += [float(a @ a) for a in r]
            cand_sq += [float(b @ b) for b in c]
            if batch.labels is not None:
                labelled += len(batch.labels)
                for key, out in (("reference", ref_out[0]), ("candidate", cand_out[0])):
                    pred = np.asarray(out).reshape(len(batch.labels), -1).argmax(axis=1)
                    correct[key] += int((pred == batch.labels).sum())
        denom = np.sqrt(ref_sq * cand_sq)
        cos = np.where(denom > 0, dot / np.where(denom > 0, denom, 1.0), np.where(ref_sq == cand_sq, 1.0, 0.0))
        accuracy = correct["candidate"] / labelled if labelled else None
        reference_accuracy = correct["reference"] / labelled if labelled else None
        return Score(float(cos.min()), accuracy, reference_accuracy)


def meets(score: Score, min_cosine: float | None, max_drop: float | None) -> bool:
    if min_cosine is not None and score.cosine < min_cosine:
        return False
    if max_drop is not None:
        if score.drop_points is None:
            raise UsageError("--max-accuracy-drop needs labelled --eval data: an array 'labels' in the file")
        if score.drop_points > max_drop + 1e-9:
            return False
    return True


def _out_of_time(deadline: float | None, what: str) -> None:
    if deadline is not None and time.perf_counter() > deadline:
        from onnxshrink.errors import GateFailed

        raise GateFailed(f"the accuracy-aware search ran out of its time budget {what}; nothing written")


def sensitivities(candidates: list[str], build_only: Callable[[str], onnx.ModelProto], probe: Evaluator,
                  progress: Callable[[str, int, int], None] | None = None,
                  deadline: float | None = None) -> dict[str, float]:
    """1 - output cosine when each candidate node alone is quantized (GateFailed
    once ``deadline``, a ``time.perf_counter()`` value, has passed)."""
    result = {}
    for k, name in enumerate(candidates):
        _out_of_time(deadline, f"while measuring sensitivities ({k} of {len(candidates)} nodes)")
        result[name] = 1.0 - probe.score(build_only(name)).cosine
        if progress:
            progress("measuring sensitivity", k + 1, len(candidates))
    return result


def accuracy_aware(prepared, source, options, data, keep: dict[str, str], build, progress=None, deadline=None):
    """Put nodes back in float, most sensitive first, until the target holds.

    Returns (model, plan, records, keep, log, target); raises GateFailed when
    the target needs every node in float, or when ``deadline`` (a
    ``time.perf_counter()`` value) passes first."""
    from onnxshrink.errors import GateFailed

    target = {"min_cosine": options.min_cosine, "max_accuracy_drop": options.max_accuracy_drop}
    evaluator = Evaluator(prepared.model, data)
    if options.max_accuracy_drop is not None and not evaluator.labelled:
        raise UsageError("--max-accuracy-drop needs labelled --eval data: an array 'labels' in the file")
    model, plan, records = build(prepared, source, options, frozenset(keep))
    score = evaluator.score(model)
    log = [{"float_nodes": [], **score.to_dict()}]
    if meets(score, options.min_cosine, options.max_accuracy_drop):
        return model, plan, records, keep, log, {**target, "met": True, **score.to_dict()}
    candidates = [n for n, p in plan.nodes.items() if p.rule.output != "shared"]
    probe = Evaluator(prepared.model, data, max_samples=256)
    everything = frozenset(candidates) | frozenset(keep)
    sens = sensitivities(candidates, lambda n: build(prepared, source, options, everything - {n})[0], probe, progress,
                         deadline)
    order = sorted(candidates, key=lambda n: -sens[n])
    for k in range(1, len(order)):
        _out_of_time(deadline, f"with {k - 1} nodes kept in float")
        chosen = order[:k]
        trial = dict(keep)
        trial.update({n: f"kept in float by the accuracy-aware search (sensitivity {sens[n]:.2e})" for n in chosen})
        model, plan, records = build(prepared, source, options, frozenset(trial))
        if not any(p.rule.output != "shared" for p in plan.nodes.values()):
            break  # nothing left in int8 (joins follow their inputs back to float)
        score = evaluator.score(model)
        log.append({"float_nodes": chosen, **score.to_dict()})
        if progress:
            progress("searching", k, len(order))
        if meets(score, options.min_cosine, options.max_accuracy_drop):
            return model, plan, records, trial, log, {**target, "met": True, **score.to_dict()}
    what = (f"accuracy drop <= {options.max_accuracy_drop} points" if options.max_accuracy_drop is not None
            else f"output cosine >= {options.min_cosine}")
    raise GateFailed(f"cannot reach {what} with any node quantized (best with one node left: cosine {score.cosine:.6f}"
                     + (f", drop {score.drop_points:.2f} points" if score.drop_points is not None else "")
                     + "); nothing written. Relax the target or exclude ops with --exclude-ops")
