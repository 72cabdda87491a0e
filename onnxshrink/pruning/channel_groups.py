"""Which output channels can be removed from a graph, and what else must change with them.

Every Conv/Gemm/MatMul with a constant weight *produces* a space of output
channels. The analysis follows each produced value forward through ops that
keep channels apart (elementwise ops, BatchNormalization, pooling, Transpose,
Flatten, reductions over other axes, depthwise Conv) until it reaches layers
that *consume* it as their input channels. Elementwise ops joining two
produced values (a residual Add) couple their spaces: the channels of a
coupled group are removed together. Concat joins spaces side by side.
A value that reaches anything else (a graph output, Softmax, LayerNorm,
Split, a subgraph, a Reshape we cannot follow) blocks its group: those
channels stay.

The result lists, per group, the producers to cut along their output axis
and every constant to slice with them; :mod:`channels` does the surgery.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import numpy_helper

from onnxshrink.model import iter_graphs

# Ops that apply to each element on its own: output = f(input 0 [, constant scalars]).
UNARY = {
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "Gelu", "Elu", "Selu", "Celu", "Softplus", "Softsign",
    "HardSigmoid", "HardSwish", "Mish", "Identity", "Dropout", "Cast", "Abs", "Neg", "Sqrt", "Exp", "Log",
    "Erf", "Reciprocal", "Floor", "Ceil", "Round", "Sin", "Cos", "ThresholdedRelu", "Sign",
}
# Broadcasting elementwise ops over several inputs: tracked inputs are coupled.
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where"}
# Ops working on each channel (axis 1, NCHW) separately, spatially.
PER_CHANNEL = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"}
# Per-channel affine normalisations: input -> parameter inputs sliced along axis 0.
NORMALIZATION = {"BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2)}
REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}


@dataclasses.dataclass
class Track:
    """How a value carries channel spaces: along ``axis`` (of ``rank``), the
    spaces ``segments`` side by side, each channel ``block`` entries wide."""

    axis: int
    rank: int
    segments: list[tuple[int, int]]  # (space id, channels)
    block: int = 1

    @property
    def channels(self) -> int:
        return sum(n for _, n in self.segments)

    @property
    def width(self) -> int:
        return self.channels * self.block


@dataclasses.dataclass
class Slice:
    """A constant input of a node to cut along ``axis`` as ``track`` is cut.
    ``kind`` is "out" (a producer's weight or bias), "in" (a consumer's
    weight), "param" (normalisation, elementwise operand, depthwise weight)."""

    node: onnx.NodeProto
    input_index: int
    axis: int
    track: Track
    kind: str


@dataclasses.dataclass
class ChannelAnalysis:
    """Spaces, their coupling and what to cut. ``space_size[s]`` channels in
    space ``s``; ``producers[s]``: (node, weight input index, out axis)."""

    space_size: list[int]
    parent: list[int]
    blocked: set[int]
    blocked_why: dict[int, str]
    producers: dict[int, list[tuple[onnx.NodeProto, int, int]]]
    slices: list[Slice]
    terminals: list[tuple[onnx.NodeProto, Track]]  # layers reading tracked input channels
    depthwise: list[tuple[onnx.NodeProto, Track]]
    reshapes: list[tuple[onnx.NodeProto, Track, int]]  # Reshape nodes whose shape holds the width at an index

    def root(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def groups(self) -> dict[int, list[int]]:
        """Coupled groups that may be pruned: root -> member spaces."""
        out: dict[int, list[int]] = {}
        for s in range(len(self.space_size)):
            out.setdefault(self.root(s), []).append(s)
        return {r: m for r, m in out.items() if r not in self.blocked}

    def why_blocked(self) -> dict[int, str]:
        return {r: self.blocked_why.get(r, "") for r in self.blocked}


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


class _Analyzer:
    def __init__(self, model: onnx.ModelProto, shapes: dict[str, list[int | None]], frozen: set[str]):
        self.graph = model.graph
        self.shapes = shapes
        self.frozen = frozen  # weights whose output channels must stay (excluded)
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        for node in self.graph.node:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value":
                        self.consts[node.output[0]] = numpy_helper.to_array(a.t)
        self.a = ChannelAnalysis([], [], set(), {}, {}, [], [], [], [])
        self.tracks: dict[str, Track] = {}
        self.weight_space: dict[str, int] = {}

    # -- spaces -------------------------------------------------------------------------
    def new_space(self, size: int) -> int:
        self.a.space_size.append(size)
        self.a.parent.append(len(self.a.parent))
        return len(self.a.space_size) - 1

    def union(self, x: int, y: int) -> None:
        rx, ry = self.a.root(x), self.a.root(y)
        if rx == ry:
            return
        self.a.parent[ry] = rx
        if ry in self.a.blocked:
            self.a.blocked.add(rx)
            self.a.blocked_why.setdefault(rx, self.a.blocked_why.get(ry, ""))

    def block(self, track: Track | None, why: str) -> None:
        if track is None:
            return
        for s, _ in track.segments:
            r = self.a.root(s)
            if r not in self.a.blocked:
                self.a.blocked.add(r)
                self.a.blocked_why[r] = why

    def couple(self, tracks: list[Track], why: str) -> bool:
        """Union the spaces of tracks that must keep the same channels; block when they do not line up."""
        first = tracks[0]
        for t in tracks[1:]:
            same = (t.block == first.block and [n for _, n in t.segments] == [n for _, n in first.segments]
                    and t.rank - t.axis == first.rank - first.axis)
            if not same:
                for u in tracks:
                    self.block(u, why)
                return False
            for (s1, _), (s2, _) in zip(first.segments, t.segments):
                self.union(s1, s2)
        return True

    # -- helpers --------------------------------------------------------------------------
    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return len(shape) if shape is not None else None

    def is_const(self, name: str) -> bool:
        return name in self.consts

    def weight_out_axis(self, node: onnx.NodeProto) -> int | None:
        """Output-channel axis of the weight if ``node`` is a layer producing channels."""
        op = node.op_type
        if len(node.input) < 2 or not self.is_const(node.input[1]):
            return None
        w = self.consts[node.input[1]]
        if op == "Conv" and w.ndim >= 3 and (_attr(node, "group", 1) == 1):
            return 0
        if op == "Gemm" and w.ndim == 2 and not _attr(node, "transA", 0):
            return 0 if _attr(node, "transB", 0) else 1
        if op == "MatMul" and w.ndim == 2:
            return 1
        return None

    def is_depthwise(self, node: onnx.NodeProto) -> bool:
        if node.op_type != "Conv" or len(node.input) < 2 or not self.is_const(node.input[1]):
            return False
        w = self.consts[node.input[1]]
        g = _attr(node, "group", 1)
        return g > 1 and w.shape[0] == g and w.shape[1] == 1

    # -- the walk -------------------------------------------------------------------------
    def run(self) -> ChannelAnalysis:
        outer = _names_read_in_subgraphs(self.graph)
        graph_outputs = {o.name for o in self.graph.output}
        for node in self.graph.node:
            tracked = [(i, self.tracks[n]) for i, n in enumerate(node.input) if n in self.tracks]
            if tracked:
                self.consume(node, tracked)
            axis = self.weight_out_axis(node)
            if axis is not None:
                self.produce(node, axis)
        for name, track in self.tracks.items():
            if name in graph_outputs:
                self.block(track, f"reaches graph output '{name}'")
            if name in outer:
                self.block(track, f"'{name}' is read inside a subgraph")
        return self.a

    def produce(self, node: onnx.NodeProto, axis: int) -> None:
        w = self.consts[node.input[1]]
        wname = node.input[1]
        space = self.weight_space.get(wname)
        if space is None:
            space = self.weight_space[wname] = self.new_space(int(w.shape[axis]))
        rank = self.rank(node.output[0])
        if rank is None:
            rank = 4 if node.op_type == "Conv" and w.ndim == 4 else (w.ndim if node.op_type == "Conv" else 2)
        track = Track(1 if node.op_type == "Conv" else rank - 1, rank, [(space, int(w.shape[axis]))])
        self.a.producers.setdefault(space, []).append((node, 1, axis))
        if len(node.input) > 2 and node.input[2]:
            bias = node.input[2]
            if not self.is_const(bias):
                self.block(track, f"bias of '{node.name}' is computed")
            elif self.consts[bias].ndim >= 1 and self.consts[bias].shape[-1] == w.shape[axis]:
                self.a.slices.append(Slice(node, 2, self.consts[bias].ndim - 1, track, "out"))
            elif self.consts[bias].size != 1:
                self.block(track, f"bias of '{node.name}' does not broadcast per channel")
        if wname in self.frozen:
            self.block(track, "excluded")
        self.tracks[node.output[0]] = track

    def consume(self, node: onnx.NodeProto, tracked: list[tuple[int, Track]]) -> None:
        op = node.op_type
        first_index, t = tracked[0]
        out = node.output[0] if node.output else None
        if node.domain not in ("", "ai.onnx"):
            return self.block_all(tracked, f"custom op '{op}'")
        # A layer reading the channels as its input channels: it ends the walk.
        if op in ("Conv", "Gemm", "MatMul") and first_index == 0 and len(tracked) == 1 and not self.is_depthwise(node):
            in_axis = self.consumer_in_axis(node)
            if in_axis is None:
                return self.block_all(tracked, f"'{node.name or op}' reads the channels on an axis it mixes")
            want_axis = 1 if op == "Conv" else t.rank - 1
            if t.axis != want_axis or (op == "Conv" and t.block != 1):
                return self.block_all(tracked, f"'{node.name or op}' reads the channels on another axis")
            self.a.terminals.append((node, t))
            self.a.slices.append(Slice(node, 1, in_axis, t, "in"))
            return
        if op == "Conv" and self.is_depthwise(node) and first_index == 0 and len(tracked) == 1:
            if t.axis != 1 or t.block != 1:
                return self.block_all(tracked, "depthwise Conv reads the channels on another axis")
            self.a.depthwise.append((node, t))
            self.a.slices.append(Slice(node, 1, 0, t, "param"))
            if len(node.input) > 2 and node.input[2]:
                self.a.slices.append(Slice(node, 2, 0, t, "param"))
            self.tracks[out] = t
            return
        if op in UNARY and first_index == 0 and len(tracked) == 1:
            if op == "Dropout" and len(node.output) > 1 and node.output[1]:
                return self.block_all(tracked, "Dropout mask output is used")
            self.tracks[out] = t
            return
        if op in NORMALIZATION and first_index == 0 and len(tracked) == 1:
            if t.axis != 1 or t.block != 1 or len([o for o in node.output if o]) > 1:
                return self.block_all(tracked, f"{op} on another axis or in training form")
            for i in NORMALIZATION[op]:
                if i < len(node.input) and node.input[i]:
                    if not self.is_const(node.input[i]):
                        return self.block_all(tracked, f"{op} parameter is computed")
                    self.a.slices.append(Slice(node, i, 0, t, "param"))
            self.tracks[out] = t
            return
        if op in PER_CHANNEL and len(tracked) == 1 and len([o for o in node.output if o]) == 1:
            if t.axis != 1 or t.block != 1:
                return self.block_all(tracked, f"{op} on another axis")
            self.tracks[out] = t
            return
        if op in ELEMENTWISE:
            return self.elementwise(node, tracked)
        if op == "Transpose" and len(tracked) == 1:
            perm = _attr(node, "perm") or list(range(t.rank))[::-1]
            self.tracks[out] = Track(list(perm).index(t.axis), t.rank, t.segments, t.block)
            return
        if op in REDUCE and first_index == 0 and len(tracked) == 1:
            return self.reduce(node, t)
        if op == "Flatten" and len(tracked) == 1:
            axis = _attr(node, "axis", 1)
            axis = axis + t.rank if axis < 0 else axis
            return self.flatten_like(node, t, axis, reshape_index=None)
        if op == "Reshape" and first_index == 0 and len(tracked) == 1:
            return self.reshape(node, t)
        if op == "Concat":
            return self.concat(node, tracked)
        if op == "Pad" and first_index == 0 and len(tracked) == 1:
            pads = self.consts.get(node.input[1]) if len(node.input) > 1 else _attr(node, "pads")
            if pads is None or len(node.input) > 3 and node.input[3]:
                return self.block_all(tracked, "Pad with computed pads or axes")
            pads = np.asarray(pads).reshape(-1)
            if pads.size != 2 * t.rank or pads[t.axis] or pads[t.axis + t.rank]:
                return self.block_all(tracked, "Pad pads the channel axis")
            self.tracks[out] = t
            return
        if op in ("Resize", "Upsample") and first_index == 0 and len(tracked) == 1:
            sizes = node.input[3] if len(node.input) > 3 else ""
            scales_name = node.input[2] if op == "Resize" and len(node.input) > 2 else (node.input[1] if op == "Upsample" else "")
            scales = self.consts.get(scales_name) if scales_name else None
            if sizes or scales is None or scales.size != t.rank or scales.reshape(-1)[t.axis] != 1:
                return self.block_all(tracked, f"{op} with sizes or scales on the channel axis")
            self.tracks[out] = t
            return
        self.block_all(tracked, f"reaches {op} node '{node.name}'")

    def block_all(self, tracked: list[tuple[int, Track]], why: str) -> None:
        for _, t in tracked:
            self.block(t, why)

    def consumer_in_axis(self, node: onnx.NodeProto) -> int | None:
        if len(node.input) < 2 or not self.is_const(node.input[1]):
            return None
        w = self.consts[node.input[1]]
        if node.op_type == "Conv":
            return 1 if _attr(node, "group", 1) == 1 else None
        if node.op_type == "Gemm":
            return None if _attr(node, "transA", 0) else (1 if _attr(node, "transB", 0) else 0)
        return 0 if w.ndim == 2 else None

    def elementwise(self, node: onnx.NodeProto, tracked: list[tuple[int, Track]]) -> None:
        tracks = [t for _, t in tracked]
        if not self.couple(tracks, f"{node.op_type} '{node.name}' joins values whose channels do not line up"):
            return
        t = tracks[0]
        out_rank = self.rank(node.output[0]) or max([t.rank] + [self.rank(n) or 0 for n in node.input if n])
        offset = t.rank - t.axis  # position from the end
        idx = {i for i, _ in tracked}
        for i, name in enumerate(node.input):
            if not name or i in idx:
                continue
            if node.op_type == "Where" and i == 0 and self.is_const(name):
                c = self.consts[name]
            else:
                c = self.consts.get(name)
            if c is not None:
                pos = c.ndim - offset
                if pos < 0 or c.shape[pos] == 1:
                    continue
                if c.shape[pos] == t.width:
                    self.a.slices.append(Slice(node, i, pos, t, "param"))
                    continue
                return self.block_all(tracked, f"operand '{name}' of '{node.name}' does not broadcast per channel")
            shape = self.shapes.get(name)
            if shape is None:
                return self.block_all(tracked, f"operand '{name}' of '{node.name}' has an unknown shape")
            pos = len(shape) - offset
            if pos >= 0 and shape[pos] != 1:
                return self.block_all(tracked, f"operand '{name}' of '{node.name}' is not per channel")
        self.tracks[node.output[0]] = Track(out_rank - offset, out_rank, t.segments, t.block)

    def reduce(self, node: onnx.NodeProto, t: Track) -> None:
        axes = _attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            c = self.consts.get(node.input[1])
            if c is None:
                return self.block(t, "reduction axes are computed")
            axes = c.reshape(-1).tolist()
        if not axes:
            return self.block(t, f"{node.op_type} over all axes")
        axes = [a + t.rank if a < 0 else a for a in axes]
        if t.axis in axes:
            return self.block(t, f"{node.op_type} over the channel axis")
        if _attr(node, "keepdims", 1):
            self.tracks[node.output[0]] = t
        else:
            below = sum(a < t.axis for a in axes)
            self.tracks[node.output[0]] = Track(t.axis - below, t.rank - len(axes), t.segments, t.block)

    def flatten_like(self, node: onnx.NodeProto, t: Track, axis: int, reshape_index: int | None) -> None:
        shape = self.shapes.get(node.input[0])
        if axis != t.axis or shape is None or any(d is None for d in shape[t.axis + 1:]):
            return self.block(t, f"{node.op_type} '{node.name}' merges the channel axis with others")
        inner = int(np.prod(shape[t.axis + 1:], dtype=np.int64))
        track = Track(t.axis, t.axis + 1, t.segments, t.block * inner)
        if reshape_index is not None:
            self.a.reshapes.append((node, track, reshape_index))
        self.tracks[node.output[0]] = track

    def reshape(self, node: onnx.NodeProto, t: Track) -> None:
        target = self.consts.get(node.input[1]) if len(node.input) > 1 else None
        if target is None:
            return self.block(t, f"Reshape '{node.name}' has a computed shape")
        target = target.reshape(-1).tolist()
        shape = self.shapes.get(node.input[0]) or []
        inner = shape[t.axis + 1:]
        if len(target) != t.axis + 1 or any(d is None for d in inner):
            return self.block(t, f"Reshape '{node.name}' is not a flatten of the channel axis")
        width = t.width * int(np.prod(inner, dtype=np.int64)) // t.block if t.block == 1 else None
        if width is None:
            return self.block(t, f"Reshape '{node.name}' of an already flattened value")
        lead = target[:t.axis]
        if any(d not in (0, -1) and (i >= len(shape) or d != shape[i]) for i, d in enumerate(lead)):
            return self.block(t, f"Reshape '{node.name}' changes the leading axes")
        if target[t.axis] == -1:
            return self.flatten_like(node, t, t.axis, None)
        if target[t.axis] == width and -1 not in lead[1:]:
            return self.flatten_like(node, t, t.axis, t.axis)
        self.block(t, f"Reshape '{node.name}' is not a flatten of the channel axis")

    def concat(self, node: onnx.NodeProto, tracked: list[tuple[int, Track]]) -> None:
        t = tracked[0][1]
        rank = t.rank
        axis = _attr(node, "axis", 1)
        axis = axis + rank if axis < 0 else axis
        if axis != t.axis:
            return self.elementwise_concat(node, tracked)
        if any(u.axis != t.axis or u.block != t.block or u.rank != rank for _, u in tracked):
            return self.block_all(tracked, f"Concat '{node.name}' joins differently laid out channels")
        by_index = dict(tracked)
        segments = []
        for i, name in enumerate(node.input):
            if i in by_index:
                segments += by_index[i].segments
                continue
            shape = self.shapes.get(name)
            if shape is None or shape[axis] is None or shape[axis] % t.block:
                return self.block_all(tracked, f"Concat '{node.name}' input '{name}' has an unknown width")
            fixed = self.new_space(shape[axis] // t.block)
            self.a.blocked.add(fixed)
            self.a.blocked_why[fixed] = "a Concat input that no layer produces"
            segments.append((fixed, shape[axis] // t.block))
        self.tracks[node.output[0]] = Track(axis, rank, segments, t.block)

    def elementwise_concat(self, node: onnx.NodeProto, tracked: list[tuple[int, Track]]) -> None:
        if len(tracked) != len([n for n in node.input if n]):
            return self.block_all(tracked, f"Concat '{node.name}' on another axis with untracked inputs")
        if self.couple([u for _, u in tracked], f"Concat '{node.name}' joins mismatched channels"):
            self.tracks[node.output[0]] = tracked[0][1]


def _names_read_in_subgraphs(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                for g, _ in iter_graphs(sub):
                    for n in g.node:
                        names.update(i for i in n.input if i)
    return names


def analyze_channels(model: onnx.ModelProto, shapes: dict[str, list[int | None]], frozen: set[str] = frozenset()) -> ChannelAnalysis:
    """Find the coupled channel groups of ``model``'s main graph (not modified)."""
    return _Analyzer(model, shapes, set(frozen)).run()


def expand(track: Track, keep: dict[int, np.ndarray]) -> np.ndarray:
    """Indices along ``track``'s axis that survive when each space ``s`` keeps
    the channels ``keep[s]`` (spaces not in ``keep`` keep all)."""
    parts, offset = [], 0
    for s, n in track.segments:
        kept = keep.get(s, np.arange(n))
        channels = offset + np.asarray(kept, dtype=np.int64)
        parts.append((channels[:, None] * track.block + np.arange(track.block)[None, :]).reshape(-1))
        offset += n
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)
