"""A dense probability map (a text detector's, a segmentation model's) is compared by
the regions its program reads from it, not by its pixels."""

from __future__ import annotations

from collections import deque

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxshrink.validation import Gate, compare_models, kinds, regions
from onnxshrink.validation.metrics import OutputStats

RNG = np.random.default_rng(0)


def _flood_components(mask: np.ndarray) -> np.ndarray:
    """Component of every pixel (-1: background), 8-connected, by breadth-first flood fill."""
    out = np.full(mask.shape, -1)
    count = 0
    for start in zip(*np.nonzero(mask)):
        if out[start] >= 0:
            continue
        out[start] = count
        queue = deque([start])
        while queue:
            y, x = queue.popleft()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    v, u = y + dy, x + dx
                    if 0 <= v < mask.shape[0] and 0 <= u < mask.shape[1] and mask[v, u] and out[v, u] < 0:
                        out[v, u] = count
                        queue.append((v, u))
        count += 1
    return out


@pytest.mark.parametrize("density", [0.0, 0.05, 0.3, 0.5, 0.7, 1.0])
def test_labelling_matches_a_flood_fill(density):
    for h, w in [(1, 1), (1, 40), (40, 1), (23, 37), (50, 50)]:
        mask = RNG.random((h, w)) < density
        runs, component = regions.label(mask)
        labelled = np.full(mask.shape, -1)
        for (row, start, end), c in zip(runs, component):
            labelled[row, start:end] = c
        assert np.array_equal(labelled >= 0, mask)
        flooded = _flood_components(mask)
        # The same partition: each of our components is exactly one of the flood fill's.
        pairs = set(zip(labelled[mask].tolist(), flooded[mask].tolist()))
        assert len(pairs) == len(set(labelled[mask].tolist())) == len(set(flooded[mask].tolist()))
        assert sorted(set(component.tolist())) == list(range(len(set(flooded[mask].tolist()))))


def test_a_snake_is_one_component():
    """A long winding region joins in a few rounds, not one per row."""
    mask = np.zeros((200, 60), bool)
    mask[::2, 1:-1] = True
    mask[1::4, -2] = True
    mask[3::4, 1] = True
    _, component = regions.label(mask)
    assert set(component.tolist()) == {0}


def _page(boxes, shape=(64, 96), value=0.95) -> np.ndarray:
    """A [H, W] map: background 0.02, each box (x1, y1, x2, y2) at ``value``."""
    page = np.full(shape, 0.02, np.float32)
    for x1, y1, x2, y2 in boxes:
        page[y1:y2, x1:x2] = value
    return page


def test_regions_are_boxes_of_the_map_above_the_threshold():
    page = _page([(10, 10, 40, 16), (50, 10, 80, 16), (10, 30, 12, 32)])  # two lines and a 2x2 speck
    page[40:46, 10:60] = 0.4  # a faint region: above 0.3, mean under 0.5
    boxes = regions.regions(page[None])[0]
    # Dilated by 2x2: one pixel more to the right and below, as DB's program sees them.
    assert boxes.tolist() == [[10, 10, 41, 17], [50, 10, 81, 17]]
    halo = page.copy()
    halo[9, 10:40] = regions.THRESHOLD + 0.01  # a row just above the threshold joins its region
    assert regions.regions(halo[None])[0][0].tolist() == [10, 9, 41, 17]
    halo[9, 10:40] = regions.THRESHOLD - 0.01
    assert regions.regions(halo[None])[0][0].tolist() == [10, 10, 41, 17]
    # Samples of a batch stay apart, a region touching the bottom edge included.
    bottom = _page([(0, 58, 30, 64)])
    both = regions.regions(np.stack([bottom, _page([(0, 0, 30, 6)])]))
    assert [b.tolist() for b in both] == [[[0, 58, 31, 64]], [[0, 0, 31, 7]]]


def _f1(ref: np.ndarray, cand: np.ndarray) -> tuple[float, list[int]]:
    stats = OutputStats("maps", kind=kinds.PROBABILITY_MAP)
    stats.add(ref, cand)
    m = stats.result()
    return m["agreement"], [m["regions_matched"], m["regions_original"], m["regions_candidate"]]


LINES = [(10, 10, 40, 16), (50, 10, 80, 16), (10, 30, 80, 36), (10, 48, 50, 54)]


def test_regions_moved_merged_or_split_are_misses():
    ref = _page(LINES)[None, None]
    assert _f1(ref, ref.copy()) == (1.0, [4, 4, 4])
    # One pixel off (a thin line's edge): the same region.
    nudged = _page([(11, 11, 41, 17)] + LINES[1:])[None, None]
    assert _f1(ref, nudged) == (1.0, [4, 4, 4])
    # A line 6 pixels tall moved down by 6: its box overlaps the original's under IoU 0.5.
    moved = _page(LINES[:3] + [(10, 54, 50, 60)])[None, None]
    assert _f1(ref, moved) == (pytest.approx(2 * 3 / 8), [3, 4, 4])
    # The two words of the first line merged into one region: neither matches.
    merged = _page([(10, 10, 80, 16)] + LINES[2:])[None, None]
    assert _f1(ref, merged) == (pytest.approx(2 * 2 / 7), [2, 4, 3])
    # The long line split in two halves: neither half matches it.
    split = _page(LINES[:2] + [(10, 30, 42, 36), (48, 30, 80, 36)] + LINES[3:])[None, None]
    assert _f1(ref, split) == (pytest.approx(2 * 3 / 9), [3, 4, 5])
    # A region lost, and one found where there was none.
    lost = _page(LINES[:3])[None, None]
    assert _f1(ref, lost) == (pytest.approx(2 * 3 / 7), [3, 4, 3])


def test_empty_maps():
    empty = _page([])[None, None]
    assert _f1(empty, empty.copy()) == (1.0, [0, 0, 0])
    assert _f1(empty, _page(LINES[:1])[None, None]) == (0.0, [0, 0, 1])
    assert _f1(_page(LINES[:1])[None, None], empty) == (0.0, [0, 1, 0])


def _blurred_pages(count: int) -> np.ndarray:
    """[count, 1, 64, 96] images: lines of two or three words 6 pixels tall, 5 pixels
    apart, blurred by a 5x5 box (soft edges, as a rendered page is)."""
    images = np.zeros((count, 1, 64, 96), np.float32)
    for image in images:
        for top in (6, 22, 38, 52):
            x = int(RNG.integers(2, 12))
            while x < 80:
                width = int(RNG.integers(10, 26))
                image[0, top:top + 6, x:min(x + width, 94)] = 1.0
                x += width + 5
    padded = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)))
    blurred = sum(padded[:, :, dy:dy + 64, dx:dx + 96] for dy in range(5) for dx in range(5)) / 25
    return blurred.astype(np.float32)


def _map_model(slope: float, centre: float) -> onnx.ModelProto:
    """x [N, 1, 64, 96] (an image) -> Sigmoid(slope * (x - centre)): a probability map as large as the image."""
    nodes = [helper.make_node("Sub", ["x", "c"], ["d"]), helper.make_node("Mul", ["d", "s"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["map"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 64, 96])],
                              [helper.make_tensor_value_info("map", TensorProto.FLOAT, ["n", 1, 64, 96])],
                              [helper.make_tensor("c", TensorProto.FLOAT, [], [centre]),
                               helper.make_tensor("s", TensorProto.FLOAT, [], [slope])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_the_gate_passes_pixels_that_move_and_fails_regions_that_merge(tmp_path):
    """Through compare_models and the default recipe's gate (at most 1 % of the answers
    changed, no labels): a map whose edges move (a lower centre) keeps every region and
    passes, although a fifth of its pixels differ; one whose halo joins the words fails."""
    np.savez(tmp_path / "eval.npz", x=_blurred_pages(6))
    reference = _map_model(12.0, 0.5)
    gate = Gate(max_accuracy_drop=1.0)
    softer = compare_models(reference, _map_model(12.0, 0.4), tmp_path / "eval.npz", gate=gate,
                            measure_latency=False)
    m = softer.outputs["map"]
    assert m["kind"] == kinds.PROBABILITY_MAP and m["agreement_of"] == kinds.AGREEMENT[kinds.PROBABILITY_MAP]
    assert m["regions_original"] >= 40 and m["regions_matched"] == m["regions_original"] == m["regions_candidate"]
    assert m["pixel_iou"] < 0.9 and softer.passed is True
    merged = compare_models(reference, _map_model(12.0, 0.15), tmp_path / "eval.npz", gate=gate,
                            measure_latency=False)
    m = merged.outputs["map"]
    assert m["regions_candidate"] < m["regions_original"] and m["agreement"] < 0.5
    assert merged.passed is False and "probability_map" in merged.failures[0]


@pytest.mark.parametrize("shape, inputs, kind", [
    ((2, 1, 64, 96), {"x": np.zeros((2, 3, 64, 96))}, kinds.PROBABILITY_MAP),  # DBNet: the image's size
    ((2, 64, 96), {"x": np.zeros((2, 3, 128, 192))}, kinds.PROBABILITY_MAP),  # half the image, no channel axis
    ((2, 1, 64, 96), {"x": np.zeros((2, 256, 384, 3))}, kinds.PROBABILITY_MAP),  # NHWC image, a quarter
    ((2, 1, 64, 96), None, kinds.PROBABILITIES),  # no image seen beside it
    ((2, 1, 64, 96), {"x": np.zeros((2, 3, 100, 100))}, kinds.PROBABILITIES),  # not the image's proportions
    ((2, 64, 96), {"x": np.zeros((2, 64, 16))}, kinds.PROBABILITIES),  # per-position multi-label scores
    ((2, 1, 16, 16), {"x": np.zeros((2, 3, 16, 16))}, kinds.PROBABILITIES),  # too small to read regions from
    ((2, 2, 64, 96), {"x": np.zeros((2, 3, 64, 96))}, kinds.PROBABILITIES),  # two channels: not one map
    ((2, 96), {"x": np.zeros((2, 3, 64, 96))}, kinds.PROBABILITIES),  # multi-label scores
])
def test_only_spatial_maps_beside_their_image_are_maps(shape, inputs, kind):
    values = RNG.uniform(0, 1, size=shape).astype(np.float32)
    assert kinds.classify(values, "sigmoid_0.tmp_0", "Sigmoid", inputs) == kind


def test_a_softmax_map_over_classes_stays_sequence_scores():
    logits = RNG.normal(size=(2, 64, 96))
    rows = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert kinds.classify(rows.astype(np.float32), "y", "Softmax", {"x": np.zeros((2, 3, 64, 96))}) \
        == kinds.SEQUENCE_SCORES


def _matched_by_every_pair(ref: np.ndarray, cand: np.ndarray) -> int:
    """Greedy one-to-one matching over the IoU of every pair of grown boxes, best first."""
    grow = np.array([-regions.MARGIN, -regions.MARGIN, regions.MARGIN, regions.MARGIN])
    a, b = ref + grow, cand + grow
    inter = np.prod(np.clip(np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]),
                            0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    iou = inter / (area(a)[:, None] + area(b)[None, :] - inter)
    used_r, used_c = set(), set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = divmod(int(flat), iou.shape[1])
        if iou[i, j] < regions.MATCH_IOU:
            break
        if i not in used_r and j not in used_c:
            used_r.add(i)
            used_c.add(j)
    return len(used_r)


def test_matching_only_near_pairs_finds_what_every_pair_finds():
    """Only boxes that can reach IoU 0.5 are compared (a noisy map has thousands):
    the matches are those of comparing every pair."""
    def boxes(k):
        corner = RNG.integers(0, 60, (k, 2))
        return np.hstack([corner, corner + RNG.integers(1, 30, (k, 2))])

    for _ in range(300):
        n, m = (int(v) for v in RNG.integers(0, 30, 2))
        ref = boxes(n)
        near = ref[:m // 2] + RNG.integers(-3, 4, (min(m // 2, n), 4))
        near[:, 2:] = np.maximum(near[:, 2:], near[:, :2] + 1)
        cand = np.vstack([near, boxes(m - len(near))])
        assert regions.matched(ref, cand) == (_matched_by_every_pair(ref, cand) if n and m else 0)
