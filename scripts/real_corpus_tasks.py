"""Task-level comparisons for the real-model corpus (issue 16): pure numpy
helpers that say whether a compressed model still does its job, given the
post-processed outputs of the fp32 reference and of the candidate.

Each ``*_agreement`` function takes the reference's results and the
candidate's, per eval sample, and returns ``(agreement, details)``: one
number in [0, 1] (1 = the program's output is unchanged) and a dict of the
figures behind it. Nothing here imports a model's package: the per-model
pre/post-processing that needs them is in real_corpus_models.py.
"""

import math
from collections.abc import Sequence

import numpy as np

Detection = tuple  # (class_name, x1, y1, x2, y2)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4), boxes as x1, y1, x2, y2."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_detections(ref: Sequence[Detection], cand: Sequence[Detection], iou: float = 0.5) -> int:
    """How many reference detections find a candidate of the same class at IoU >= ``iou``
    (greedy, highest IoU first, each candidate used once)."""
    if not ref or not cand:
        return 0
    ious = box_iou(np.array([d[1:5] for d in ref]), np.array([d[1:5] for d in cand]))
    same = np.array([[r[0] == c[0] for c in cand] for r in ref])
    ious = np.where(same, ious, 0.0)
    matched = 0
    pairs = sorted(((ious[i, j], i, j) for i in range(len(ref)) for j in range(len(cand)) if ious[i, j] >= iou),
                   reverse=True)
    used_r, used_c = set(), set()
    for _, i, j in pairs:
        if i not in used_r and j not in used_c:
            used_r.add(i)
            used_c.add(j)
            matched += 1
    return matched


def detection_agreement(ref: Sequence[Sequence[Detection]], cand: Sequence[Sequence[Detection]],
                        iou: float = 0.5) -> tuple[float, dict]:
    """F1 of the candidate's detections against the reference's, matched per image at IoU >= ``iou``
    with the same class; 1.0 when both find nothing anywhere."""
    matched = sum(match_detections(r, c, iou) for r, c in zip(ref, cand))
    n_ref = sum(len(r) for r in ref)
    n_cand = sum(len(c) for c in cand)
    f1 = 1.0 if n_ref + n_cand == 0 else 2 * matched / (n_ref + n_cand)
    return f1, {"reference_detections": n_ref, "candidate_detections": n_cand, "matched": matched,
                "images_identical": sum(match_detections(r, c, iou) == len(r) == len(c) for r, c in zip(ref, cand)),
                "images": len(ref)}


def ctc_greedy_decode(indices: Sequence[int], blank: int = 0) -> list[int]:
    """Best-path CTC decoding: merge repeats, then drop blanks."""
    out, prev = [], None
    for idx in indices:
        idx = int(idx)
        if idx != prev and idx != blank:
            out.append(idx)
        prev = idx
    return out


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def char_similarity(a: str, b: str) -> float:
    """1 - edit distance / the longer length (1.0 for two empty strings)."""
    longest = max(len(a), len(b))
    return 1.0 if longest == 0 else 1.0 - edit_distance(a, b) / longest


def string_agreement(ref: Sequence[str], cand: Sequence[str]) -> tuple[float, dict]:
    """Fraction of decoded strings that are identical; character-level similarity beside it."""
    exact = sum(r == c for r, c in zip(ref, cand))
    sims = [char_similarity(r, c) for r, c in zip(ref, cand)]
    changed = [(r, c) for r, c in zip(ref, cand) if r != c]
    return exact / max(len(ref), 1), {"strings": len(ref), "identical": exact,
                                      "char_similarity": float(np.mean(sims)) if sims else 1.0,
                                      "first_changed": changed[:3]}


def label_agreement(ref: Sequence, cand: Sequence) -> tuple[float, dict]:
    """Top-1 agreement: the fraction of samples given the same label."""
    same = sum(r == c for r, c in zip(ref, cand))
    flips = [(r, c) for r, c in zip(ref, cand) if r != c]
    return same / max(len(ref), 1), {"samples": len(ref), "same_label": same, "first_flips": flips[:3]}


def segments_mask(segments: Sequence[tuple[int, int]], length: int) -> np.ndarray:
    """A boolean mask of ``length`` samples, true inside the [start, end) segments."""
    mask = np.zeros(length, dtype=bool)
    for start, end in segments:
        mask[max(0, int(start)):min(length, int(end))] = True
    return mask


def segment_iou(ref: Sequence[tuple[int, int]], cand: Sequence[tuple[int, int]], length: int) -> float:
    """Temporal IoU of the union of the reference's segments and the candidate's (1.0 when neither has any)."""
    a, b = segments_mask(ref, length), segments_mask(cand, length)
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else float(np.count_nonzero(a & b) / union)


def vad_agreement(ref: Sequence[Sequence[tuple[int, int]]], cand: Sequence[Sequence[tuple[int, int]]],
                  lengths: Sequence[int]) -> tuple[float, dict]:
    """Speech segments of whole recordings, each run closed-loop on its own state: the mean temporal IoU
    of speech over the recordings, with segment counts and F1 of segments matched at IoU >= 0.5."""
    ious = [segment_iou(r, c, n) for r, c, n in zip(ref, cand, lengths)]
    as_boxes = [[("speech", s, 0, e, 1) for s, e in segs] for segs in ref]
    cand_boxes = [[("speech", s, 0, e, 1) for s, e in segs] for segs in cand]
    f1, det = detection_agreement(as_boxes, cand_boxes)
    return float(np.mean(ious)) if ious else 1.0, {
        "recordings": len(ref), "reference_segments": det["reference_detections"],
        "candidate_segments": det["candidate_detections"], "segment_f1": f1, "min_iou": float(min(ious, default=1.0))}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two 1-D arrays (ties broken by position)."""
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(np.float64)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(np.float64)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return 1.0 if denom == 0 else float((ra * rb).sum() / denom)


def retrieval_agreement(ref_q: np.ndarray, ref_d: np.ndarray, cand_q: np.ndarray, cand_d: np.ndarray,
                        k: int = 5) -> tuple[float, dict]:
    """Embeddings used for search: each query ranks the documents by cosine. The agreement is the
    fraction of queries whose top-1 document is unchanged; the top-k overlap, the mean Spearman
    correlation of the full rankings and the mean cosine of the embeddings are beside it."""
    def unit(x):
        x = np.asarray(x, dtype=np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    rq, rd, cq, cd = unit(ref_q), unit(ref_d), unit(cand_q), unit(cand_d)
    ref_scores, cand_scores = rq @ rd.T, cq @ cd.T
    ref_rank = np.argsort(-ref_scores, axis=1, kind="stable")
    cand_rank = np.argsort(-cand_scores, axis=1, kind="stable")
    top1 = float(np.mean(ref_rank[:, 0] == cand_rank[:, 0]))
    k = min(k, rd.shape[0])
    overlap = float(np.mean([len(set(r[:k]) & set(c[:k])) / k for r, c in zip(ref_rank, cand_rank)]))
    rho = float(np.mean([spearman(r, c) for r, c in zip(ref_scores, cand_scores)]))
    cos = float(np.mean(np.concatenate([(rq * cq).sum(1), (rd * cd).sum(1)])))
    return top1, {"queries": len(rq), "documents": len(rd), f"top{k}_overlap": overlap, "spearman": rho,
                  "embedding_cosine": cos}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; ``|`` and newlines inside cells are escaped so a cell cannot break it."""
    def cell(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ").strip() or " "
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
