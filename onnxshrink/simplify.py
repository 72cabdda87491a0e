"""The optional onnxsim pre-pass: constant folding, so computed weights become initializers.

Weights that an exporter builds at run time (ConstantOfShape, folded shape
arithmetic) are invisible to the weight passes until folded. onnxsim does
that; where it fails on a model (it does on some with If subgraphs) we keep
the model as it was and say why. onnxsim's own names for what it rewrote
(``_v_39``, ``Gemm_1``) are given back the input model's names
(:mod:`onnxshrink.provenance`), so every later report speaks of the layers
the user knows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io

import onnx

from onnxshrink.branch_folding import fold_branch_constants
from onnxshrink.model import INLINE_LIMIT_BYTES, data_bytes
from onnxshrink.provenance import NameMap, restore_names


@dataclasses.dataclass
class SimplifyResult:
    """The simplified model (or the input, unchanged, when onnxsim failed);
    ``names`` says what was renamed back to the input's names and what
    tensors and nodes onnxsim made came from."""

    model: onnx.ModelProto
    modified: bool
    nodes_before: int
    nodes_after: int
    fallback_reason: str | None = None
    names: NameMap = dataclasses.field(default_factory=NameMap)

    def to_dict(self) -> dict:
        return {"modified": self.modified, "nodes_before": self.nodes_before, "nodes_after": self.nodes_after,
                "fallback_reason": self.fallback_reason, "names": self.names.to_dict()}


def simplify(model: onnx.ModelProto) -> SimplifyResult:
    """Constant-fold ``model`` with onnxsim, then the weight plumbing inside its
    If/Loop/Scan bodies, which onnxsim leaves (:mod:`onnxshrink.branch_folding`);
    ``model`` itself is not changed."""
    result = _onnxsim(model)
    folded = fold_branch_constants(result.model)
    if not folded.modified:
        return result
    return dataclasses.replace(result, model=folded.model, modified=True)


def _onnxsim(model: onnx.ModelProto) -> SimplifyResult:
    before = len(model.graph.node)
    if data_bytes(model) > INLINE_LIMIT_BYTES:  # ByteSize() itself raises over 2 GB
        return SimplifyResult(model, False, before, before, "model too large for onnxsim (over 1.8 GB)")
    try:
        import onnxsim

        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        # onnxsim prints notes to stdout; a library must not.
        with contextlib.redirect_stdout(io.StringIO()):
            simplified, ok = onnxsim.simplify(copy, check_n=0, perform_optimization=True)
    except Exception as e:  # onnxsim raises many types; all mean "could not simplify"
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        return SimplifyResult(model, False, before, before, f"onnxsim failed: {reason}")
    if not ok:
        return SimplifyResult(model, False, before, before, "onnxsim's own check failed")
    # onnxsim drops metadata_props on some paths (they carry user data: labels,
    # vocabularies) and adds its own provenance keys (onnxsim.removed_nodes, ...,
    # kilobytes on a small model): the output keeps exactly the input's.
    del simplified.metadata_props[:]
    simplified.metadata_props.extend(model.metadata_props)
    names = restore_names(model, simplified)
    return SimplifyResult(simplified, True, before, len(simplified.graph.node), names=names)
