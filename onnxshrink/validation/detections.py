"""Detections read from a detector's raw output, and how many survive a change.

A YOLO-style head returns one tensor ``[N, 4 + C, A]`` (or ``[N, A, 4 + C]``):
for each of A anchors a box (centre x, centre y, width, height, in pixels)
and C class scores in [0, 1]. Its program keeps the anchors whose best class
score passes a threshold, suppresses overlapping boxes of the same class
(NMS) and reports the rest. Cosine says little about that: nudenet's
shrunk detector kept output cosine 0.9992 while 5 of its 22 detections
changed. So the agreement of such an output is the detections'
F1: boxes of the candidate matched one to one to the original's at IoU 0.5
with the same class, ``2 * matched / (original's + candidate's)``, over all
samples (1.0 when neither finds anything). Programs differ in their NMS:
per class (ultralytics) or across classes (nudenet's ``cv2.dnn.NMSBoxes``,
where of two overlapping boxes of different classes only the surer one
stays, so a small change of scores swaps the class it reports): each batch
is read both ways and counts as the worse of the two.
"""

from __future__ import annotations

import numpy as np

SCORE = 0.25  # the common default of YOLO programs
NMS_IOU = 0.45
MATCH_IOU = 0.5
MIN_ANCHORS = 256
MAX_CLASSES = 1024


def layout_axis(a: np.ndarray) -> int | None:
    """The axis of a 3-D output that holds the 4 box values and the class
    scores, when the output looks like a YOLO head: that axis 5 to 4 +
    MAX_CLASSES long, the other (anchors) at least MIN_ANCHORS and 8 times
    longer, box sizes non-negative (centres may lie a little outside the
    image) and not all within [0, 1] (pixels), scores in [0, 1]. None
    otherwise."""
    if a.ndim != 3 or a.dtype.kind != "f":
        return None
    for axis in (1, 2):
        width, anchors = a.shape[axis], a.shape[3 - axis]
        if not (5 <= width <= 4 + MAX_CLASSES and anchors >= max(MIN_ANCHORS, 8 * width)):
            continue
        rows = np.moveaxis(a, axis, -1)
        boxes, scores = rows[..., :4], rows[..., 4:]
        if boxes[..., 2:].min() >= 0 and boxes.max() > 1 and scores.min() >= 0 and scores.max() <= 1:
            return axis
    return None


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` [n, 4] with every box of ``b`` [m, 4] (x1, y1, x2, y2)."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def detections(rows: np.ndarray, agnostic: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(boxes [k, 4] as corners, classes [k]) one sample's program would keep
    from its ``rows`` [A, 4 + C]: best class score above SCORE, then greedy NMS
    per class (``agnostic``: over all boxes whatever their class)."""
    scores = rows[:, 4:]
    classes, best = scores.argmax(axis=1), scores.max(axis=1)
    keep = best > SCORE
    centre, size = rows[keep, :2], rows[keep, 2:4]
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    classes, best = classes[keep], best[keep]
    kept: list[int] = []
    for c in np.unique(classes) if not agnostic else [None]:
        idx = np.flatnonzero(classes == c) if c is not None else np.arange(len(classes))
        idx = idx[np.argsort(-best[idx], kind="stable")]
        while idx.size:
            kept.append(int(idx[0]))
            idx = idx[1:][_iou(boxes[idx[:1]], boxes[idx[1:]])[0] <= NMS_IOU]
    kept.sort()
    return boxes[kept], classes[kept]


def matched(ref: tuple[np.ndarray, np.ndarray], cand: tuple[np.ndarray, np.ndarray]) -> int:
    """How many candidate detections match one of the original's (one to one,
    same class, IoU >= MATCH_IOU, the best overlaps first)."""
    (rb, rc), (cb, cc) = ref, cand
    if not len(rb) or not len(cb):
        return 0
    iou = np.where(rc[:, None] == cc[None, :], _iou(rb, cb), 0.0)
    i, j = np.nonzero(iou >= MATCH_IOU)
    return one_to_one(i, j, iou[i, j])


def one_to_one(i: np.ndarray, j: np.ndarray, iou: np.ndarray) -> int:
    """How many of the candidate pairs (original's box ``i[k]``, candidate's
    box ``j[k]``, overlap ``iou[k]``) are kept one to one, the best overlaps
    first (ties in order of ``i``, then ``j``)."""
    used_r = np.zeros(int(i.max(initial=-1)) + 1, bool)
    used_c = np.zeros(int(j.max(initial=-1)) + 1, bool)
    for k in np.lexsort((j, i, -iou)):
        if not used_r[i[k]] and not used_c[j[k]]:
            used_r[i[k]] = used_c[j[k]] = True
    return int(used_r.sum())


def batch_counts(ref: np.ndarray, cand: np.ndarray, axis: int) -> tuple[int, int, int]:
    """(matched, original's detections, candidate's detections) over a batch
    [N, ...], with NMS per class or across classes, whichever F1 is lower."""
    r, c = np.moveaxis(ref, axis, -1), np.moveaxis(cand, axis, -1)
    styles = []
    for agnostic in (False, True):
        total = [0, 0, 0]
        for rows_r, rows_c in zip(r, c):
            dr, dc = detections(rows_r, agnostic), detections(rows_c, agnostic)
            total[0] += matched(dr, dc)
            total[1] += len(dr[0])
            total[2] += len(dc[0])
        styles.append(total)
    # F1 = 2 matched / (original's + candidate's); 1.0 when neither finds anything.
    found, in_ref, in_cand = min(styles, key=lambda t: 2 * t[0] / (t[1] + t[2]) if t[1] + t[2] else 1.0)
    return found, in_ref, in_cand
