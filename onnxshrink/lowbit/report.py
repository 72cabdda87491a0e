"""What a weight-only quantization run did, per weight and in total."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class WeightRecord:
    """One quantized weight. ``rounding`` is what ran (``nearest`` where GPTQ
    had no Hessian for it, ``why_nearest`` says why). ``relative_error`` is
    ``||Ŵ - W|| / ||W||``; ``output_error`` the relative layer output error
    ``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` when calibration gave a Hessian."""

    name: str
    op_types: list[str]
    shape: list[int]
    bits: int
    granularity: str
    rounding: str
    relative_error: float
    output_error: float | None
    bytes_before: int
    bytes_after: int
    sparsity: float
    why_nearest: str | None = None


@dataclasses.dataclass
class WeightOnlyReport:
    """Per-weight records, weights left in float with the reason, the opset
    change, model sizes in bytes, calibration use, and validation when asked."""

    options: dict[str, Any]
    weights: list[WeightRecord]
    skipped: dict[str, str]
    opset_before: int
    opset_after: int
    size_bytes: dict[str, int]
    calibration_samples: int = 0
    validation: dict[str, Any] | None = None
    # The model as written against its input (onnxshrink.latency.Latency.to_dict()).
    latency: dict[str, Any] | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def size_ratio(self) -> float:
        return self.size_bytes["quantized"] / max(self.size_bytes["original"], 1)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["size_ratio"] = self.size_ratio
        return d
