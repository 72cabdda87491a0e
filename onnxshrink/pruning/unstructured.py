"""Unstructured and N:M pruning of weight tensors, in place, with the
magnitude, Wanda or Hessian (OBS with reconstruction) method."""

from __future__ import annotations

import dataclasses

import numpy as np

from onnxshrink.pruning.targets import PruneTarget
from onnxshrink.stats.layer_inputs import LayerInputStats, from_matrices, weight_matrices
from onnxshrink.stats.masks import along_input_axis, lowest, lowest_per_row, n_m_mask
from onnxshrink.stats.obs import MAX_FEATURES, obs_prune, reconstruction_error


@dataclasses.dataclass
class TensorPruning:
    """What happened to one weight tensor."""

    name: str
    op_type: str
    shape: list[int]
    params: int
    zeros_before: int
    zeros_after: int
    method: str  # the method that ran (a layer without statistics falls back)
    target_sparsity: float
    output_error: float | None = None  # relative layer output error, from the Hessian

    @property
    def sparsity(self) -> float:
        return self.zeros_after / self.params if self.params else 0.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["sparsity"] = round(self.sparsity, 6)
        return d


def usable_method(method: str, target: PruneTarget, stats: LayerInputStats | None) -> str:
    """``method`` if ``target`` has what it needs, else the best that it has."""
    has_layout = target.layout is not None and stats is not None
    if method == "hessian" and has_layout and stats.hessian is not None and target.layout.features <= MAX_FEATURES:
        return "hessian"
    if method in ("hessian", "wanda") and has_layout and stats.feature_sq is not None:
        return "wanda"
    return "magnitude"


def n_m_fits(target: PruneTarget, m: int) -> bool:
    return target.ref.tensor.dims[target.in_axis] % m == 0


def pruned_array(
    target: PruneTarget,
    array: np.ndarray,
    method: str,
    stats: LayerInputStats | None,
    *,
    sparsity: float = 0.0,
    n_m: tuple[int, int] | None = None,
    block_size: int = 128,
    damp: float = 0.01,
) -> np.ndarray:
    """``array`` (the target's weight) pruned with ``method``: a new array of
    the same dtype and shape."""
    w = array.astype(np.float64)
    if method == "magnitude":
        if n_m is not None:
            mask = np.moveaxis(n_m_mask(np.abs(along_input_axis(w, target.in_axis)), *n_m), -1, target.in_axis)
        else:
            mask = lowest(np.abs(w), int(round(sparsity * w.size)))
        return np.where(mask, 0, array).astype(array.dtype)
    layout = target.layout
    use = target.uses[0]
    matrices = weight_matrices(w, layout, use)
    if method == "wanda":
        scores = np.abs(matrices) * np.sqrt(stats.feature_sq)[:, None, :]
        mask = n_m_mask(scores, *n_m) if n_m is not None else lowest_per_row(scores, sparsity)
        result = np.where(mask, 0.0, matrices)
    else:
        result = obs_prune(matrices, stats.hessian, sparsity=sparsity, n_m=n_m, block_size=block_size, damp=damp)
    out = from_matrices(result, layout, use).astype(array.dtype)
    # a weight rounded to zero by the dtype cast stays pruned; one pruned stays exactly zero
    return out


def global_sparsities(targets: list[PruneTarget], sparsity: float) -> dict[str, float]:
    """Per-tensor sparsities from one ranking of ``|w|`` across all tensors.

    Every method then prunes each tensor to its share its own way. Ranking by
    ``|w| * rms(x)`` instead was measured worse on the bundled models (it
    overloads layers fed by normalised inputs, e.g. attention after
    LayerNorm): 77.5 % vs 97.6 % accuracy on digits_transformer at 50 %.
    """
    scores = [np.abs(t.ref.array().astype(np.float32)).reshape(-1) for t in targets]
    flat = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    mask = lowest(flat, int(round(sparsity * flat.size)))
    result, start = {}, 0
    for t, s in zip(targets, scores):
        result[t.name] = float(mask[start:start + s.size].mean()) if s.size else 0.0
        start += s.size
    return result


def prune_tensors(
    targets: list[PruneTarget],
    sparsities: dict[str, float],
    method: str,
    stats: dict[str, LayerInputStats],
    *,
    n_m: tuple[int, int] | None = None,
    block_size: int = 128,
    damp: float = 0.01,
) -> list[TensorPruning]:
    """Prune each target in place (its tensor in the model is replaced).
    With ``n_m``, targets whose input axis does not fit the pattern are left
    alone (recorded with method "none")."""
    records = []
    for t in targets:
        array = t.ref.array()
        zeros_before = int(np.count_nonzero(array == 0))
        s = stats.get(t.name)
        used = usable_method(method, t, s)
        wanted = 0.5 if n_m is not None else sparsities.get(t.name, 0.0)
        error = None
        if n_m is not None and not n_m_fits(t, n_m[1]):
            used, new = "none", array
        elif n_m is None and wanted <= 0:
            used, new = "none", array
        else:
            new = pruned_array(t, array, used, s, sparsity=wanted, n_m=n_m, block_size=block_size, damp=damp)
            t.ref.set_array(new)
            if s is not None and s.hessian is not None and t.layout is not None:
                use = t.uses[0]
                error = reconstruction_error(weight_matrices(array.astype(np.float64), t.layout, use),
                                             weight_matrices(new.astype(np.float64), t.layout, use), s.hessian)
        records.append(TensorPruning(t.name, t.op_type, list(array.shape), int(array.size), zeros_before,
                                     int(np.count_nonzero(new == 0)), used, wanted, error))
    return records
