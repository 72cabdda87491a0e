"""The last step of every quantize mode: the result against the float model,
under the target or the default floor (a result that fails is not handed
back), and timed against it."""

from __future__ import annotations

from typing import Any

import onnx

from onnxshrink.errors import GateFailed
from onnxshrink.latency import Latency, as_validation_ms, time_result
from onnxshrink.quantization.options import QuantizeOptions
from onnxshrink.validation import DEFAULT_FLOOR, Gate, ValidationReport, compare_models, floor_failure


def final_check(model: onnx.ModelProto, qmodel: onnx.ModelProto, data: Any, options: QuantizeOptions,
                checked_on: str, measure_latency: bool = True) -> tuple[ValidationReport, Latency | None]:
    """The quantized model against the float one on ``data`` (None: random
    inputs, no verdict), under the target when there is one, else the default
    floor (unless ``gate_floor`` is off). Raises GateFailed when it fails:
    nothing is handed back. With ``options.latency_guard`` and
    ``measure_latency`` it is then timed against ``model`` (else the
    Latency is None)."""
    if options.accuracy_aware:
        gate = Gate(min_cosine=options.min_cosine, max_accuracy_drop=options.max_accuracy_drop,
                    min_agreement=options.min_agreement)
    else:
        gate = DEFAULT_FLOOR if options.gate_floor else Gate()
    validation = compare_models(model, qmodel, data, gate=gate, measure_latency=False,
                                shapes=dict(options.shapes) or None, state=options.state, checked_on=checked_on)
    if validation.passed is False:
        if options.accuracy_aware:
            validation.raise_if_failed()
        raise GateFailed(floor_failure("the int8 model", validation) + "; or give a target (--min-agreement 0.98) to "
                         "keep the most sensitive nodes in float until it holds")
    latency = None
    if options.latency_guard and measure_latency:
        latency = time_result(model, qmodel, data, shapes=dict(options.shapes) or None)
        validation.latency_ms = as_validation_ms(latency)
    return validation, latency
