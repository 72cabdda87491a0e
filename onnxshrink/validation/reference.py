"""The reference model's outputs on fixed data, kept for searches that measure
many candidates (pruning's allocation search, quantization's accuracy-aware
search): each candidate is compared with them as :func:`compare_models`
does, output kinds, closed loop and gate basis included, without running the
reference again.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Any, Iterator

import numpy as np
import onnx

from onnxshrink import runtime
from onnxshrink.data import Batch, NpzData, iter_batches, model_inputs
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
    """The reference run once on ``data`` (up to ``limit`` samples), the inputs
    and its outputs kept (up to ``cache_bytes`` of them; beyond, data that can
    be read again is streamed and the reference run again with each
    candidate); a stateful model (state pairs found by name or given as
    ``state``) runs in a closed loop over the rows."""

    def __init__(self, reference: onnx.ModelProto, data: Any, *, state: stateful.StatePairs = (),
                 batch_size: int = 64, limit: int | None = None, cache_bytes: int | None = None):
        self.threads = os.cpu_count() or 1
        self.session = runtime.create_session(reference, threads=self.threads, name="reference")
        self.names = [o.name for o in self.session.get_outputs()]
        self.data, self.specs, self.batch_size, self.limit = data, model_inputs(reference), batch_size, limit
        self.rereadable = isinstance(data, (str, os.PathLike, NpzData, list, tuple))
        self.pairs = stateful.state_pairs(reference, state)
        stream = self._read()
        first = next(stream, None)
        if first is None:
            raise DataError("the evaluation data holds no samples")
        if self.pairs:
            self.pairs = stateful.settle(self.session, first, self.pairs, bool(state), "reference")
        self.compared = stateful.compared_outputs(self.names, self.pairs)
        self.producers = {o: n.op_type for n in reference.graph.node for o in n.output}
        self.batches: list[Batch] | None = []
        self.outputs: list[list[np.ndarray]] | None = []
        self.labelled = True
        run, size = stateful.Runner(self.session, self.pairs, "reference"), 0
        for batch in itertools.chain([first], stream):
            self.labelled = self.labelled and batch.labels is not None
            if self.batches is None:
                continue  # streaming: only whether every batch is labelled is still read
            out = run(batch)
            size += sum(np.asarray(a).nbytes for a in out) + sum(np.asarray(v).nbytes for v in batch.inputs.values())
            self.batches.append(batch)
            self.outputs.append(out)
            if cache_bytes is not None and size > cache_bytes and self.rereadable:
                self.batches = self.outputs = None

    def _read(self) -> Iterator[Batch]:
        """The data's batches (rows, for a stateful model), up to ``limit`` samples."""
        source = self.data if not isinstance(self.data, list) else iter(self.data)
        batches = iter_batches(source, self.specs, self.batch_size)
        if self.pairs:
            batches = stateful.rows(batches)
        have = 0
        for batch in batches:
            yield batch
            have += len(batch)
            if self.limit is not None and have >= self.limit:
                return

    def measure(self, candidate: onnx.ModelProto) -> Measured:
        """``candidate`` run on the same data (in the same closed loop) and compared."""
        cand_run = stateful.Runner(runtime.create_session(candidate, threads=self.threads, name="candidate"),
                                   self.pairs, "candidate")
        ref_run = stateful.Runner(self.session, self.pairs, "reference") if self.outputs is None else None
        index = {n: i for i, n in enumerate(self.names)}
        stats = {n: OutputStats(n, self.producers.get(n)) for n in self.compared}
        rows: dict[str, tuple[list, list]] = {n: ([], []) for n in self.compared}  # closed-loop steps
        correct, labelled = [0, 0], 0
        batches = self.batches if self.batches is not None else self._read()
        for i, batch in enumerate(batches):
            r = self.outputs[i] if self.outputs is not None else ref_run(batch)
            c = cand_run(batch)
            for name in self.compared:
                if self.pairs:
                    rows[name][0].append(r[index[name]])
                    rows[name][1].append(c[index[name]])
                else:
                    stats[name].add(r[index[name]], c[index[name]], len(batch), batch.inputs)
            if self.labelled and self.compared:
                first = index[self.compared[0]]
                correct[0] += int(correct_top1(r[first], batch.labels).sum())
                correct[1] += int(correct_top1(c[first], batch.labels).sum())
                labelled += len(batch.labels)
        for name, (refs, cands) in rows.items():  # one row per step: compared as one batch per output
            stats[name].add_rows(refs, cands)
        outputs = {n: s.result() for n, s in stats.items()}
        if not self.labelled or not labelled:
            return Measured(outputs, None, None)
        return Measured(outputs, correct[1] / labelled, correct[0] / labelled)
