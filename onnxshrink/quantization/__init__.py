"""int8 quantization in QDQ form: our own pass on the ONNX graph.

    quantize_model(model, calib, QuantizeOptions(...), eval_data=..., progress=...) -> QuantizeResult

Weights become int8 (symmetric, per output channel, zero point 0) behind
DequantizeLinear, biases int32, activations get QuantizeLinear/
DequantizeLinear pairs placed so that onnxruntime fuses them into its
integer kernels. Calibration statistics stream (fixed memory) and merge
across runs (:class:`CalibrationStats`). See docs/quantize.md.
"""

from onnxshrink.quantization.calibrate import calibrate
from onnxshrink.quantization.options import ACTIVATION_TYPES, METHODS, QuantizeOptions
from onnxshrink.quantization.prepared import prepare_model
from onnxshrink.quantization.quantizer import quantize_model
from onnxshrink.quantization.report import QuantizeReport, QuantizeResult
from onnxshrink.quantization.rules import RULES, OpRule
from onnxshrink.quantization.stats import CalibrationStats, TensorStats

__all__ = [
    "ACTIVATION_TYPES",
    "CalibrationStats",
    "METHODS",
    "OpRule",
    "QuantizeOptions",
    "QuantizeReport",
    "QuantizeResult",
    "RULES",
    "TensorStats",
    "calibrate",
    "prepare_model",
    "quantize_model",
]
