"""Bias correction for static int8 (Nagel et al., 2019, the empirical variant).

Rounding a layer's weights to int8 shifts the mean of its output: with the
error ``ΔW = Ŵ - W`` and the layer input ``x``, each output channel moves by
``E[ΔW · x] = ΔW · E[x]``. The mean input of every quantized Conv and Gemm is
measured on the calibration data (in the calibration run itself, summed per
channel and dropped batch by batch), the
shift per output channel follows from the weight's own rounding error, and
the float bias is lowered by it before it is quantized. Each layer is
corrected for its own rounding only, so corrections do not compound.

For Conv the mean is per input channel and the shift sums ``ΔW`` over the
kernel (border positions that read padding are not singled out); Gemm
reads its input as ``[batch, features]``. Nodes without a bias, MatMul,
ConvTranspose and Gemm with ``transA`` are left as they are.
"""

from __future__ import annotations

import numpy as np

from onnxshrink.errors import DataError
from onnxshrink.quantization.plan import NodePlan
from onnxshrink.quantization.prepare import node_attribute


def correctable(p: NodePlan) -> bool:
    """A quantized Conv or Gemm with a weight and a bias whose input is channel-first."""
    if p.weight is None or p.bias is None or not p.activations:
        return False
    if p.node.op_type == "Conv":
        return True
    return p.node.op_type == "Gemm" and int(node_attribute(p.node, "transA", 0)) == 0


class ChannelMeans:
    """Running per-channel (axis 1) means of the tensors ``names``, fed batch by
    batch by the calibration run (:func:`onnxshrink.quantization.calibrate.calibrate`)."""

    def __init__(self, names: list[str]):
        self.names = list(dict.fromkeys(names))
        self._sums: dict[str, np.ndarray] = {}
        self._counts: dict[str, int] = {}

    def update(self, values: dict[str, np.ndarray]) -> None:
        for name in self.names:
            v = np.asarray(values[name], dtype=np.float64)
            if v.ndim < 2:
                raise DataError(f"bias correction: tensor '{name}' has rank {v.ndim}; a channel axis 1 is needed")
            channel_first = np.moveaxis(v, 1, 0).reshape(v.shape[1], -1)
            self._sums[name] = self._sums.get(name, 0.0) + channel_first.sum(axis=1)
            self._counts[name] = self._counts.get(name, 0) + channel_first.shape[1]

    def means(self) -> dict[str, np.ndarray]:
        return {name: self._sums[name] / self._counts[name] for name in self._sums}


def output_shift(p: NodePlan, delta: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    """The mean output change per channel that the rounding error ``delta``
    (float64, the weight's layout) of ``p``'s weight causes for an input whose
    per-channel mean is ``mean``; None when the shapes do not fit the layer
    (the node is then left uncorrected)."""
    use = p.weight
    if p.node.op_type == "Conv":
        out_channels, in_per_group = delta.shape[0], delta.shape[1]
        groups = int(node_attribute(p.node, "group", 1))
        if mean.size != in_per_group * groups or out_channels % groups:
            return None
        per_tap = delta.reshape(out_channels, in_per_group, -1).sum(axis=2)  # [O, I/g]
        group_of = np.arange(out_channels) // (out_channels // groups)
        inputs = mean.reshape(groups, in_per_group)[group_of]  # [O, I/g]
        return (per_tap * inputs).sum(axis=1)
    delta_io = np.moveaxis(delta, (use.in_axis, use.out_axis), (0, 1))  # Gemm: [in, out]
    if delta_io.ndim != 2 or mean.size != delta_io.shape[0]:
        return None
    return mean @ delta_io
