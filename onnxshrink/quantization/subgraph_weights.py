"""Layer weights inside If/Loop/Scan bodies in static int8: int8 codes behind DequantizeLinear.

Static int8 runs a layer on integer kernels between Q/DQ pairs whose
activation scales come from calibration; inside a subgraph those
activations cannot be observed (onnxruntime outputs no subgraph value), so
the layers there cannot run in int8. Their weights still can be stored in
int8: each becomes per-output-channel int8 codes and a DequantizeLinear the
layer reads (:mod:`onnxshrink.lowbit.dequantize`, the weight-only form),
and the layer computes in float. silero-vad keeps its whole network inside
the two branches of an ``If``; without this its static int8 output was the
fp32 file. No integer kernel reads these codes, but they keep the main
graph's code range (the AVX2 limit, or the narrower ``weight_range_bits``
the shrink search trades for packed size), so the report's one range of
weight codes is true of every int8 weight.

The report lists each such layer as quantized with that kernel, and as
left float with :data:`IN_SUBGRAPH_WEIGHTS` (its computation is float).
"""

from __future__ import annotations

from typing import Any

import onnx

from onnxshrink.graphs import iter_graphs
from onnxshrink.lowbit.dequantize import UniqueNames, dequantize_in_graph
from onnxshrink.lowbit.grid import Grid
from onnxshrink.lowbit.options import WeightOnlyOptions
from onnxshrink.lowbit.weight_only import weight_targets
from onnxshrink.quantization.params import quantize_weight, weight_scales

IN_SUBGRAPH_WEIGHTS = ("inside an If/Loop/Scan body: its weight is stored int8 behind DequantizeLinear, its "
                       "computation stays float (static int8 needs activation ranges there, which onnxruntime does "
                       "not output)")
KERNEL = "float, int8 weight dequantized (inside If/Loop/Scan)"


def quantize_subgraph_weights(model: onnx.ModelProto, *, exclude_nodes: frozenset[str] = frozenset(),
                              exclude_ops: frozenset[str] = frozenset(),
                              min_size: int = WeightOnlyOptions.min_size,
                              levels: int = 127) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Store in int8, in place, every float layer weight of ``model`` read only by
    nodes inside subgraphs (see the module docstring). Returns report records
    of the layers reading them (the quantize report's node format) and those
    layers, by name, with :data:`IN_SUBGRAPH_WEIGHTS`. Excluded nodes and op
    types, weights under ``min_size`` elements, and weights also read in the
    main graph are left as they are. Codes lie in [-``levels``, ``levels``],
    the range of the main graph's int8 weights, so the report's one range holds for all."""
    # By output name: protobuf hands out a new wrapper for each access, so node identity cannot tell.
    inside = {out for graph, depth in iter_graphs(model.graph) if depth for node in graph.node for out in node.output
              if out}  # (every output: an LSTM may leave Y unnamed)
    targets, _ = weight_targets(model, WeightOnlyOptions(bits=8, granularity="channel", min_size=min_size,
                                                        gate_floor=False))
    names = UniqueNames(model)
    records: dict[str, dict[str, Any]] = {}  # one per layer, an LSTM's W and R together
    computed_float: dict[str, str] = {}
    for target in targets:
        uses = target.uses
        if not all(any(o in inside for o in u.node.output if o) for u in uses):
            continue
        if any(u.op_type in exclude_ops or u.node.name in exclude_nodes for u in uses):
            continue
        w = target.ref.array()
        scales = weight_scales(w, target.out_axis, levels)
        codes = quantize_weight(w, scales, target.out_axis, levels).values
        dequantize_in_graph(target.ref, codes, scales, Grid(8, target.out_axis), names)
        for use in uses:
            label = use.node.name or f"{use.op_type} writing '{next(o for o in use.node.output if o)}'"
            computed_float[label] = IN_SUBGRAPH_WEIGHTS
            records.setdefault(label, {"name": label, "op_type": use.op_type, "kernel": KERNEL, "inputs": {}, "output": None,
                            "weight": {"type": "int8", "symmetric": True, "axis": target.out_axis,
                                       "channels": int(scales.size), "scale_min": float(scales.min()),
                                       "scale_max": float(scales.max())},
                            "fused": None})
    return list(records.values()), computed_float


def computed_float_warning(left_float: dict[str, str]) -> str | None:
    """The report's line on layers :func:`quantize_subgraph_weights` stored in int8, or None."""
    count = sum(1 for why in left_float.values() if why == IN_SUBGRAPH_WEIGHTS)
    if not count:
        return None
    return (f"{count} layers inside If/Loop/Scan bodies have int8 weights behind DequantizeLinear but compute in "
            "float (no activation ranges can be observed there)")
