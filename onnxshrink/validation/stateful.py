"""Stateful (recurrent, streaming) models, validated the way they run.

A state is an output fed back as an input on the next call (an LSTM's
``state`` -> ``stateN``, ``h0`` -> ``hn``). Validating such a model on rows
that each carry a recorded state measures one step; what its user runs is
the loop, where each step's small error comes back as the next step's
state. So when a model has state pairs, the eval rows are read as one
sequence in order and each model is run in a closed loop on it, fed its own
state from the step before (the first row, and every row whose ``reset`` is
1, start from the state recorded in the data); the outputs that are not
states are compared over the whole sequence.

Pairs are found by name (``state``/``stateN``/``state_out``, ``h``/``hn``,
``c``/``cn``, ``h0``/``hn``, ``*_in``/``*_out``, ``past_*``/``present_*``)
and kept when the output really has the input's shape and dtype on the first
step; or they are given as ``OUT=IN`` (``--state``).
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np
import onnx

from onnxshrink import runtime
from onnxshrink.data import Batch
from onnxshrink.errors import DataError, UsageError

StatePairs = tuple[tuple[str, str], ...]  # (output, input) per state

_IN_SUFFIXES = ("", "0", "_0", ".0", "in", "_in", ".in", "_prev", "prev", "_old")
_OUT_SUFFIXES = ("n", "_n", ".n", "out", "_out", ".out", "_new", "new", "_next", "next")


def _names_pair(input_name: str, output_name: str) -> bool:
    """Whether the names read as one state's input and output."""
    a, b = input_name.lower(), output_name.lower()
    if a.startswith("past") and b.startswith("present"):
        rest_a = a[len("past"):].lstrip("_.").removeprefix("key_values").lstrip("_.")
        return rest_a == b[len("present"):].lstrip("_.")
    for si in _IN_SUFFIXES:
        if si and not a.endswith(si):
            continue
        base = a[: len(a) - len(si)] if si else a
        if base and any(b == base + so for so in _OUT_SUFFIXES):
            return True
    return False


def _declared(vi: onnx.ValueInfoProto) -> tuple[int, tuple]:
    tt = vi.type.tensor_type
    return tt.elem_type, tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)


def _compatible(a: onnx.ValueInfoProto, b: onnx.ValueInfoProto) -> bool:
    """Declared types agree where both are known (exporters often leave an output's shape unknown)."""
    (ta, sa), (tb, sb) = _declared(a), _declared(b)
    if ta and tb and ta != tb:
        return False
    if sa and sb and (len(sa) != len(sb) or any(x is not None and y is not None and x != y for x, y in zip(sa, sb))):
        return False
    return True


def parse_state(items: Iterable[str] | None) -> StatePairs:
    """``--state OUT=IN`` flags (repeatable, or comma-separated) as pairs."""
    pairs = []
    for item in items or ():
        for part in item.split(","):
            out, sep, inp = part.strip().partition("=")
            if not sep or not out.strip() or not inp.strip():
                raise UsageError(f"--state '{part.strip()}': expected OUT=IN, the output fed back as the input "
                                 "on the next step (e.g. stateN=state)")
            pairs.append((out.strip(), inp.strip()))
    return tuple(pairs)


def state_pairs(model: onnx.ModelProto, given: StatePairs = ()) -> StatePairs:
    """The model's state pairs: ``given`` (checked against its inputs and
    outputs), else those found by name with compatible declared types."""
    inits = {t.name for t in model.graph.initializer}
    inputs = {vi.name: vi for vi in model.graph.input if vi.name not in inits}
    outputs = {vi.name: vi for vi in model.graph.output}
    if given:
        for out, inp in given:
            if out not in outputs:
                raise UsageError(f"--state {out}={inp}: the model has no output '{out}' (outputs: {', '.join(outputs)})")
            if inp not in inputs:
                raise UsageError(f"--state {out}={inp}: the model has no input '{inp}' (inputs: {', '.join(inputs)})")
        return tuple(given)
    found = []
    taken: set[str] = set()
    for out, ovi in outputs.items():
        for inp, ivi in inputs.items():
            if inp not in taken and _names_pair(inp, out) and _compatible(ivi, ovi):
                found.append((out, inp))
                taken.add(inp)
                break
    # Every input a state: nothing would be left to feed from the data.
    return tuple(found) if len(found) < len(inputs) else ()


def verify(pairs: StatePairs, feed: dict[str, np.ndarray], outputs: dict[str, np.ndarray], given: bool) -> StatePairs:
    """The pairs whose output has its input's shape and dtype on a real step.
    A given pair that does not is refused (DataError); a pair found by name
    is dropped."""
    kept = []
    for out, inp in pairs:
        a, b = np.asarray(outputs[out]), np.asarray(feed[inp])
        if a.shape == b.shape and a.dtype == b.dtype:
            kept.append((out, inp))
        elif given:
            raise DataError(f"--state {out}={inp}: output '{out}' is {a.dtype} {list(a.shape)} but input '{inp}' "
                            f"is fed {b.dtype} {list(b.shape)}; a state must come back as it went in")
    return tuple(kept)


def settle(session, first: Batch, pairs: StatePairs, given: bool, what: str = "model") -> StatePairs:
    """The pairs that hold on the first row (see :func:`verify`), from one run of ``session``."""
    if not pairs:
        return ()
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, runtime.run(session, first.inputs, what=what)))
    return verify(pairs, first.inputs, outputs, given)


def rows(batches: Iterable[Batch]) -> Iterator[Batch]:
    """The batches one row (time step) at a time, in order, with their labels and reset flags."""
    for batch in batches:
        if batch.size is not None or len(batch) == 1:
            yield batch
            continue
        for i in range(len(batch)):
            yield Batch({k: v[i:i + 1] for k, v in batch.inputs.items()},
                        None if batch.labels is None else batch.labels[i:i + 1], None,
                        None if batch.reset is None else batch.reset[i:i + 1])


class Runner:
    """Runs one session on batches; with state pairs, in a closed loop over
    rows: each step is fed the state the model itself returned on the step
    before, except on the first row and rows marked ``reset``, which feed the
    state recorded in the data."""

    def __init__(self, session, pairs: StatePairs = (), what: str = "model"):
        self.session, self.pairs, self.what = session, pairs, what
        self.names = [o.name for o in session.get_outputs()]
        self.state: dict[str, np.ndarray] | None = None

    def restart(self) -> None:
        self.state = None

    def __call__(self, batch: Batch) -> list[np.ndarray]:
        if not self.pairs:
            return runtime.run(self.session, batch.inputs, what=self.what)
        feed = batch.inputs
        if self.state is not None and not (batch.reset is not None and bool(np.asarray(batch.reset).any())):
            feed = {**feed, **self.state}
        outputs = runtime.run(self.session, feed, what=self.what)
        by_name = dict(zip(self.names, outputs))
        self.state = {inp: by_name[out] for out, inp in self.pairs}
        return outputs


def compared_outputs(names: Sequence[str], pairs: StatePairs) -> list[str]:
    """The outputs compared: all but the states (in a closed loop each model carries its own)."""
    states = {out for out, _ in pairs}
    return [n for n in names if n not in states]
