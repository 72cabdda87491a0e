"""Per-op quantization rules, as data.

Each rule says which inputs of an op are activations to quantize, which
input is a layer weight (int8, symmetric, per channel on the role's output
axis) and which a bias (int32), and what happens to its output:

* ``own``: the output gets its own calibrated scale (integer kernels that
  requantize: QLinearConv, QLinearAdd, QLinearConcat, QLinearAveragePool ...);
* ``optional``: as ``own``, but left in float when nothing quantized reads it
  (onnxruntime then runs MatMulIntegerToFloat / QGemm with a float output);
* ``shared``: the output reuses the input's scale and zero point (data
  movement: Reshape, Transpose, MaxPool ...), so onnxruntime drops the Q/DQ
  pair and runs the op on 8-bit data;
* ``fused``: a clamp (Relu, Clip at 0) that disappears into the Q of the op
  before it, whose range then starts at zero.

Joins (Add, Mul, Concat) are quantized only when all their inputs come out
of int8 kernels already (a residual Add between convolutions); a bias Add
after a MatMul or the arithmetic of a GELU stays float, and the MatMul
before it runs as MatMulIntegerToFloat.

The placement follows onnxruntime's QDQ selectors (core/optimizer/qdq_transformer):
a node group is DQ on every quantized input -> op -> Q on its only output.
"""

from __future__ import annotations

import dataclasses

ALL_INPUTS = -1


@dataclasses.dataclass(frozen=True)
class OpRule:
    op_type: str
    activations: tuple[int, ...] = (0,)  # input indices; (ALL_INPUTS,) = every input
    weight: int | None = None  # input index of a layer weight (found by role)
    bias: int | None = None
    output: str = "own"  # own | optional | shared | fused
    kernel: str = ""  # what onnxruntime's CPU provider runs it as, for the report
    # joins (Add, Mul, Concat) run in int8 only when every input already is: quantizing a
    # float Add (a bias, a residual after a float LayerNorm) costs error and time and saves nothing
    int8_inputs_only: bool = False


RULES: dict[str, OpRule] = {}


def register(rule: OpRule) -> None:
    RULES[rule.op_type] = rule


for _rule in [
    OpRule("Conv", (0,), weight=1, bias=2, output="own", kernel="QLinearConv"),
    OpRule("ConvTranspose", (0,), weight=1, bias=2, output="own", kernel="QLinearConvTranspose"),
    OpRule("Gemm", (0,), weight=1, bias=2, output="optional", kernel="QGemm"),
    OpRule("MatMul", (0, 1), weight=1, output="optional", kernel="QLinearMatMul"),
    OpRule("Add", (0, 1), output="own", kernel="QLinearAdd", int8_inputs_only=True),
    OpRule("Mul", (0, 1), output="own", kernel="QLinearMul", int8_inputs_only=True),
    OpRule("Concat", (ALL_INPUTS,), output="own", kernel="QLinearConcat", int8_inputs_only=True),
    OpRule("AveragePool", (0,), output="own", kernel="QLinearAveragePool"),
    OpRule("GlobalAveragePool", (0,), output="own", kernel="QLinearGlobalAveragePool"),
    OpRule("Sigmoid", (0,), output="own", kernel="QLinearSigmoid"),
    OpRule("LeakyRelu", (0,), output="own", kernel="QLinearLeakyRelu"),
    OpRule("HardSwish", (0,), output="own", kernel="HardSwish (float, between Q/DQ)"),
    OpRule("HardSigmoid", (0,), output="own", kernel="HardSigmoid (float, between Q/DQ)"),
    OpRule("Relu", (0,), output="fused", kernel="folded into the previous Q"),
    OpRule("Clip", (0,), output="fused", kernel="folded into the previous Q"),
    OpRule("MaxPool", (0,), output="shared", kernel="MaxPool (uint8)"),
    OpRule("Resize", (0,), output="shared", kernel="Resize (uint8)"),
    OpRule("Reshape", (0,), output="shared", kernel="Reshape (8-bit)"),
    OpRule("Transpose", (0,), output="shared", kernel="Transpose (8-bit)"),
    OpRule("Flatten", (0,), output="shared", kernel="Flatten (8-bit)"),
    OpRule("Squeeze", (0,), output="shared", kernel="Squeeze (8-bit)"),
    OpRule("Unsqueeze", (0,), output="shared", kernel="Unsqueeze (8-bit)"),
    OpRule("Slice", (0,), output="shared", kernel="Slice (8-bit)"),
    OpRule("Split", (0,), output="shared", kernel="Split (8-bit)"),
]:
    register(_rule)


def rule_for(op_type: str, domain: str = "") -> OpRule | None:
    if domain not in ("", "ai.onnx"):
        return None
    return RULES.get(op_type)
