"""Weight-only quantization below and at 8 bits: int8/int4 weights behind
DequantizeLinear, activations in float.

    quantize_weights(model, WeightOnlyOptions(bits=4, granularity="block:32", rounding="gptq"),
                     calib="data.npz") -> WeightOnlyResult(model, modified, report)

Scales are symmetric (zero point 0) per output channel or per block of input
channels; rounding is to nearest or error-compensated (GPTQ, on the same OBS
sweep and Hessian statistics as Hessian pruning). See docs/lowbit.md.
"""

from onnxshrink.lowbit.gptq import gptq_codes, output_error
from onnxshrink.lowbit.grid import Grid, quantize_nearest
from onnxshrink.lowbit.options import BITS, GRANULARITIES, ROUNDINGS, WeightOnlyOptions, parse_granularity
from onnxshrink.lowbit.report import WeightOnlyReport, WeightRecord
from onnxshrink.lowbit.weight_only import (WeightOnlyResult, WeightTarget, collect_weight_statistics,
                                           quantize_weights, weight_targets)

__all__ = [
    "BITS",
    "GRANULARITIES",
    "Grid",
    "ROUNDINGS",
    "WeightOnlyOptions",
    "WeightOnlyReport",
    "WeightOnlyResult",
    "WeightRecord",
    "WeightTarget",
    "collect_weight_statistics",
    "gptq_codes",
    "output_error",
    "parse_granularity",
    "quantize_nearest",
    "quantize_weights",
    "weight_targets",
]
