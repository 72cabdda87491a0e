"""A float model made ready for planning, shared by static and dynamic quantization.

:func:`prepare_model` runs the preparation passes of :mod:`prepare` in order
on a copy and says what each did.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import onnx

from onnxshrink.branch_folding import fold_branch_constants
from onnxshrink.cleanup import remove_unused
from onnxshrink.quantization import prepare


@dataclasses.dataclass
class Prepared:
    """A float model ready for planning, with what preparing it did."""

    model: onnx.ModelProto
    types: dict[str, int]
    notes: dict[str, Any]


def prepare_model(model: onnx.ModelProto, name: str = "model", *, fold_constants: bool = True) -> Prepared:
    """A prepared copy of ``model``: fp32 checked, opset >= 13, constants folded
    where weights are computed, Identity nodes dropped, BatchNormalization and
    bias Adds folded into Conv, MatMul+Add into Gemm, nodes named. ``model`` is
    not changed."""
    prepare.check_float32(model, name)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    notes: dict[str, Any] = {}
    work, upgraded_from = prepare.upgrade_opset(work, name)
    if upgraded_from is not None:
        notes["opset_upgraded_from"] = upgraded_from
    if fold_constants:
        before = len(work.graph.node)
        work, failure, origins = prepare.fold_constants_if_needed(work)
        if failure:
            notes["constant_folding_failed"] = failure
        elif len(work.graph.node) != before:
            notes["constants_folded"] = True
        if origins:
            notes["origins"] = origins
        # onnxsim leaves If/Loop bodies alone: an LSTM's weights sliced into gates there become constants.
        branches = fold_branch_constants(work)
        work = branches.model
        if branches.nodes_folded:
            notes["subgraph_nodes_folded"] = branches.nodes_folded
    prepare.name_nodes(work.graph)
    notes["identities_removed"] = prepare.remove_identities(work)
    notes["batchnorms_folded"] = prepare.fold_batch_norms(work.graph)
    notes["conv_bias_adds_folded"] = prepare.fold_conv_bias_adds(work.graph)
    ranks = prepare.value_ranks(work)
    notes["matmul_add_to_gemm"] = prepare.matmul_add_to_gemm(work.graph, ranks)
    notes["spatial_means_to_global_pool"] = prepare.spatial_means_to_global_pool(work.graph, ranks)
    notes["unused_removed"] = remove_unused(work).nodes_removed  # e.g. the Constants a folded BatchNorm read
    return Prepared(work, prepare.value_types(work), notes)
