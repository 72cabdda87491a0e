"""The quantization report: what was done to each node, what stayed float and why, the final metrics;
and the result a quantize pass returns (model, report, statistics)."""

from __future__ import annotations

import dataclasses
from typing import Any

import onnx

from onnxshrink.cpu_targets import DEFAULT_TARGET, INT8_WEIGHT_LIMITS
from onnxshrink.quantization.stats import CalibrationStats


@dataclasses.dataclass
class QuantizeReport:
    """Everything a user needs to trust (or reject) the quantized model."""

    mode: str  # "static" or "dynamic"
    method: str | None
    activations: str | None
    per_channel: bool
    nodes: list[dict[str, Any]]
    left_float: dict[str, str]
    size_bytes: dict[str, int]
    calibration: dict[str, Any]
    validation: dict[str, Any] | None = None
    latency_ms: dict[str, float | None] = dataclasses.field(default_factory=dict)
    # The result against its input (onnxshrink.latency.Latency.to_dict()): ratio, noise, medians.
    latency: dict[str, Any] | None = None
    target: dict[str, Any] | None = None
    search: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    prepared: dict[str, Any] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    weight_range_bits: int = 8
    cpu_target: str = DEFAULT_TARGET  # QuantizeOptions.target: the CPU the model is written for
    weight_code_max: int = INT8_WEIGHT_LIMITS[DEFAULT_TARGET]  # int8 weight codes lie in [-this, this]
    weight_rounding: str = "nearest"  # "gptq" or "nearest" (QuantizeOptions.weight_rounding, as applied)

    @property
    def size_ratio(self) -> float:
        return self.size_bytes["quantized"] / max(self.size_bytes["original"], 1)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["size_ratio"] = round(self.size_ratio, 4)
        return d


@dataclasses.dataclass
class QuantizeResult:
    """The quantized model and its report; ``modified`` is False when nothing could be quantized."""

    model: onnx.ModelProto
    modified: bool
    report: QuantizeReport
    stats: CalibrationStats | None = None
