"""Streaming statistics of what each layer reads: the inputs of weight layers.

For every weight (Conv, Gemm, MatMul) this module runs the model once over
calibration batches in onnxruntime and reduces each batch, as soon as it is
captured, to running sums: the input Hessian ``H = XᵀX`` (Conv inputs are
unfolded, im2col-style, per group), per-feature and per-channel squared norms
(Wanda's ``||X||``) and means. Memory depends on the layer sizes, never on the
number of samples.

A layer's weight is seen as ``groups`` matrices of ``rows x features``: rows
are output channels, features the reduction axis. For Conv the feature order
is kernel position major, input channel minor (``k * C_group + c``), so
consecutive features are consecutive input channels at one kernel position
(what N:M patterns group). :func:`weight_matrices` and :func:`from_matrices`
convert between the tensor and that view; ``H`` is in the same feature order.
Hessian pruning, Wanda, channel pruning and GPTQ rounding all read these.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view

from onnxshrink.data import Batch
from onnxshrink.errors import UnsupportedModelError
from onnxshrink.roles import WeightUse
from onnxshrink.runtime import capture

STATISTICS = ("hessian", "norms", "means")
# Beyond this many features per group a layer's Hessian (F x F float64) is not formed.
HESSIAN_MAX_FEATURES = 4096
# Layer statistics use at most max(4096, this x features) rows per calibration
# batch: plenty for XᵀX, and Conv layers otherwise read every spatial position.
ROWS_PER_FEATURE = 16
# Unfolded activations of one chunk stay under this many bytes.
_CHUNK_BYTES = 64 << 20


@dataclasses.dataclass
class LayerLayout:
    """How one weight maps to ``groups`` matrices of ``rows x features``."""

    op_type: str
    shape: tuple[int, ...]
    groups: int
    rows: int  # output channels per group
    channels: int  # input channels per group
    kernel: tuple[int, ...]  # spatial kernel (Conv), () otherwise

    @property
    def features(self) -> int:
        return self.channels * int(np.prod(self.kernel, dtype=np.int64))


@dataclasses.dataclass
class LayerInputStats:
    """Running statistics of one weight's input, over ``samples`` rows.

    ``hessian`` is the mean ``XᵀX / samples`` per group ``[groups, F, F]``;
    ``feature_sq`` its diagonal sums ``[groups, F]`` (unnormalised, Wanda's
    squared norms per feature); ``channel_sq`` and ``channel_mean`` are per
    input channel of the layer's input tensor ``[groups * channels]``.
    ``feature_mean`` is the mean unfolded feature ``[groups, F]`` (padding
    zeros included), what a bias correction needs.
    """

    weight: str
    layout: LayerLayout
    samples: int = 0
    hessian: np.ndarray | None = None
    feature_sq: np.ndarray | None = None
    feature_mean: np.ndarray | None = None
    channel_sq: np.ndarray | None = None
    channel_mean: np.ndarray | None = None
    # running sums, normalised by finish()
    _hsum: np.ndarray | None = dataclasses.field(default=None, repr=False)
    _fsum: np.ndarray | None = dataclasses.field(default=None, repr=False)
    _csum: np.ndarray | None = dataclasses.field(default=None, repr=False)
    _ccount: int = dataclasses.field(default=0, repr=False)

    def add(self, rows: np.ndarray, channel_values: np.ndarray, want: Sequence[str], max_rows: int | None = None) -> None:
        """Accumulate unfolded ``rows`` [groups, n, F] and the raw input as
        ``channel_values`` [m, total input channels]. Beyond ``max_rows`` rows,
        a fixed random subset of that many rows is used (an unbiased estimate
        at a fraction of the cost: Conv layers read thousands of positions)."""
        if max_rows is not None and rows.shape[1] > max_rows:
            pick = np.sort(np.random.default_rng(rows.shape[1]).choice(rows.shape[1], max_rows, replace=False))
            rows = rows[:, pick]
        rows32 = rows.astype(np.float32, copy=False)
        g, _, f = rows.shape
        if self.feature_sq is None:
            self.feature_sq = np.zeros((g, f), np.float64)
            self._fsum = np.zeros((g, f), np.float64)
        if "hessian" in want and f <= HESSIAN_MAX_FEATURES:
            if self._hsum is None:
                self._hsum = np.zeros((g, f, f), np.float64)
            xtx = np.matmul(rows32.transpose(0, 2, 1), rows32)
            self._hsum += xtx
            self.feature_sq += np.einsum("gii->gi", xtx)
        else:
            self.feature_sq += np.square(rows32).sum(axis=1)
        self._fsum += rows32.sum(axis=1)
        self.samples += rows.shape[1]
        if "norms" in want or "means" in want:
            c = channel_values.astype(np.float32, copy=False)
            if self.channel_sq is None:
                self.channel_sq = np.zeros(c.shape[1], np.float64)
                self._csum = np.zeros(c.shape[1], np.float64)
            self.channel_sq += np.square(c).sum(axis=0)
            self._csum += c.sum(axis=0)
            self._ccount += c.shape[0]

    def merge(self, other: "LayerInputStats") -> "LayerInputStats":
        """Add the running sums of ``other`` (the same weight's input, seen on
        other batches) to these, before :meth:`finish`: statistics collected on
        parts of the calibration data, by separate workers, merge into those of
        the whole. Returns ``self``."""
        if self.feature_mean is not None or other.feature_mean is not None:
            raise ValueError(f"'{self.weight}': merge running sums before finish()")
        if other.feature_sq is None:  # saw no rows
            return self
        if self.feature_sq is None:
            self.feature_sq, self._fsum = np.zeros_like(other.feature_sq), np.zeros_like(other._fsum)
            self._hsum = None if other._hsum is None else np.zeros_like(other._hsum)
            if other.channel_sq is not None:
                self.channel_sq, self._csum = np.zeros_like(other.channel_sq), np.zeros_like(other._csum)
        if (self._hsum is None) != (other._hsum is None) or (self.channel_sq is None) != (other.channel_sq is None):
            raise ValueError(f"'{self.weight}': cannot merge statistics collected with different `want`")
        self.samples += other.samples
        self.feature_sq += other.feature_sq
        self._fsum += other._fsum
        if self._hsum is not None:
            self._hsum += other._hsum
        if self.channel_sq is not None:
            self.channel_sq += other.channel_sq
            self._csum += other._csum
            self._ccount += other._ccount
        return self

    def finish(self) -> "LayerInputStats":
        n = max(self.samples, 1)
        if self._hsum is not None:
            self.hessian = self._hsum / n
        if self._fsum is not None:
            self.feature_mean = self._fsum / n
        if self._csum is not None:
            self.channel_mean = self._csum / max(self._ccount, 1)
        self._hsum = self._fsum = self._csum = None
        return self


def _ints(node: onnx.NodeProto, name: str) -> list[int] | None:
    for a in node.attribute:
        if a.name == name:
            return list(a.ints) if a.ints else [int(a.i)]
    return None


def _str(node: onnx.NodeProto, name: str, default: str) -> str:
    for a in node.attribute:
        if a.name == name:
            return a.s.decode()
    return default


def layer_layout(use: WeightUse) -> LayerLayout | None:
    """The matrix view of ``use``'s weight, or None when statistics are not
    collected for it (ConvTranspose, recurrent ops, batched MatMul weights)."""
    shape = tuple(int(d) for d in use.weight.tensor.dims)
    op = use.op_type
    if op == "Conv":
        group = (_ints(use.node, "group") or [1])[0]
        return LayerLayout(op, shape, group, shape[0] // group, shape[1], shape[2:])
    if op in ("Gemm", "MatMul") and len(shape) == 2:
        return LayerLayout(op, shape, 1, shape[use.out_axis], shape[use.in_axis], ())
    return None


def weight_matrices(array: np.ndarray, layout: LayerLayout, use: WeightUse) -> np.ndarray:
    """``array`` (the weight tensor) as ``[groups, rows, features]``, features in
    the order of :class:`LayerInputStats` (kernel position major for Conv)."""
    if layout.op_type == "Conv":
        nd = len(layout.kernel)
        w = array.reshape((layout.groups, layout.rows, layout.channels) + layout.kernel)
        w = np.moveaxis(w, 2, 2 + nd)  # [g, rows, k..., c]
        return w.reshape(layout.groups, layout.rows, layout.features)
    w = array if use.out_axis == 0 else array.T
    return w.reshape(1, layout.rows, layout.features)


def from_matrices(matrices: np.ndarray, layout: LayerLayout, use: WeightUse) -> np.ndarray:
    """Inverse of :func:`weight_matrices`: back to the weight tensor's shape."""
    if layout.op_type == "Conv":
        nd = len(layout.kernel)
        w = matrices.reshape((layout.groups, layout.rows) + layout.kernel + (layout.channels,))
        w = np.moveaxis(w, 2 + nd, 2)
        return w.reshape(layout.shape)
    w = matrices.reshape(layout.rows, layout.features)
    return w if use.out_axis == 0 else w.T


def feature_channels(layout: LayerLayout) -> np.ndarray:
    """For each feature of a group, the input channel (within the group) it reads."""
    positions = int(np.prod(layout.kernel, dtype=np.int64)) if layout.kernel else 1
    return np.tile(np.arange(layout.channels), positions)


def _conv_geometry(node: onnx.NodeProto, x_shape: tuple[int, ...], kernel: tuple[int, ...]):
    nd = len(kernel)
    strides = _ints(node, "strides") or [1] * nd
    dilations = _ints(node, "dilations") or [1] * nd
    pads = _ints(node, "pads") or [0] * (2 * nd)
    auto_pad = _str(node, "auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * nd)
        for i in range(nd):
            size = x_shape[2 + i]
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1 - size)
            small, big = total // 2, total - total // 2
            pads[i], pads[i + nd] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    elif auto_pad == "VALID":
        pads = [0] * (2 * nd)
    return strides, dilations, pads


def unfold_conv(x: np.ndarray, node: onnx.NodeProto, layout: LayerLayout) -> np.ndarray:
    """im2col: the Conv input ``x`` [N, C, spatial...] as ``[groups, N*L, features]``
    (L output positions), features kernel position major, channel minor."""
    kernel = layout.kernel
    nd = len(kernel)
    strides, dilations, pads = _conv_geometry(node, x.shape, kernel)
    width = [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)]
    xp = np.pad(x, width) if any(pads) else x
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
    v = sliding_window_view(xp, span, axis=tuple(range(2, 2 + nd)))  # [N, C, O..., S...]
    v = v[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)
          + tuple(slice(None, None, d) for d in dilations)]
    n = x.shape[0]
    positions = int(np.prod(v.shape[2:2 + nd], dtype=np.int64))
    # [N, O..., g, K..., c]  ->  [g, N*L, K*c]
    v = v.reshape((n, layout.groups, layout.channels) + v.shape[2:])
    perm = (0,) + tuple(range(3, 3 + nd)) + (1,) + tuple(range(3 + nd, 3 + 2 * nd)) + (2,)
    v = v.transpose(perm).reshape(n * positions, layout.groups, layout.features)
    return v.transpose(1, 0, 2)


def layer_rows(x: np.ndarray, use: WeightUse, layout: LayerLayout) -> tuple[np.ndarray, np.ndarray]:
    """One batch of a layer's input as (rows [groups, n, F], per-channel values [m, C])."""
    if layout.op_type == "Conv":
        channel_values = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
        return unfold_conv(x, use.node, layout), channel_values
    if layout.op_type == "Gemm" and (_ints(use.node, "transA") or [0])[0]:
        x = x.T
    flat = x.reshape(-1, x.shape[-1])
    return flat[None], flat


def _data_input(use: WeightUse) -> str:
    # Conv, Gemm: the data is input 0; MatMul's weight is input 1 (roles.py), data input 0.
    return use.node.input[0]


def collect_layer_inputs(
    model: onnx.ModelProto,
    uses: Iterable[WeightUse],
    batches: Iterable[Batch],
    want: Sequence[str] = ("hessian", "norms"),
    *,
    progress: Callable[[str, int, int], None] | None = None,
    total_batches: int = 0,
    rows_per_feature: float | None = None,
    finish: bool = True,
    min_rows: int = 4096,
) -> dict[str, LayerInputStats]:
    """Run ``model`` over ``batches`` once and return, per weight name, the
    statistics of that weight's input (uses of a shared weight are summed).
    With ``finish=False`` they are left as running sums, to
    :meth:`~LayerInputStats.merge` with those of other batches first.

    Only main-graph Conv/Gemm/MatMul uses with a float input get statistics;
    others are left out of the result (callers fall back to magnitude).
    With ``rows_per_feature``, each batch contributes at most
    ``max(min_rows, rows_per_feature * F)`` rows per layer (sampled). ``model``
    is not modified.
    """
    unknown = set(want) - set(STATISTICS)
    if unknown:
        raise ValueError(f"unknown statistics {sorted(unknown)}; choose from {STATISTICS}")
    main_inputs = {vi.name for vi in model.graph.input}
    initializers = {t.name for t in model.graph.initializer}
    plan: list[tuple[WeightUse, LayerLayout, str]] = []
    layouts: dict[str, LayerLayout] = {}
    refused: set[str] = set()
    for use in uses:
        layout = layer_layout(use)
        if layout is None or use.weight.depth != 0 or use.weight.graph is not model.graph:
            refused.add(use.weight.name)
            continue
        if use.node not in model.graph.node:
            refused.add(use.weight.name)
            continue
        name = _data_input(use)
        if name in initializers:
            refused.add(use.weight.name)
            continue
        known = layouts.setdefault(use.weight.name, layout)
        if (known.op_type, known.groups, known.features) != (layout.op_type, layout.groups, layout.features):
            refused.add(use.weight.name)  # one tensor read as two different layer shapes
            continue
        plan.append((use, layout, name))
    plan = [p for p in plan if p[0].weight.name not in refused]
    stats = {use.weight.name: LayerInputStats(use.weight.name, layout) for use, layout, _ in plan}
    if not plan:
        return {}
    captured = [n for n in dict.fromkeys(name for _, _, name in plan) if n not in main_inputs]
    done = 0
    for batch, values in capture(model, captured, batches):
        for use, layout, name in plan:
            x = batch.inputs[name] if name in main_inputs else values[name]
            if x.dtype.kind != "f":
                raise UnsupportedModelError(f"layer input '{name}' of weight '{use.weight.name}' is {x.dtype}, not float")
            cap = None if rows_per_feature is None else max(min_rows, int(np.ceil(rows_per_feature * layout.features)))
            _accumulate(stats[use.weight.name], x, use, layout, want, cap)
        done += 1
        if progress is not None:
            progress("collecting layer inputs", done, total_batches)
    return {k: s.finish() if finish else s for k, s in stats.items()}


def _accumulate(stats: LayerInputStats, x: np.ndarray, use: WeightUse, layout: LayerLayout, want: Sequence[str],
                max_rows: int | None) -> None:
    """Add one batch, in sample chunks so the unfolded rows stay small."""
    n = x.shape[0] if x.ndim else 1
    per_sample = max(1, x[:1].size * max(1, int(np.prod(layout.kernel or (1,)))) * 4)
    step = max(1, _CHUNK_BYTES // per_sample)
    if layout.op_type != "Conv" or n <= step:
        stats.add(*layer_rows(x, use, layout), want, max_rows)
        return
    chunks = -(-n // step)
    for start in range(0, n, step):
        stats.add(*layer_rows(x[start:start + step], use, layout), want,
                  None if max_rows is None else -(-max_rows // chunks))
