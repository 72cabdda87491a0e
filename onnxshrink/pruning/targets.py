"""Which tensors a prune run may change: layer weights found by graph role."""

from __future__ import annotations

import dataclasses
import fnmatch

import numpy as np
import onnx

from onnxshrink.model import WeightRef
from onnxshrink.roles import WeightUse, weight_uses, weights_by_name
from onnxshrink.stats.layer_inputs import LayerLayout, layer_layout


@dataclasses.dataclass
class PruneTarget:
    """One weight tensor to prune (once, however many nodes read it)."""

    name: str
    ref: WeightRef
    uses: list[WeightUse]
    layout: LayerLayout | None  # the matrix view, when every use agrees on one

    @property
    def size(self) -> int:
        return self.ref.size

    @property
    def op_type(self) -> str:
        return self.uses[0].op_type

    @property
    def in_axis(self) -> int:
        return self.uses[0].in_axis

    @property
    def out_axis(self) -> int:
        return self.uses[0].out_axis


def _matches(patterns: tuple[str, ...], names: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names if n)


def prunable_weights(
    model: onnx.ModelProto, *, min_size: int, exclude: tuple[str, ...] = (), include_recurrent: bool = False
) -> tuple[list[PruneTarget], dict[str, str]]:
    """The weights to prune, in graph order, and the layer weights left alone
    with the reason (too small, excluded, not float, read on different axes)."""
    targets: list[PruneTarget] = []
    skipped: dict[str, str] = {}
    for name, uses in weights_by_name(weight_uses(model, include_recurrent=include_recurrent)).items():
        ref = uses[0].weight
        dtype = onnx.helper.tensor_dtype_to_np_dtype(ref.tensor.data_type)
        if np.dtype(dtype).kind != "f":
            skipped[name] = f"{np.dtype(dtype).name} tensor, not float"
        elif ref.size < min_size:
            skipped[name] = f"{ref.size} elements < --min-size {min_size}"
        elif _matches(exclude, [name] + [u.node.name for u in uses]):
            skipped[name] = "excluded"
        elif len({(u.in_axis, u.out_axis) for u in uses}) > 1:
            skipped[name] = "read by layers on different axes"
        else:
            layouts = [layer_layout(u) for u in uses]
            first = layouts[0]
            same = all(l is not None and first is not None and (l.op_type, l.groups, l.features) ==
                       (first.op_type, first.groups, first.features) for l in layouts)
            targets.append(PruneTarget(name, ref, uses, first if same else None))
    return targets, skipped
