"""What kind of answer an output gives, read from its values on the reference
run (and its name and the op that makes it).

The kind decides what "the same answer" means when a candidate is compared
with the original model without labels:

* ``class_scores`` [N, C]: the top-1 class per sample; when the scores are
  probabilities (each row a distribution), also its probability on the same
  side of 0.5 and of 0.9 (programs fall back or act on how sure the answer
  is: magika under 0.5, rapidocr's line classifier above 0.9);
* ``sequence_scores`` [N, T, C] or [T, N, C] (CTC recognisers, taggers): the
  top-1 class per position along the last axis; per sample, that sequence
  decoded as CTC's best path (repeats merged, the class the reference
  predicts most, CTC's blank, dropped);
* ``probability_map`` [N, 1, H, W] or [N, H, W] (every value in [0, 1],
  H and W at least 32 and an input's height and width, or a half, quarter or
  eighth of them: a text detector's or a segmentation model's map): the
  regions its program reads, boxes matched at IoU 0.5, as F1
  (:mod:`onnxshrink.validation.regions`);
* ``probabilities`` (every value in [0, 1], rows not distributions, not a
  map: a one-value detector, multi-label scores): the decisions at 0.5,
  compared as the intersection over union of the positive ones;
* ``embedding`` [N, D] or [N, T, D] (named like one, or made by a
  normalisation): each sample's nearest neighbour among the other samples
  (a [N, T, D] output is mean-pooled over the tokens an input named like
  ``attention_mask`` keeps, as sentence encoders' programs do);
* ``detections`` [N, 4 + C, A] or [N, A, 4 + C] (a YOLO-style head: boxes
  in pixels and class scores per anchor): the detections its program keeps
  (score above 0.25, NMS per class, and across classes: the worse), matched
  at IoU 0.5 with the same class, as F1 (:mod:`onnxshrink.validation.detections`);
* ``exact`` (integers, booleans, strings): element by element;
* ``dense`` (box regressions, feature maps, anything else): no answer to
  compare, only cosine and the per-sample minimum.

The declared shape is not trusted (exporters get it wrong): the kind comes
from the array the reference really returned.
"""

from __future__ import annotations

import numpy as np

from onnxshrink.validation import regions
from onnxshrink.validation.detections import layout_axis

CLASS_SCORES = "class_scores"
SEQUENCE_SCORES = "sequence_scores"
PROBABILITIES = "probabilities"
PROBABILITY_MAP = "probability_map"
EMBEDDING = "embedding"
EXACT = "exact"
DETECTIONS = "detections"
DENSE = "dense"

# What "agreement" counts for each kind (the report's wording).
AGREEMENT = {
    CLASS_SCORES: "top-1 class unchanged, per sample",
    SEQUENCE_SCORES: "decoded sequence unchanged (top-1 per position, repeats merged, the most frequent class "
                     "dropped as CTC's blank), per sample",
    PROBABILITIES: "intersection over union of the decisions above 0.5",
    PROBABILITY_MAP: (f"regions of the map (above {regions.THRESHOLD}, dilated 2x2, 8-connected; boxes at least "
                      f"{regions.MIN_SIDE} pixels a side with mean probability at least {regions.MIN_MEAN}) matched one "
                      f"to one at box IoU {regions.MATCH_IOU} (boxes grown {regions.MARGIN} pixels), as F1"),
    EMBEDDING: "nearest neighbour among the other samples unchanged (near-ties aside), per sample",
    EXACT: "elements equal",
    DETECTIONS: "detections kept (score above 0.25, NMS per class or across classes, the worse) matched at IoU 0.5 "
                "with the same class, as F1",
    DENSE: None,
}

# Names that say "this is a vector to compare by direction", not scores.
EMBEDDING_NAMES = ("embed", "hidden", "pool", "feature", "sentence", "vector", "encod")
# Ops that end an encoder: their output is a representation, not class scores.
NORMALIZING_OPS = ("LayerNormalization", "LpNormalization", "ReduceL2", "SimplifiedLayerNormalization")
# A last axis this long is a vocabulary (CTC symbols, tokens), not an embedding width.
VOCABULARY_MIN = 4096
DISTRIBUTION_TOLERANCE = 1e-3
THRESHOLD = 0.5
# Class probabilities: an answer counts as kept when its top-1 class is, and its probability
# stays on the same side of each of these (the usual confidence cut-offs).
CONFIDENCE_THRESHOLDS = (0.5, 0.9)
CONFIDENT_CLASS_AGREEMENT = ("top-1 class unchanged and its probability on the same side of "
                             + " and of ".join(map(str, CONFIDENCE_THRESHOLDS)) + ", per sample")


def sample_axis(shape: tuple[int, ...], samples: int) -> int | None:
    """The axis that runs over the batch's samples: the first whose size is the
    number of samples (axis 0 when it fits; axis 1 for [T, N, C]), None when no
    axis does (the whole output then counts as one sample)."""
    for axis, size in enumerate(shape[:-1] if len(shape) > 1 else shape):
        if size == samples:
            return axis
    return None


def _rows_are_distributions(a: np.ndarray) -> bool:
    """Rows along the last axis are probability distributions (softmax) or their logs (log-softmax)."""
    if a.ndim < 2 or a.shape[-1] < 2:
        return False
    rows = a.reshape(-1, a.shape[-1]).astype(np.float64)
    if rows.min() >= 0.0 and rows.max() <= 1.0:
        return bool(np.all(np.abs(rows.sum(axis=1) - 1.0) <= DISTRIBUTION_TOLERANCE))
    if rows.max() <= 0.0:
        peak = rows.max(axis=1, keepdims=True)
        logsum = peak[:, 0] + np.log(np.exp(rows - peak).sum(axis=1))
        return bool(np.all(np.abs(logsum) <= DISTRIBUTION_TOLERANCE))
    return False


def is_distribution(a: np.ndarray) -> bool:
    """Rows along the last axis are probabilities that sum to 1 (softmax, not its log)."""
    a = np.asarray(a)
    if a.ndim < 2 or a.shape[-1] < 2 or a.size == 0 or a.min() < 0.0 or a.max() > 1.0:
        return False
    return bool(np.all(np.abs(a.reshape(-1, a.shape[-1]).sum(axis=1) - 1.0) <= DISTRIBUTION_TOLERANCE))


def _image_sized(shape: tuple[int, ...], inputs: dict[str, np.ndarray] | None) -> bool:
    """An input is an image the map covers: its height and width (the last two
    axes, or the two before a last axis of 1 to 4 channels) are the map's
    times 1, 2, 4 or 8, the same factor for both."""
    h, w = shape[-2:]
    for array in (inputs or {}).values():
        dims = np.shape(array)
        spatial = [dims[-2:]] if len(dims) >= 3 else []
        if len(dims) >= 4 and 1 <= dims[-1] <= 4:
            spatial.append(dims[-3:-1])
        for ih, iw in spatial:
            if any(ih == h * f and iw == w * f for f in (1, 2, 4, 8)):
                return True
    return False


def classify(array: np.ndarray, name: str = "", producer: str | None = None,
             inputs: dict[str, np.ndarray] | None = None) -> str:
    """The kind of one output from the reference's values (see the module
    docstring), its name, the op type that produces it (None: unknown) and
    the batch's ``inputs`` (a probability map is one only beside the image
    it covers; None: unknown, no map)."""
    a = np.asarray(array)
    if a.dtype.kind not in "fc":
        return EXACT
    if a.dtype.kind == "c" or a.ndim == 0 or a.size == 0 or not np.isfinite(a).all():
        return DENSE
    lowered = name.lower()
    named_embedding = any(h in lowered for h in EMBEDDING_NAMES) or producer in NORMALIZING_OPS
    if _rows_are_distributions(a) or (producer in ("Softmax", "LogSoftmax") and a.shape[-1] > 1):
        return {2: CLASS_SCORES, 3: SEQUENCE_SCORES}.get(a.ndim, PROBABILITIES if a.min() >= 0 else DENSE)
    if a.min() >= 0.0 and a.max() <= 1.0:
        return PROBABILITY_MAP if regions.map_layout(a) and _image_sized(a.shape, inputs) else PROBABILITIES
    if named_embedding and a.ndim in (2, 3):
        return EMBEDDING
    if a.ndim == 2 and a.shape[-1] > 1:
        return CLASS_SCORES
    if layout_axis(a) is not None:
        return DETECTIONS
    if a.ndim == 3 and (a.shape[-1] >= VOCABULARY_MIN or "logit" in lowered):
        return SEQUENCE_SCORES
    return DENSE
