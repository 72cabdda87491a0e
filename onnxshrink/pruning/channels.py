"""Structured pruning: remove whole channels from the graph, so it runs faster.

Channels are ranked by how much the layers that read them use them: for each
consumer layer, ``sum_rows W[:, c]² * E[x_c²]`` (the energy channel ``c``
contributes to that layer's output; ``E[x²]`` from calibration data, or 1
without it), summed over every consumer of a coupled group. Each group keeps
its most important ``1 - fraction`` of channels.

With the ``hessian`` method and calibration data, every consumer layer is
then refitted by least squares to reproduce its dense output from the kept
input channels (``W' = W H[:, K] H[K, K]⁻¹`` with the bias as one more
feature, so removed channels' means fold into the bias). With ``wanda`` the
removed channels' mean contribution is folded into the bias.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, Callable

import numpy as np
import onnx
from onnx import numpy_helper

from onnxshrink.data import Batch
from onnxshrink.pruning.channel_groups import ChannelAnalysis, Track, expand
from onnxshrink.pruning.channel_rules import analyze_channels
from onnxshrink.pruning.options import PruneOptions
from onnxshrink.pruning.report import inferred_shapes
from onnxshrink.roles import WeightUse, weight_uses
from onnxshrink.stats.blas import single_threaded
from onnxshrink.stats.layer_inputs import (
    ROWS_PER_FEATURE,
    LayerInputStats,
    collect_layer_inputs,
    feature_channels,
    layer_layout,
    weight_matrices,
    from_matrices,
)
from onnxshrink.stats.obs import cholesky_lower, lower_inverse


@dataclasses.dataclass
class TensorResize:
    """A tensor cut by channel pruning: its shape before and after."""

    name: str
    op_type: str
    shape_before: list[int]
    shape_after: list[int]

    @property
    def params(self) -> int:
        return int(np.prod(self.shape_before, dtype=np.int64))

    @property
    def zeros_after(self) -> int:  # elements removed, so report sparsity reads as the fraction removed
        return self.params - int(np.prod(self.shape_after, dtype=np.int64))

    def to_dict(self) -> dict:
        return {"name": self.name, "op_type": self.op_type, "shape_before": self.shape_before,
                "shape_after": self.shape_after, "removed_fraction": round(self.zeros_after / max(self.params, 1), 6)}


class _Tensors:
    """Constant tensors of the main graph by name, with per-node copies when
    a shared constant must be cut differently for different readers."""

    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.by_name = {t.name: t for t in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value":
                        self.by_name[node.output[0]] = a.t
        self.readers: dict[str, int] = {}
        for node in model.graph.node:
            for name in node.input:
                self.readers[name] = self.readers.get(name, 0) + 1
        self.cut: dict[tuple[str, int], tuple] = {}  # (name, axis) -> kept indices already applied
        self.original_shapes: dict[str, list[int]] = {n: list(t.dims) for n, t in self.by_name.items()}
        self.fresh = 0

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.by_name[name])

    def replace(self, node: onnx.NodeProto, index: int, array: np.ndarray) -> str:
        """Give input ``index`` of ``node`` the data ``array``: in place when only
        this node reads the tensor, else as a new initializer for this node."""
        name = node.input[index]
        if self.readers.get(name, 0) > 1:
            self.fresh += 1
            new = f"{name}__pruned{self.fresh}"
            self.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), new))
            self.by_name[new] = self.graph.initializer[-1]
            self.original_shapes[new] = self.original_shapes.get(name, list(array.shape))
            self.readers[name] -= 1
            self.readers[new] = 1
            node.input[index] = new
            return new
        self.by_name[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def take(self, node: onnx.NodeProto, index: int, axis: int, kept: np.ndarray) -> None:
        name = node.input[index]
        key = (name, axis)
        signature = tuple(kept.tolist())
        if self.cut.get(key) == signature:
            return  # a shared tensor cut the same way for another reader
        array = self.array(name)
        if self.cut.get(key) is not None:  # cut differently already: impossible to share
            raise RuntimeError(f"tensor '{name}' is cut two different ways")
        new = self.replace(node, index, np.take(array, kept, axis=axis))
        self.cut[(new, axis)] = signature


def _importance(analysis: ChannelAnalysis, tensors: _Tensors, uses: dict[int, WeightUse],
                stats: dict[str, LayerInputStats]) -> dict[int, np.ndarray]:
    """Per coupled group (root space), one score per channel, summed over consumers."""
    scores = {r: np.zeros(analysis.space_size[r]) for r in analysis.groups()}
    for node, track in analysis.terminals:
        use = uses.get(id(node))
        w = tensors.array(node.input[1]).astype(np.float64)
        layout = layer_layout(use) if use is not None else None
        s = stats.get(node.input[1])
        if layout is not None:
            m = weight_matrices(w, layout, use)[0]  # [rows, F]
            per_feature = np.square(m).sum(axis=0)
            if s is not None and s.feature_sq is not None:
                per_feature = per_feature * s.feature_sq[0] / max(s.samples, 1)
            per_input = np.bincount(feature_channels(layout), weights=per_feature, minlength=layout.channels)
        else:
            axis = use.in_axis if use is not None else 1
            per_input = np.square(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).sum(axis=1)
        offset = 0
        for space, n in track.segments:
            root = analysis.root(space)
            part = per_input[offset * track.block:(offset + n) * track.block].reshape(n, track.block).sum(axis=1)
            if root in scores:
                scores[root] += part
            offset += n
    return scores


def _kept(scores: np.ndarray, fraction: float, multiple: int) -> np.ndarray:
    count = len(scores)
    keep = max(1, int(round(count * (1.0 - fraction))))
    keep = min(count, -(-keep // multiple) * multiple)
    return np.sort(np.argsort(-scores, kind="stable")[:keep])


def _spd_inverse(a: np.ndarray) -> np.ndarray:
    lower_inv = lower_inverse(cholesky_lower(a[None]))[0]
    return lower_inv.T @ lower_inv


@single_threaded()
def _refit(w: np.ndarray, bias: np.ndarray | None, kept_features: np.ndarray, s: LayerInputStats, damp: float,
           least_squares: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """New [rows, kept features] weights (and bias) for a layer whose other
    input features are removed: least squares on the calibration Hessian, or
    the removed features' mean contribution folded into the bias."""
    removed = np.setdiff1d(np.arange(w.shape[1]), kept_features)
    mean = s.feature_mean[0]
    if not least_squares or s.hessian is None:
        if bias is None:
            return w[:, kept_features], None
        return w[:, kept_features], bias + w[:, removed] @ mean[removed]
    h = s.hessian[0]
    f = h.shape[0]
    if bias is not None:  # the bias is one more input feature, constantly 1
        aug = np.zeros((f + 1, f + 1))
        aug[:f, :f], aug[:f, f], aug[f, :f], aug[f, f] = h, mean, mean, 1.0
        h, w = aug, np.concatenate([w, bias[:, None]], axis=1)
        kept_features = np.append(kept_features, f)
    hk = h[np.ix_(kept_features, kept_features)]
    lam = damp * max(float(np.mean(np.diag(hk))), 1e-12)
    # Ridge towards the original weights (not towards zero): where the removed
    # inputs carry nothing, the kept weights come back unchanged.
    solved = (w @ h[:, kept_features] + lam * w[:, kept_features]) @ _spd_inverse(hk + lam * np.eye(len(kept_features)))
    if bias is not None:
        return solved[:, :-1], solved[:, -1]
    return solved, None


def channel_statistics(model: onnx.ModelProto, method: str, batches: list[Batch] | None,
                       progress: Callable[[str, int, int], None] | None = None) -> dict[str, LayerInputStats]:
    """Input statistics of every layer of ``model`` that may lose input channels
    (keyed by weight name); empty for ``magnitude`` or without data."""
    if batches is None or method == "magnitude":
        return {}
    analysis = analyze_channels(model, inferred_shapes(model))
    uses = {id(u.node): u for u in weight_uses(model) if u.input_index == 1}
    consumer_uses = [uses[id(n)] for n, _ in analysis.terminals if id(n) in uses]
    want = ("hessian", "norms", "means") if method == "hessian" else ("norms", "means")
    return collect_layer_inputs(model, consumer_uses, batches, want, progress=progress, total_batches=len(batches),
                                rows_per_feature=ROWS_PER_FEATURE)


def prune_channels(
    model: onnx.ModelProto,
    options: PruneOptions,
    fraction: float,
    method: str,
    batches: list[Batch] | None,
    progress: Callable[[str, int, int], None] | None = None,
    *,
    stats: dict[str, LayerInputStats] | None = None,
) -> tuple[onnx.ModelProto, list[TensorResize], list[dict[str, Any]]]:
    """Remove ``fraction`` of the channels of every prunable group of
    ``model`` (changed in place and returned), with the tensors cut and one
    summary per group. ``stats`` may carry precomputed consumer statistics."""
    if stats is None:
        stats = channel_statistics(model, method, batches, progress)
    shapes = inferred_shapes(model)
    frozen = {u.weight.name for u in weight_uses(model)
              if any(fnmatch.fnmatchcase(n, p) for p in options.exclude for n in (u.weight.name, u.node.name) if n)}
    analysis = analyze_channels(model, shapes, frozen)
    groups = analysis.groups()
    tensors = _Tensors(model)
    uses = {id(u.node): u for u in weight_uses(model) if u.input_index == 1}
    scores = _importance(analysis, tensors, uses, stats)
    keep: dict[int, np.ndarray] = {}
    summaries = []
    for root, members in groups.items():
        kept = _kept(scores[root], fraction, options.channel_multiple)
        for s in members:
            keep[s] = kept
        producers = [n.name or n.output[0] for s in members for n, _, _ in analysis.producers.get(s, [])]
        summaries.append({"producers": producers, "channels_before": analysis.space_size[root],
                          "channels_after": int(len(kept))})
    blocked = analysis.why_blocked()
    for root, why in blocked.items():
        producers = [n.name or n.output[0] for s in range(len(analysis.space_size)) if analysis.root(s) == root
                     for n, _, _ in analysis.producers.get(s, [])]
        if producers:
            summaries.append({"producers": producers, "channels_before": analysis.space_size[root],
                              "channels_after": analysis.space_size[root], "kept_because": why})
    before = {n: list(t.dims) for n, t in tensors.by_name.items()}
    op_of = {}
    # Consumers first, while their weights are still dense: refit them to the kept inputs.
    refits: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    shared = {n.input[1] for n, _ in analysis.terminals if tensors.readers.get(n.input[1], 0) > 1}
    for node, track in analysis.terminals:
        kept_inputs = expand(track, keep)
        if len(kept_inputs) == track.width:
            continue
        use = uses.get(id(node))
        s = stats.get(node.input[1])
        layout = layer_layout(use) if use is not None else None
        if s is None or layout is None or layout.groups != 1 or node.input[1] in shared or s.feature_mean is None:
            continue
        w = weight_matrices(tensors.array(node.input[1]).astype(np.float64), layout, use)[0]
        has_bias = len(node.input) > 2 and node.input[2] in tensors.by_name
        bias = tensors.array(node.input[2]).astype(np.float64).reshape(-1) if has_bias else None
        if bias is not None and bias.size != w.shape[0]:
            bias = None
        if bias is None and node.op_type in ("Conv", "Gemm") and not (len(node.input) > 2 and node.input[2]):
            bias = np.zeros(w.shape[0])  # a bias to fold removed channels' means into
        kept_features = np.nonzero(np.isin(feature_channels(layout), kept_inputs))[0]
        refits[id(node)] = _refit(w, bias, kept_features, s, options.damp,
                                  least_squares=method == "hessian" and options.reconstruct)
    # Consumers' weights along their input axis (refitted ones replaced whole), then
    # producers along their output axis, then every other per-channel constant.
    added_bias = set()
    for sl in analysis.slices:
        if sl.kind != "in":
            continue
        kept = expand(sl.track, keep)
        if len(kept) == sl.track.width:
            continue
        op_of.setdefault(sl.node.input[sl.input_index], sl.node.op_type)
        refit = refits.get(id(sl.node))
        if refit is None:
            tensors.take(sl.node, sl.input_index, sl.axis, kept)
            continue
        use = uses[id(sl.node)]
        layout = layer_layout(use)
        small = dataclasses.replace(layout, channels=len(kept), shape=_cut_shape(layout.shape, use.in_axis, len(kept)))
        new_w = from_matrices(refit[0][None], small, use).astype(tensors.array(sl.node.input[1]).dtype)
        tensors.replace(sl.node, 1, new_w)
        tensors.cut[(sl.node.input[1], sl.axis)] = tuple(kept.tolist())
        if refit[1] is not None and _set_bias(sl.node, tensors, refit[1], new_w.dtype):
            added_bias.add(id(sl.node))
    for space, entries in analysis.producers.items():
        if space not in keep:
            continue
        for node, index, axis in entries:
            op_of.setdefault(node.input[index], node.op_type)
            tensors.take(node, index, axis, keep[space])
            if id(node) in added_bias:
                tensors.take(node, 2, 0, keep[space])
    for sl in analysis.slices:
        kept = expand(sl.track, keep)
        if sl.kind == "in" or len(kept) == sl.track.width:
            continue
        op_of.setdefault(sl.node.input[sl.input_index], sl.node.op_type)
        tensors.take(sl.node, sl.input_index, sl.axis, kept)
    for node, track in analysis.depthwise:
        count = len(expand(track, keep))
        for a in node.attribute:
            if a.name == "group":
                a.i = count
    for node, track, index in analysis.reshapes:
        shape = tensors.array(node.input[1]).copy()
        shape[index] = len(expand(track, keep))
        tensors.replace(node, 1, shape)
    del model.graph.value_info[:]
    records = []
    for name, t in tensors.by_name.items():
        old = tensors.original_shapes.get(name, before.get(name))
        if old is not None and list(t.dims) != old:
            records.append(TensorResize(name, op_of.get(name, ""), old, list(t.dims)))
    return model, records, summaries


def _cut_shape(shape: tuple[int, ...], axis: int, size: int) -> tuple[int, ...]:
    return tuple(size if i == axis else d for i, d in enumerate(shape))


def _set_bias(node: onnx.NodeProto, tensors: _Tensors, bias: np.ndarray, dtype: np.dtype) -> bool:
    """Write the refitted bias; True when the node had none and got a new one."""
    if len(node.input) > 2 and node.input[2]:
        old = tensors.array(node.input[2])
        tensors.replace(node, 2, bias.reshape(old.shape).astype(old.dtype))
        return False
    name = f"{node.output[0]}__bias"
    tensors.graph.initializer.append(numpy_helper.from_array(bias.astype(dtype), name))
    tensors.by_name[name] = tensors.graph.initializer[-1]
    while len(node.input) < 2:
        node.input.append("")
    node.input.append(name)
    tensors.readers[name] = 1
    tensors.original_shapes[name] = [int(bias.size)]
    return True
