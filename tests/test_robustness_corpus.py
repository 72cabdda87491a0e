"""A CI-sized sample of the sweep corpus (scripts/sweep.py runs all of it).

Every 5th model of onnx's own backend test data (pytorch-converted,
pytorch-operator, simple) goes through pack + unpack, which must restore
every tensor bit-exactly, and through static int8 quantization, which must
give a model onnxruntime loads or refuse with one of our errors. No network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from conftest import ONNX_TEST_DATA
from onnxshrink.data import Batch, model_inputs
from onnxshrink.errors import OnnxShrinkError
from onnxshrink.model import load_model
from onnxshrink.packing import load_packed, pack_model
from onnxshrink.quantization import QuantizeOptions, quantize_model
from onnxshrink.validation import compare_models

SAMPLE = sorted(p for kind in ("pytorch-converted", "pytorch-operator", "simple")
                for p in (ONNX_TEST_DATA / kind).glob("*/model.onnx"))[::5]


def _id(path: Path) -> str:
    return f"{path.parent.parent.name}/{path.parent.name}"


def tensors(model: onnx.ModelProto) -> list[tuple[str, str, tuple, bytes]]:
    """Every data-holding tensor (initializers, sparse, attribute tensors, in
    subgraphs too), in graph order: where, dtype, shape, bytes."""
    found = []

    def walk(graph: onnx.GraphProto, where: str) -> None:
        for t in graph.initializer:
            a = numpy_helper.to_array(t)
            found.append((f"{where}/{t.name}", str(a.dtype), a.shape, a.tobytes()))
        for s in graph.sparse_initializer:
            for t in (s.values, s.indices):
                a = numpy_helper.to_array(t)
                found.append((f"{where}/{s.values.name}", str(a.dtype), a.shape, a.tobytes()))
        for i, node in enumerate(graph.node):
            for attr in node.attribute:
                here = f"{where}/{node.name or i}.{attr.name}"
                for t in ([attr.t] if attr.HasField("t") else []) + list(attr.tensors):
                    a = numpy_helper.to_array(t)
                    found.append((here, str(a.dtype), a.shape, a.tobytes()))
                for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    walk(g, here)

    walk(model.graph, "")
    return found


def calibration(path: Path, model: onnx.ModelProto) -> list[Batch]:
    """The backend test's own inputs as one batch (their shapes are what the model takes)."""
    inputs = {}
    for i, spec in enumerate(model_inputs(model)):
        pb = path.parent / "test_data_set_0" / f"input_{i}.pb"
        if not pb.exists():
            break
        inputs[spec.name] = numpy_helper.to_array(onnx.load_tensor(str(pb)))
    return [Batch(inputs)] if inputs else []


@pytest.mark.parametrize("path", SAMPLE, ids=_id)
def test_pack_unpack_is_bit_exact(path):
    model = load_model(path)
    restored = load_packed(pack_model(model).data)
    assert tensors(restored) == tensors(model)
    assert restored.graph.node == model.graph.node


@pytest.mark.parametrize("path", SAMPLE, ids=_id)
def test_quantize_runs_or_refuses(path):
    model = load_model(path)
    batches = calibration(path, model)
    if not batches:
        pytest.skip("no test inputs")
    try:
        result = quantize_model(model, batches, QuantizeOptions(latency_guard=False), name=_id(path))
    except OnnxShrinkError as e:
        assert str(e) and "\n" not in str(e)
        return
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:
        return  # onnxruntime cannot run the original either
    session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = session.run(None, batches[0].inputs)
    assert all(np.asarray(o).size == 0 or np.asarray(o).dtype.kind not in "fc" or np.isfinite(o).all()
               for o in outputs if isinstance(o, np.ndarray))


def test_the_sample_covers_each_kind():
    kinds = {p.parent.parent.name for p in SAMPLE}
    assert kinds == {"pytorch-converted", "pytorch-operator", "simple"} and len(SAMPLE) >= 25


@pytest.mark.parametrize("path", sorted((ONNX_TEST_DATA / "simple").glob("*/model.onnx")), ids=_id)
def test_validate_against_itself_runs_to_completion(path):
    """Sequence, string and empty outputs included: identical models compare as identical."""
    model = load_model(path)
    batches = calibration(path, model)
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:
        pytest.skip("onnxruntime cannot run it")
    if batches and any(np.asarray(a).ndim and not len(a) for a in batches[0].inputs.values()):
        pytest.skip("the test inputs hold no samples")
    report = compare_models(model, model, batches or None, measure_latency=True)
    assert report.passed is None  # no gate: no verdict
    assert all(m["cosine"] == 1.0 and m["max_abs_error"] == 0 and m["agreement"] in (None, 1.0)
               for m in report.outputs.values())
