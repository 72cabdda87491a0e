"""How each op passes channels on: one rule per op type, as data.

A rule gets the analyzer, the node and its tracked inputs ``[(input index,
Track)]``. It either records what to cut and tracks the node's output, or
blocks the channels (they stay). Ops without a rule block what reaches them.
:func:`analyze_channels` runs the walk of :mod:`channel_groups` with these rules.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from onnxshrink.pruning.channel_groups import Analyzer, ChannelAnalysis, Slice, Track, attr

Tracked = list[tuple[int, Track]]
Rule = Callable[[Analyzer, onnx.NodeProto, Tracked], None]
RULES: dict[str, Rule] = {}

# Ops that apply to each element on its own: output = f(input 0 [, constant scalars]).
UNARY = (
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "Gelu", "Elu", "Selu", "Celu", "Softplus", "Softsign",
    "HardSigmoid", "HardSwish", "Mish", "Identity", "Dropout", "Cast", "Abs", "Neg", "Sqrt", "Exp", "Log",
    "Erf", "Reciprocal", "Floor", "Ceil", "Round", "Sin", "Cos", "ThresholdedRelu", "Sign",
)
# Broadcasting elementwise ops over several inputs: tracked inputs are coupled.
ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where")
# Ops working on each channel (axis 1, NCHW) separately.
PER_CHANNEL = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool")
# Per-channel affine normalisations: the parameter inputs cut along axis 0.
NORMALIZATION = {"BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2)}
REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


def rule(*ops: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for op in ops:
            RULES[op] = fn
        return fn

    return register


def _single(an: Analyzer, node: onnx.NodeProto, tracked: Tracked) -> Track | None:
    """The one tracked input 0, or None (after blocking) when the node reads channels elsewhere."""
    if len(tracked) != 1 or tracked[0][0] != 0:
        an.block_all(tracked, f"{node.op_type} '{node.name}' reads channels on a side input")
        return None
    return tracked[0][1]


@rule("Conv", "Gemm", "MatMul")
def layer(an: Analyzer, node: onnx.NodeProto, tracked: Tracked) -> None:
    """A layer reading the channels as its input channels ends the walk
    (its weight is cut along its input axis); a depthwise Conv passes them on."""
    t = _single(an, node, tracked)
    if t is None:
        return
    if an.is_depthwise(node):
        if t.axis != 1 or t.block != 1:
            return an.block(t, "depthwise Conv reads the channels on another axis")
        an.a.depthwise.append((node, t))
        an.a.slices.append(Slice(node, 1, 0, t, "param"))
        if len(node.input) > 2 and node.input[2]:
            an.a.slices.append(Slice(node, 2, 0, t, "param"))
        an.tracks[node.output[0]] = t
        return
    in_axis = _consumer_in_axis(an, node)
    if in_axis is None:
        return an.block(t, f"'{node.name or node.op_type}' mixes the channels (grouped, transposed or computed weight)")
    want_axis = 1 if node.op_type == "Conv" else t.rank - 1
    if t.axis != want_axis or (node.op_type == "Conv" and t.block != 1):
        return an.block(t, f"'{node.name or node.op_type}' reads the channels on another axis")
    an.a.terminals.append((node, t))
    an.a.slices.append(Slice(node, 1, in_axis, t, "in"))


def _consumer_in_axis(an: Analyzer, node: onnx.NodeProto) -> int | None:
    if len(node.input) < 2 or not an.is_const(node.input[1]):
        return None
    w = an.consts[node.input[1]]
    if node.op_type == "Conv":
        return 1 if attr(node, "group", 1) == 1 else None
    if node.op_type == "Gemm":
        return None if attr(node, "transA", 0) else (1 if attr(node, "transB", 0) else 0)
    return 0 if w.ndim == 2 else None


@rule(*UNARY)
def unary(an: Analyzer, node: onnx.NodeProto, tracked: Tracked) -> None:
    t = _single(an, node, tracked)
    if t is None:
        return
    if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
        return an.block(t, "Dropout mask output is used")
    an.tracks[node.output[0]] = t


@rule(*NORMALIZATION)
def normalization(an: Analyzer, node: onnx.NodeProto, tracked: Tracked) -> None:
    t = _single(an, node, tracked)
    if t is None:
        return
    if t.axis != 1 or t.block != 1 or len([o for o in node.output if o]) > 1:
        return an.block(t, f"{node.op_type} on another axis or in training form")
    params = [i for i in NORMALIZATION[node.op_type] if i < len(node.input) and node.input[i]]
    if not all(an.is_const(node.input[i]) for i in params):
        return an.block(t, f"{node.op_type} parameter is computed")
    an.a.slices += [Slice(node, i, 0, t, "param") for i in params]
    an.tracks[node.output[0]] = t


@rule(*PER_CHANNEL)
def per_channel(an: Analyzer, node: onnx.NodeProto, tracked: Tracked) -> None:
    t = _single(an, node, tracked)
    if t is None:
        return
    if t.axis != 1 or t.block != 1 or len([o for o in node.output if o]) != 1:
        return an.block(t, f"{node.op_type} on another axis, or with indices")
    an.tracks[node.output[0]] = t


@rule(*ELEMENTWISE)
def elementwise(an: Analyzer, node: onnx.NodeProto, tracked: Tracked) -> None:
    """Tracked inputs are coupled; constant operands with a full channel axis
    are cut with them; other inputs must broadcast over the channel axis."""
    tracks = [t for _, t in tracked]
    if not an.couple(tracks, f"{node.op_type} '{node.name}' joins values whose channels do not line up"):
        return
    t = tracks[0]
    out_rank = an.rank(node.output[0]) or max([t.rank] + [an.rank(n) or 0 for n in node.input if n])
    from_end = t.rank - t.axis  # broadcasting aligns axes from the end
    tracked_inputs = {i for i, _ in tracked}
    for i, name in enumerate(node.input):
        if not name or i in tracked_inputs:
            continue
        shape = list(an.consts[name].shape) if an.is_const(name) else an.shapes.get(name)
        if shape is None:
            return an.block(t, f"operand '{name}' of '{node.name}' has an unknown shape")
        pos = len(shape) - from_end
        if pos < 0 or shape[pos] == 1:
            continue
        if an.is_const(name) and shape[pos] == t.width:
            an.a.slices.append(Slice(node, i, pos, t, "param"))
            continue
        return an.block(t, f"operand '{name}' of '{node.name}' is not per channel")
    an.tracks[node.output[0]] = Track(out_rank - from_end, out_rank, t.segments, t.block)


@rule("Transpose")
def transpose(an: Analyzer, node: onnx.NodeProto, tracked: Tracked) -> None:
    t = _single(an, node, tracked)
    if t is not None:
        perm = attr(node, "perm") or list(range(t.rank))[::-1]
        an.tracks[node.output[0]] = Track(list(perm).index(t.axis), t.rank, t.segments, t.block)


@rule(*REDUCE)
def reduce(an: Analyzer, node: onnx.NodeProto, tracked: Tracked) -> None:
    t = _single(an, node, tracked)
    if t is None:
        return
    axes = attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        if not an.is_const(node.input[1]):
            return an.block(t, "reduction axes are computed")
        axes = an.consts[node.input[1]].reshape(-1).tolist()
    if not axes:
        return an.block(t, f"{node.op_type} over all axes")
    axes = [a + t.rank if a < 0 else a for a in axes]
    if t.axis in axes:
        return an.block(t, f"{node.op_type} over the channel axis")
    if attr(node, "keepdims", 1):
        an.tracks[node.output[0]] = t
    else:
        below = sum(a < t.axis for a in axes)
        an.tracks[node.output[0]] = Track(t.axis - below, t.rank - len(axes), t.segments, t.block)


def _flatten_at_channels(an: Analyzer, node: onnx.NodeProto, t: Track, shape_index: int | None) -> None:
    """The output merges the channel axis with every axis after it: each
    channel becomes a block of ``prod(inner dims)`` entries."""
    shape = an.shapes.get(node.input[0])
    if shape is None or any(d is None for d in shape[t.axis + 1:]):
        return an.block(t, f"{node.op_type} '{node.name}' of a value with unknown inner dims")
    inner = int(np.prod(shape[t.axis + 1:], dtype=np.int64))
    out = Track(t.axis, t.axis + 1, t.segments, t.block * inner)
    if shape_index is not None:
        an.a.reshapes.append((node, out, shape_index))
    an.tracks[node.output[0]] = out


@rule("Flatten")
def flatten(an: Analyzer, node: onnx.NodeProto, tracked: Tracked) -> None:
    t = _single(an, node, tracked)
    if t is None:
        return
    axis = attr(node, "axis", 1)
    if (axis + t.rank if axis < 0 else axis) != t.axis:
        return an.block(t, f"Flatten '{node.name}' merges the channel axis with the axes before it")
    _flatten_at_channels(an, node, t, None)


@rule("Reshape")
def reshape(an: Analyzer, node: onnx.NodeProto, tracked: Tracked) -> None:
    """Only a flatten of the channel axis and everything after it is followed;
    a shape constant that spells out the width is rewritten with it."""
    t = _single(an, node, tracked)
    if t is None:
        return
    if len(node.input) < 2 or not an.is_const(node.input[1]):
        return an.block(t, f"Reshape '{node.name}' has a computed shape")
    target = an.consts[node.input[1]].reshape(-1).tolist()
    shape = an.shapes.get(node.input[0]) or []
    if t.block != 1 or len(target) != t.axis + 1 or len(shape) != t.rank or any(d is None for d in shape[t.axis + 1:]):
        return an.block(t, f"Reshape '{node.name}' is not a flatten of the channel axis")
    lead = target[:t.axis]
    if any(d not in (0, -1) and d != shape[i] for i, d in enumerate(lead)):
        return an.block(t, f"Reshape '{node.name}' changes the leading axes")
    width = t.channels * int(np.prod(shape[t.axis + 1:], dtype=np.int64))
    if target[t.axis] == -1:
        return _flatten_at_channels(an, node, t, None)
    if target[t.axis] == width and -1 not in lead:
        return _flatten_at_channels(an, node, t, t.axis)
    an.block(t, f"Reshape '{node.name}' is not a flatten of the channel axis")


@rule("Concat")
def concat(an: Analyzer, node: onnx.NodeProto, tracked: Tracked) -> None:
    """Along the channel axis the spaces sit side by side (untracked inputs
    become fixed channels); along another axis the inputs are coupled."""
    t = tracked[0][1]
    axis = attr(node, "axis", 1)
    axis = axis + t.rank if axis < 0 else axis
    if axis != t.axis:
        if len(tracked) != len([n for n in node.input if n]):
            return an.block_all(tracked, f"Concat '{node.name}' on another axis with untracked inputs")
        if an.couple([u for _, u in tracked], f"Concat '{node.name}' joins mismatched channels"):
            an.tracks[node.output[0]] = t
        return
    if any(u.axis != t.axis or u.block != t.block or u.rank != t.rank for _, u in tracked):
        return an.block_all(tracked, f"Concat '{node.name}' joins differently laid out channels")
    by_index = dict(tracked)
    segments: list[tuple[int, int]] = []
    for i, name in enumerate(node.input):
        if i in by_index:
            segments += by_index[i].segments
            continue
        shape = an.shapes.get(name)
        if shape is None or shape[axis] is None or shape[axis] % t.block:
            return an.block_all(tracked, f"Concat '{node.name}' input '{name}' has an unknown width")
        fixed = an.new_space(shape[axis] // t.block)
        an.a.blocked.add(fixed)
        an.a.blocked_why[fixed] = "a Concat input that no layer produces"
        segments.append((fixed, shape[axis] // t.block))
    an.tracks[node.output[0]] = Track(axis, t.rank, segments, t.block)


@rule("Pad")
def pad(an: Analyzer, node: onnx.NodeProto, tracked: Tracked) -> None:
    t = _single(an, node, tracked)
    if t is None:
        return
    pads = an.consts.get(node.input[1]) if len(node.input) > 1 and node.input[1] else attr(node, "pads")
    if pads is None or (len(node.input) > 3 and node.input[3]):
        return an.block(t, "Pad with computed pads or axes")
    pads = np.asarray(pads).reshape(-1)
    if pads.size != 2 * t.rank or pads[t.axis] or pads[t.axis + t.rank]:
        return an.block(t, "Pad pads the channel axis")
    an.tracks[node.output[0]] = t


@rule("Resize", "Upsample")
def resize(an: Analyzer, node: onnx.NodeProto, tracked: Tracked) -> None:
    t = _single(an, node, tracked)
    if t is None:
        return
    sizes = node.input[3] if len(node.input) > 3 else ""
    scales_name = node.input[2] if node.op_type == "Resize" and len(node.input) > 2 else (
        node.input[1] if node.op_type == "Upsample" and len(node.input) > 1 else "")
    scales = an.consts.get(scales_name) if scales_name else None
    if sizes or scales is None or scales.size != t.rank or scales.reshape(-1)[t.axis] != 1:
        return an.block(t, f"{node.op_type} with sizes, or scaling the channel axis")
    an.tracks[node.output[0]] = t


def analyze_channels(model: onnx.ModelProto, shapes: dict[str, list[int | None]], frozen: set[str] = frozenset()) -> ChannelAnalysis:
    """Find the coupled channel groups of ``model``'s main graph (not modified)."""
    return Analyzer(model, shapes, set(frozen), RULES).run()
