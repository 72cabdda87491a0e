"""Regions read from a dense probability map, and how many survive a change.

A text detector (DBNet in PP-OCR and rapidocr) or a segmentation model
returns a map ``[N, 1, H, W]`` or ``[N, H, W]`` of per-pixel probabilities,
as large as its image or a fixed fraction of it. Its program never reads
single pixels: it thresholds the map, takes the connected regions, drops
specks and faint regions and reports each region as a box (rapidocr's
DBPostProcess: map above 0.3, dilated by 2x2, contours, boxes at least 3
pixels a side whose mean probability passes 0.5, each box grown by its
"unclip"). The pixels say little about that: PP-OCRv4's detector in static
int8 keeps 69 % of the pixels above 0.5 (their intersection over union)
while 99 % of its text boxes hold.

So the agreement of such an output is the regions' F1, read as DB's
post-processing reads them: the map above :data:`THRESHOLD`, dilated by
2x2, split into 8-connected regions; regions whose box is under
:data:`MIN_SIDE` pixels a side, or whose box's mean probability is under
:data:`MIN_MEAN`, dropped; each box grown by :data:`MARGIN` pixels (a line
of text 6 pixels tall that moves by 2 is the same line; DB's unclip grows it
by more) and matched one to one to the original's at IoU :data:`MATCH_IOU`,
the best overlaps first; ``2 * matched / (original's + candidate's)`` over
all samples (1.0 when neither finds anything). A region that moved, split
in two or merged with its neighbour no longer matches. On PP-OCRv4's
detector (14 document pages, 368 boxes) this reads 0.990 for onnxruntime's
static int8, 0.982 for another int8 model, 0.996 for weight-only int8 and
0.635 for weight-only int4, where rapidocr's own boxes keep 0.990, 0.982,
0.997 and 0.637.

Connected components are labelled in numpy alone: each row's runs of
positive pixels, runs of neighbouring rows that touch joined by a union-find
vectorised over all runs at once (hooking and pointer jumping), a whole
batch as one image with an empty row between samples. The regions of 14
maps of 736 x 736 take about 0.06 s, comparing two such batches 0.15 s
(one core of a shared AMD EPYC); boxes are matched only with those that
can reach IoU 0.5, so a noisy map's 10,000 regions cost 1 s, not a matrix
of every pair.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from onnxshrink.validation.detections import one_to_one

# DB's binarisation threshold (PP-OCR, rapidocr): a region's extent is read
# where its program reads it. The maps are bimodal (regions near 1,
# background near 0): what lies between 0.3 and 0.5 is a region's blurred
# edge, and whether a region exists is decided by MIN_MEAN, not by it.
THRESHOLD = 0.3
# Regions the program would not report: DB drops boxes with a side under 3
# pixels (min_size) or whose mean probability over the box is under 0.5
# (box_thresh). Faint regions are the ones a small change adds or removes.
MIN_SIDE = 3
MIN_MEAN = 0.5
# Boxes are compared grown by this many pixels on every side: at IoU 0.5 a
# region 6 pixels tall would be lost to a shift of 2 pixels that leaves its
# box where its program puts it (DB grows a box by 0.75 x its short side).
MARGIN = 2
MATCH_IOU = 0.5
PAIRS_AT_ONCE = 1 << 22
# A map: at least this many pixels a side (a per-image score grid of a few
# cells is class scores, not a map to read regions from).
MIN_MAP_SIDE = 32


def map_layout(a: np.ndarray) -> bool:
    """Whether ``a`` has the shape of a batch of dense probability maps:
    [N, 1, H, W] or [N, H, W], float, every value in [0, 1], H and W at least
    :data:`MIN_MAP_SIDE`. Sequences [N, T, C] (rows that are distributions,
    or no input image the map's size) are told apart by kinds.classify."""
    return map_shape(a.shape) and a.dtype.kind == "f" and bool(a.min() >= 0.0 and a.max() <= 1.0)


def map_shape(shape: tuple[int, ...]) -> bool:
    """[N, 1, H, W] or [N, H, W] with H and W at least :data:`MIN_MAP_SIDE`."""
    return len(shape) in (3, 4) and (len(shape) == 3 or shape[1] == 1) and min(shape[-2:]) >= MIN_MAP_SIDE


def label(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a 2-D boolean ``mask``: (runs, component of
    each run). ``runs`` is [R, 3] (row, first column, column after the last)
    in row-major order; components are numbered 0..K-1 in order of their
    first run."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    where = np.flatnonzero(edges)  # runs start at +1 and end at -1, alternately along each row
    rows, columns = np.divmod(where[0::2], w + 1)
    runs = np.stack([rows, columns, where[1::2] - rows * (w + 1)], axis=1)
    if not len(runs):
        return runs.reshape(0, 3), np.zeros(0, dtype=np.int64)
    # Run b in the next row touches run a (8-connectivity) when b starts at or
    # before a's end and ends at or after a's start. Runs of a row are sorted
    # and disjoint, so those b are one contiguous range: found by searchsorted
    # on keys that order runs by row, then column.
    starts, ends = runs[:, 1], runs[:, 2]
    width = w + 2
    start_key = rows * width + starts
    end_key = rows * width + ends
    below = (rows + 1) * width
    first = np.searchsorted(end_key, below + starts, side="left")
    last = np.searchsorted(start_key, below + ends, side="right")
    count = np.maximum(last - first, 0)
    a = np.repeat(np.arange(len(runs)), count)
    b = np.repeat(first - np.cumsum(count) + count, count) + np.arange(int(count.sum()))
    return runs, _components(len(runs), a, b)


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Component of each of ``n`` nodes joined by the edges (a, b), numbered
    in order of their smallest node: hook each edge's larger root under the
    smaller, then jump pointers to the roots, until every edge is inside one
    component (a handful of rounds on real maps)."""
    parent = np.arange(n)
    while len(a):
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            break
        a, b, ra, rb = a[differ], b[differ], ra[differ], rb[differ]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    roots, numbered = np.unique(parent, return_inverse=True)
    return numbered.reshape(-1)


def _dilated(mask: np.ndarray) -> np.ndarray:
    """``mask`` [N, H, W] dilated by a 2x2 square (DB's use_dilation): a pixel is
    set when it or its neighbour above, to the left or above-left is; regions a
    pixel apart become one, as they do for the program."""
    out = mask.copy()
    out[:, 1:, :] |= mask[:, :-1, :]
    out[:, :, 1:] |= out[:, :, :-1].copy()
    return out


def _box_means(probability: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Mean of one map [H, W] over each box [k, 4] (x1, y1, x2, y2, ends
    exclusive). Boxes that pass MIN_SIDE are few (tens on a page), so each
    is summed where it lies: faster than a summed-area table of the map."""
    return np.array([probability[y1:y2, x1:x2].mean(dtype=np.float64) for x1, y1, x2, y2 in boxes.tolist()])


def regions(maps: np.ndarray) -> list[np.ndarray]:
    """The regions a program would report from each map of ``maps`` [N, H, W]:
    per sample, boxes [k, 4] (x1, y1, x2, y2, integers, x2 and y2 one past the
    last pixel) of the 8-connected regions of the map above THRESHOLD dilated
    by 2x2, whose box is at least MIN_SIDE pixels a side with a mean
    probability at least MIN_MEAN."""
    n, h, w = maps.shape
    stacked = np.zeros((n, h + 1, w), dtype=bool)  # an empty row between samples keeps them apart
    stacked[:, :h] = _dilated(maps > THRESHOLD)
    runs, component = label(stacked.reshape(n * (h + 1), w))
    k = int(component.max()) + 1 if len(component) else 0
    rows, starts, ends = runs[:, 0], runs[:, 1], runs[:, 2]
    top = np.full(k, np.iinfo(np.int64).max)
    left = np.full(k, np.iinfo(np.int64).max)
    bottom = np.zeros(k, dtype=np.int64)
    right = np.zeros(k, dtype=np.int64)
    np.minimum.at(top, component, rows)
    np.maximum.at(bottom, component, rows + 1)
    np.minimum.at(left, component, starts)
    np.maximum.at(right, component, ends)
    sample = top // (h + 1)
    boxes = np.stack([left, top - sample * (h + 1), right, bottom - sample * (h + 1)], axis=1)
    large = (right - left >= MIN_SIDE) & (bottom - top >= MIN_SIDE)
    boxes, sample = boxes[large], sample[large]
    found = []
    for i in range(n):
        mine = boxes[sample == i]
        if len(mine):
            mine = mine[_box_means(maps[i], mine) >= MIN_MEAN]
        found.append(mine)
    return found


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of each box of ``a`` [k, 4] with the box of ``b`` [k, 4] in the same row (x1, y1, x2, y2)."""
    lo = np.maximum(a[:, :2], b[:, :2])
    hi = np.minimum(a[:, 2:], b[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    union = np.prod(a[:, 2:] - a[:, :2], axis=1) + np.prod(b[:, 2:] - b[:, :2], axis=1) - inter
    return inter / np.maximum(union, 1e-12)


def _near_pairs(ref: np.ndarray, cand: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(original's box, candidate's box) index pairs that may reach IoU 0.5, a
    few million at a time. Such boxes overlap and neither is more than twice
    as long as the other along either axis (else their intersection is under
    half the longer one's area), so along one axis the candidate starts at
    most twice the original's length before it and before its end: a range
    of the candidates sorted by start, on the axis where the ranges are
    shorter. A page of text has a few pairs per box, not every pair."""
    best = None
    for axis in (0, 1):
        order = np.argsort(cand[:, axis], kind="stable")
        starts = cand[order, axis]
        length = ref[:, axis + 2] - ref[:, axis]
        first = np.searchsorted(starts, ref[:, axis] - 2 * length, side="left")
        count = np.maximum(np.searchsorted(starts, ref[:, axis + 2], side="left") - first, 0)
        if best is None or count.sum() < best[2].sum():
            best = (order, first, count)
    order, first, count = best
    ends = np.cumsum(count)
    lo = 0
    while lo < len(ref):
        hi = max(int(np.searchsorted(ends, ends[lo] - count[lo] + PAIRS_AT_ONCE, side="right")), lo + 1)
        c = count[lo:hi]
        i = np.repeat(np.arange(lo, hi), c)
        j = np.repeat(first[lo:hi] - np.cumsum(c) + c, c) + np.arange(int(c.sum()))
        yield i, order[j]
        lo = hi


def matched(ref: np.ndarray, cand: np.ndarray) -> int:
    """How many candidate boxes match one of the original's one to one at IoU
    >= MATCH_IOU (boxes grown by MARGIN), the best overlaps first."""
    if not len(ref) or not len(cand):
        return 0
    grow = np.array([-MARGIN, -MARGIN, MARGIN, MARGIN])
    ref, cand = ref + grow, cand + grow
    rows, cols, values = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    for i, j in _near_pairs(ref, cand):
        overlap = np.ones(len(i), bool)
        for axis in (0, 1):  # cheap one-axis tests first: the boxes overlap on both axes
            overlap &= (cand[j, axis] < ref[i, axis + 2]) & (cand[j, axis + 2] > ref[i, axis])
        i, j = i[overlap], j[overlap]
        iou = _iou(ref[i], cand[j])
        keep = iou >= MATCH_IOU
        rows.append(i[keep])
        cols.append(j[keep])
        values.append(iou[keep])
    return one_to_one(np.concatenate(rows), np.concatenate(cols), np.concatenate(values))


def batch_counts(ref: np.ndarray, cand: np.ndarray) -> tuple[int, int, int]:
    """(matched, original's regions, candidate's regions) over a batch of maps
    [N, 1, H, W] or [N, H, W]."""
    r = ref.reshape(len(ref), *ref.shape[-2:])
    c = cand.reshape(len(cand), *cand.shape[-2:])
    found = in_ref = in_cand = 0
    for boxes_r, boxes_c in zip(regions(r), regions(c)):
        found += matched(boxes_r, boxes_c)
        in_ref += len(boxes_r)
        in_cand += len(boxes_c)
    return found, in_ref, in_cand
