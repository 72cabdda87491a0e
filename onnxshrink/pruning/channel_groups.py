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
The walk is here; what each op does to channels is a table of rules in
:mod:`channel_rules`, which also holds the entry point ``analyze_channels``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from onnxshrink.model import iter_graphs


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


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


class Analyzer:
    """The forward walk; ``rules`` (op type -> rule, :mod:`channel_rules`) say
    what each op does to the channels that reach it."""

    def __init__(self, model: onnx.ModelProto, shapes: dict[str, list[int | None]], frozen: set[str],
                 rules: dict[str, Callable]):
        self.rules = rules
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
        if op == "Conv" and w.ndim >= 3 and (attr(node, "group", 1) == 1):
            return 0
        if op == "Gemm" and w.ndim == 2 and not attr(node, "transA", 0):
            return 0 if attr(node, "transB", 0) else 1
        if op == "MatMul" and w.ndim == 2:
            return 1
        return None

    def is_depthwise(self, node: onnx.NodeProto) -> bool:
        if node.op_type != "Conv" or len(node.input) < 2 or not self.is_const(node.input[1]):
            return False
        w = self.consts[node.input[1]]
        g = attr(node, "group", 1)
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
        """Apply ``node``'s rule to its tracked inputs; ops without a rule block them."""
        rule = self.rules.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None:
            return self.block_all(tracked, f"reaches {node.op_type} node '{node.name}'")
        rule(self, node, tracked)

    def block_all(self, tracked: list[tuple[int, Track]], why: str) -> None:
        for _, t in tracked:
            self.block(t, why)

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
