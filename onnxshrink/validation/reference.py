"""The reference model's outputs on fixed data, kept for searches that measure
many candidates (pruning's allocation search, quantization's accuracy-aware
search): each candidate is compared with them as :func:`compare_models`
does, output kinds, closed loop and gate basis included, without running the
reference again.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import onnx

from onnxshrink import runtime
from onnxshrink.data import Batch, iter_batches, model_inputs
from onnxshrink.errors import DataError
from onnxshrink.validation import stateful
from onnxshrink.validation.gate import Gate, changed_points, check_gate
from onnxshrink.validation.metrics import OutputStats, correct_top1


@dataclasses.dataclass
class Measured:
    """One candidate against the kept reference: per-output metrics (as in a
    ValidationReport) and, on labelled data, both models' top-1 accuracy."""

    outputs: dict[str, dict[str, Any]]
    accuracy: float | None
    reference_accuracy: float | None

    @property
    def cosine(self) -> float:
        """The lowest output cosine."""
        return min((m["cosine"] for m in self.outputs.values()), default=1.0)

    @property
    def relative_error(self) -> float:
        """Mean over outputs of ||reference - candidate||² / ||reference||²."""
        errors = [m["relative_error"] for m in self.outputs.values() if m.get("relative_error") is not None]
        return float(np.mean(errors)) if errors else 0.0

    @property
    def labelled(self) -> bool:
        return self.accuracy is not None

    @property
    def drop_points(self) -> float:
        """What an accuracy gate measures: the labelled drop, else the most any output's answers changed."""
        if self.accuracy is not None and self.reference_accuracy is not None:
            return 100.0 * (self.reference_accuracy - self.accuracy)
        return changed_points(self.outputs)[0]

    def failures(self, gate: Gate) -> list[str]:
        accuracy = None
        if self.labelled:
            accuracy = {"reference": self.reference_accuracy, "candidate": self.accuracy}
        return check_gate(gate, self.outputs, accuracy)


class KeptReference:
    """The reference run once on ``data`` (up to ``limit`` samples), its outputs
    kept (up to ``cache_bytes``; beyond, the reference is run again with each
    candidate); a stateful model (state pairs found by name or given as
    ``state``) runs in a closed loop over the rows."""

    def __init__(self, reference: onnx.ModelProto, data: Any, *, state: stateful.StatePairs = (),
                 batch_size: int = 64, limit: int | None = None, cache_bytes: int | None = None):
        self.threads = os.cpu_count() or 1
        self.session = runtime.create_session(reference, threads=self.threads, name="reference")
        self.names = [o.name for o in self.session.get_outputs()]
        self.pairs = stateful.state_pairs(reference, state)
        batches = iter_batches(data if not isinstance(data, list) else iter(data), model_inputs(reference), batch_size)
        if self.pairs:
            batches = stateful.rows(batches)
        self.batches: list[Batch] = []
        have = 0
        for batch in batches:
            self.batches.append(batch)
            have += len(batch)
            if limit is not None and have >= limit:
                break
        if not self.batches:
            raise DataError("the evaluation data holds no samples")
        if self.pairs:
            self.pairs = stateful.settle(self.session, self.batches[0], self.pairs, bool(state), "reference")
        self.compared = stateful.compared_outputs(self.names, self.pairs)
        self.producers = {o: n.op_type for n in reference.graph.node for o in n.output}
        self.outputs: list[list[np.ndarray]] | None = self._run(self.session, "reference")
        size = sum(a.nbytes for out in self.outputs for a in out if isinstance(a, np.ndarray))
        if cache_bytes is not None and size > cache_bytes:
            self.outputs = None
        self.labels = None
        if all(b.labels is not None for b in self.batches):
            self.labels = [b.labels for b in self.batches]

    def _run(self, session, what: str) -> list[list[np.ndarray]]:
        run = stateful.Runner(session, self.pairs, what)
        return [run(batch) for batch in self.batches]

    def measure(self, candidate: onnx.ModelProto) -> Measured:
        """``candidate`` run on the same data (in the same closed loop) and compared."""
        session = runtime.create_session(candidate, threads=self.threads, name="candidate")
        cand = self._run(session, "candidate")
        ref = self.outputs if self.outputs is not None else self._run(self.session, "reference")
        index = {n: i for i, n in enumerate(self.names)}
        stats = {n: OutputStats(n, self.producers.get(n)) for n in self.compared}
        correct = [0, 0]
        if self.pairs:  # one row per step: compared as one batch per output
            for name in self.compared:
                stats[name].add_rows([r[index[name]] for r in ref], [c[index[name]] for c in cand])
        for batch, r, c in zip(self.batches, ref, cand):
            if not self.pairs:
                for name in self.compared:
                    stats[name].add(r[index[name]], c[index[name]], len(batch), batch.inputs)
            if self.labels is not None and self.compared:
                first = index[self.compared[0]]
                correct[0] += int(correct_top1(r[first], batch.labels).sum())
                correct[1] += int(correct_top1(c[first], batch.labels).sum())
        outputs = {n: s.result() for n, s in stats.items()}
        if self.labels is None:
            return Measured(outputs, None, None)
        n = sum(len(x) for x in self.labels)
        return Measured(outputs, correct[1] / n, correct[0] / n)
