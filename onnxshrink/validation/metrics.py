"""Running comparison of one output, reference against candidate, batch by batch.

Sums and maxima accumulate, so memory does not grow with the number of
samples (embeddings keep one pooled vector per sample, up to
:data:`MAX_NEIGHBOUR_SAMPLES`, for the nearest-neighbour check). Besides the
numerical metrics every output gets (cosine, per-sample minimum, errors,
SQNR), the output's kind (:mod:`onnxshrink.validation.kinds`) decides its
``agreement``: the fraction of the original's answers the candidate gives too.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from onnxshrink.errors import DataError
from onnxshrink.validation import kinds
from onnxshrink.validation import regions
from onnxshrink.validation.detections import batch_counts, layout_axis

# Embedding outputs keep this many samples' vectors for the nearest-neighbour check.
MAX_NEIGHBOUR_SAMPLES = 2048
# Elements summed at a time, whole samples or a slice of one (float64 copies of this size stay in the cache).
NUMERIC_CHUNK = 1 << 16
NEIGHBOURS_K = 5
# A nearest neighbour counts as changed when the candidate's is, for the
# original model, less similar than the original's own by more than this
# (cosine): near-ties the original itself hardly decides are not answers.
# MiniLM (52 sentences): flips of int8 models sat at margins 0.0007-0.0099,
# against a median margin of 0.21; a 4-bit model's at 0.02-0.12.
NEIGHBOUR_TIE = 0.01


def as_comparable(value: Any) -> np.ndarray:
    """An output as one array: tensors as they are, complex numbers as (real,
    imaginary) pairs, sequences (lists from onnxruntime) flattened end to end."""
    if isinstance(value, (list, tuple)):
        parts = [as_comparable(v).ravel() for v in value]
        kinds_seen = {p.dtype.kind for p in parts}
        if len(kinds_seen) > 1 and not kinds_seen <= set("biuf"):
            parts = [p.astype(str) for p in parts]
        return np.concatenate(parts) if parts else np.zeros(0)
    if isinstance(value, dict):
        return as_comparable([np.asarray(value[k]) for k in sorted(value, key=str)])
    array = np.asarray(value)
    if array.dtype.kind == "c":
        array = np.stack([array.real, array.imag], axis=-1)
    return array


def _per_sample(array: np.ndarray, samples: int) -> np.ndarray:
    """The array with its sample axis first (see :func:`kinds.sample_axis`)."""
    if array.ndim == 0:
        return array.reshape(1)
    axis = kinds.sample_axis(array.shape, samples)
    if axis is None:
        return array[None]
    return np.moveaxis(array, axis, 0)


def _real(array: np.ndarray) -> np.ndarray:
    """Float32 and float64 as they are (sums are taken in float64 anyway), other numbers as float64."""
    return array if array.dtype in (np.float32, np.float64) else array.astype(np.float64)


def _decoded(sequence: np.ndarray, background: int) -> np.ndarray:
    """A sequence of classes with runs of the same class merged and the
    background class dropped: CTC's best-path decoding when the background is
    the blank (the class a CTC model predicts most)."""
    if sequence.size == 0:
        return sequence
    keep = np.ones(sequence.shape, dtype=bool)
    keep[1:] = sequence[1:] != sequence[:-1]
    merged = sequence[keep]
    return merged[merged != background]


def token_mask(inputs: dict[str, np.ndarray] | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """For a [N, T, D] output, an input named like a mask (``attention_mask``) of
    shape [N, T]: which positions are real tokens, for pooling as a sentence
    encoder's program does. None when there is none."""
    if inputs is None or len(shape) != 3:
        return None
    for name, array in inputs.items():
        a = np.asarray(array)
        if "mask" in name.lower() and a.dtype.kind in "biuf" and a.shape == tuple(shape[:2]):
            return a.astype(np.float64)
    return None


def _pooled(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """One vector per sample: the mean over every axis between the sample and the
    last, over the masked-in tokens when a token mask is given."""
    flat = values.reshape(len(values), -1, values.shape[-1]).astype(np.float64)
    if mask is None:
        return flat.mean(axis=1)
    weights = mask.reshape(len(values), -1, 1)
    return (flat * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)


class OutputStats:
    """Running sums for one output: cosine, errors, SQNR, and its kind's agreement.

    ``kind`` is decided on the first batch from the reference's values unless given."""

    def __init__(self, name: str = "", producer: str | None = None, kind: str | None = None) -> None:
        self.name, self.producer, self.kind = name, producer, kind
        self.dot = self.ref_sq = self.cand_sq = self.err_sq = 0.0
        self.abs_sum = 0.0
        self.max_abs = 0.0
        self.count = 0
        self.min_sample_cosine = 1.0
        self.sample_cosine_sum = 0.0
        self.samples = 0
        self.nonfinite = 0
        self.same = self.total = 0  # answers unchanged / answers (per the kind)
        self.top1_same = 0  # class scores: top-1 class unchanged (confidence aside)
        self.confidence = False  # class scores that are probabilities: the top-1's confidence counts too
        self.positions_same = self.positions = 0  # sequence scores: top-1 per position
        self.decisions_same = self.decisions = 0  # probabilities: every decision
        self.background: int | None = None  # sequence scores: the class dropped when decoding
        self.ref_vectors: list[np.ndarray] = []  # embeddings: one pooled vector per sample
        self.cand_vectors: list[np.ndarray] = []
        self.detection_batches = 0  # detections: batches whose boxes were compared
        self.map_batches = 0  # probability maps: batches whose regions were compared
        self.regions = [0, 0, 0]  # probability maps: regions matched, the original's, the candidate's
        self.pixels_same = self.pixels = 0  # probability maps: pixels above the threshold in both / in either

    def add(self, ref: Any, cand: Any, samples: int | None = None, inputs: dict[str, np.ndarray] | None = None) -> None:
        """One batch of both models' values of this output; ``samples`` is the
        batch's number of samples (default: the leading axis); ``inputs`` the
        batch's inputs (an embedding's token mask is read from them)."""
        ref, cand = as_comparable(ref), as_comparable(cand)
        if ref.shape != cand.shape:
            raise DataError(f"output shapes differ: reference {list(ref.shape)}, candidate {list(cand.shape)}")
        if ref.size == 0:
            return
        samples = samples if samples is not None else (ref.shape[0] if ref.ndim else 1)
        if self.kind is None:
            self.kind = kinds.classify(ref, self.name, self.producer, inputs)
        if ref.dtype.kind not in "biuf" or cand.dtype.kind not in "biuf":
            # Strings (and the like) either match or not: each element is 1 where
            # they do, so cosine and errors count the mismatches.
            equal = ref == cand
            self.same += int(equal.sum())
            self.total += int(equal.size)
            ref, cand = np.ones(ref.shape), equal.astype(np.float64)
        elif self.kind == kinds.EXACT:
            self.same += int((ref == cand).sum())
            self.total += int(ref.size)
        r, c = _per_sample(_real(ref), samples), _per_sample(_real(cand), samples)
        bad = ~np.isfinite(c)
        if bad.any():
            self.nonfinite += int(bad.sum())
            c = np.where(bad, 0.0, c)
        self._numeric(r, c)
        if self.kind in (kinds.CLASS_SCORES, kinds.SEQUENCE_SCORES):
            self._top1(r, c)
        elif self.kind == kinds.PROBABILITIES:
            rd, cd = r > kinds.THRESHOLD, c > kinds.THRESHOLD
            self.same += int((rd & cd).sum())
            self.total += int((rd | cd).sum())
            self.decisions_same += int((rd == cd).sum())
            self.decisions += int(rd.size)
        elif self.kind == kinds.PROBABILITY_MAP:
            self._regions(ref, cand, samples)
        elif self.kind == kinds.DETECTIONS:
            axis = layout_axis(ref)
            if axis is not None and kinds.sample_axis(ref.shape, samples) == 0:
                found, in_ref, in_cand = batch_counts(ref.astype(np.float64), cand.astype(np.float64), axis)
                self.same += 2 * found
                self.total += in_ref + in_cand
                self.detection_batches += 1
        elif self.kind == kinds.EMBEDDING:
            room = MAX_NEIGHBOUR_SAMPLES - len(self.ref_vectors)
            if room > 0:
                mask = token_mask(inputs, ref.shape) if kinds.sample_axis(ref.shape, samples) == 0 else None
                self.ref_vectors.extend(_pooled(r, mask)[:room])
                self.cand_vectors.extend(_pooled(c, mask)[:room])

    def add_rows(self, refs: list[Any], cands: list[Any]) -> None:
        """Rows of a closed loop (one sample each), added as one batch when their
        shapes agree (one set of numpy calls instead of one per step)."""
        if not refs:
            return
        shapes = {np.shape(a) for a in refs} | {np.shape(a) for a in cands}
        if len(shapes) == 1 and all(isinstance(a, np.ndarray) for a in refs + cands):
            self.add(np.stack(refs), np.stack(cands), len(refs))
        else:
            for r, c in zip(refs, cands):
                self.add(r, c, 1)

    def _numeric(self, r: np.ndarray, c: np.ndarray) -> None:
        """Cosine and error sums over a batch (sample axis first), in float64,
        a block of about NUMERIC_CHUNK elements at a time (whole samples, or
        a slice of one larger sample): a search checks a [64, 40, 6625]
        sequence output many times, and whole-batch float64 temporaries (and
        the copy of a batch whose sample axis is not first) cost more than
        the sums, their memory being new each time; a closed loop's
        thousands of one-value rows stay a few numpy calls."""
        n = len(r)
        size = r.size // max(n, 1)
        rows = max(1, NUMERIC_CHUNK // max(size, 1))
        cols = min(max(size, 1), NUMERIC_CHUNK)
        dot, ref_sq, cand_sq = np.zeros(n), np.zeros(n), np.zeros(n)
        for i in range(0, n, rows):
            block_r, block_c = r[i:i + rows].reshape(-1, size), c[i:i + rows].reshape(-1, size)
            for j in range(0, size, cols):
                a = block_r[:, j:j + cols].astype(np.float64)
                b = block_c[:, j:j + cols].astype(np.float64)
                dot[i:i + rows] += np.einsum("ij,ij->i", a, b)
                ref_sq[i:i + rows] += np.einsum("ij,ij->i", a, a)
                cand_sq[i:i + rows] += np.einsum("ij,ij->i", b, b)
                a -= b
                self.err_sq += float(np.einsum("ij,ij->", a, a))
                np.abs(a, out=a)
                self.abs_sum += float(a.sum())
                self.max_abs = max(self.max_abs, float(a.max(initial=0.0)))
        self.dot, self.ref_sq, self.cand_sq = (self.dot + float(dot.sum()), self.ref_sq + float(ref_sq.sum()),
                                               self.cand_sq + float(cand_sq.sum()))
        norms = np.sqrt(ref_sq) * np.sqrt(cand_sq)
        both_zero = (ref_sq == 0) & (cand_sq == 0)  # the same
        per_sample = np.where(norms > 0, dot / np.where(norms > 0, norms, 1), np.where(both_zero, 1.0, 0.0))
        self.count += r.size
        self.min_sample_cosine = min(self.min_sample_cosine, float(per_sample.min(initial=1.0)))
        self.sample_cosine_sum += float(per_sample.sum())
        self.samples += n

    def _regions(self, ref: np.ndarray, cand: np.ndarray, samples: int) -> None:
        """A batch of probability maps: their regions matched, and the pixels
        above the threshold (a detail: pixels move where regions hold)."""
        if not regions.map_shape(ref.shape) or kinds.sample_axis(ref.shape, samples) != 0:
            return
        found, in_ref, in_cand = regions.batch_counts(ref, np.clip(np.nan_to_num(cand), 0.0, 1.0))
        self.map_batches += 1
        self.regions = [self.regions[0] + found, self.regions[1] + in_ref, self.regions[2] + in_cand]
        rp, cp = ref > regions.THRESHOLD, cand > regions.THRESHOLD
        self.pixels_same += int(np.count_nonzero(rp & cp))
        self.pixels += int(np.count_nonzero(rp | cp))

    def _top1(self, r: np.ndarray, c: np.ndarray) -> None:
        """Top-1 along the last (class) axis: per sample for class scores; per
        position, and per sample with runs merged, for sequences."""
        ra, ca = r.argmax(axis=-1), c.argmax(axis=-1)
        if self.kind == kinds.CLASS_SCORES:
            ra, ca = ra.reshape(len(ra), -1), ca.reshape(len(ca), -1)
            same = (ra == ca).all(axis=1)
            self.top1_same += int(same.sum())
            if kinds.is_distribution(r):
                # Probabilities: a program also reads how sure the answer is (magika falls back to a
                # generic label under 0.5, rapidocr rotates a line only above 0.9).
                self.confidence = True
                rp, cp = r.max(axis=-1).reshape(len(r), -1), c.max(axis=-1).reshape(len(c), -1)
                for t in kinds.CONFIDENCE_THRESHOLDS:
                    same &= ((rp >= t) == (cp >= t)).all(axis=1)
            self.same += int(same.sum())
            self.total += len(ra)
            return
        self.positions_same += int((ra == ca).sum())
        self.positions += int(ra.size)
        if self.background is None:
            self.background = int(np.bincount(ra.ravel()).argmax())
        for a, b in zip(ra.reshape(len(ra), -1), ca.reshape(len(ca), -1)):
            ma, mb = _decoded(a, self.background), _decoded(b, self.background)
            self.same += int(ma.shape == mb.shape and bool((ma == mb).all()))
            self.total += 1

    def _neighbours(self) -> tuple[float | None, float | None, float | None]:
        """For each sample, is its nearest neighbour (cosine) among the other
        samples the same under both models (up to :data:`NEIGHBOUR_TIE`, and
        strictly); and the mean overlap of the k nearest."""
        n = len(self.ref_vectors)
        if n < 3:
            return None, None, None

        def similarities(vectors: list[np.ndarray]) -> np.ndarray:
            v = np.asarray(vectors, dtype=np.float64)
            v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-30)
            sim = v @ v.T
            np.fill_diagonal(sim, -np.inf)
            return sim

        ref_sim, cand_sim = similarities(self.ref_vectors), similarities(self.cand_vectors)
        ref_rank = np.argsort(-ref_sim, axis=1, kind="stable")
        cand_rank = np.argsort(-cand_sim, axis=1, kind="stable")
        rows = np.arange(n)
        # The candidate's nearest, as the original sees it, against the original's own nearest.
        kept = ref_sim[rows, cand_rank[:, 0]] >= ref_sim[rows, ref_rank[:, 0]] - NEIGHBOUR_TIE
        strict = float(np.mean(ref_rank[:, 0] == cand_rank[:, 0]))
        k = min(NEIGHBOURS_K, n - 1)
        overlap = float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(ref_rank, cand_rank)]))
        return float(np.mean(kept)), strict, overlap

    def result(self) -> dict[str, Any]:
        denom = math.sqrt(self.ref_sq * self.cand_sq)
        if denom > 0:
            cosine = self.dot / denom
        else:
            cosine = 1.0 if self.ref_sq == self.cand_sq else 0.0
        if self.nonfinite:
            cosine = 0.0
        sqnr = math.inf if self.err_sq == 0 else (10 * math.log10(self.ref_sq / self.err_sq) if self.ref_sq > 0 else -math.inf)
        kind = self.kind or kinds.DENSE
        agreement: float | None = None
        extra: dict[str, Any] = {}
        top1 = None
        if kind == kinds.CLASS_SCORES and self.total:
            agreement, top1 = self.same / self.total, self.top1_same / self.total
        elif kind == kinds.SEQUENCE_SCORES and self.total:
            agreement = self.same / self.total
            top1 = self.positions_same / max(self.positions, 1)
            extra = {"position_agreement": top1}
        elif kind == kinds.PROBABILITIES and self.decisions:
            agreement = self.same / self.total if self.total else 1.0
            extra = {"decision_agreement": self.decisions_same / self.decisions}
        elif kind == kinds.EMBEDDING:
            agreement, strict, overlap = self._neighbours()
            extra = {"nearest_neighbour_unchanged": strict, f"neighbour_top{NEIGHBOURS_K}_overlap": overlap}
        elif kind == kinds.EXACT and self.total:
            agreement = self.same / self.total
        elif kind == kinds.PROBABILITY_MAP and self.map_batches:
            found, in_ref, in_cand = self.regions
            agreement = 2 * found / (in_ref + in_cand) if in_ref + in_cand else 1.0
            extra = {"regions_matched": found, "regions_original": in_ref, "regions_candidate": in_cand,
                     "pixel_iou": self.pixels_same / self.pixels if self.pixels else 1.0}
        elif kind == kinds.DETECTIONS and self.detection_batches:
            agreement = self.same / self.total if self.total else 1.0
        if self.nonfinite and agreement is not None:
            agreement = min(agreement, 1.0 - self.nonfinite / max(self.count, 1))
        return {
            "cosine": round(min(max(cosine, -1.0), 1.0), 9),
            "min_sample_cosine": round(self.min_sample_cosine, 9),
            "mean_sample_cosine": round(self.sample_cosine_sum / max(self.samples, 1), 9),
            "max_abs_error": self.max_abs,
            "mean_abs_error": self.abs_sum / max(self.count, 1),
            "sqnr_db": None if math.isinf(sqnr) else round(sqnr, 4),
            "relative_error": self.err_sq / self.ref_sq if self.ref_sq > 0 else (0.0 if self.err_sq == 0 else None),
            "top1_agreement": top1,
            "nonfinite_values": self.nonfinite,
            "kind": kind,
            "agreement": None if agreement is None else round(agreement, 9),
            "agreement_of": (kinds.CONFIDENT_CLASS_AGREEMENT if kind == kinds.CLASS_SCORES and self.confidence
                             else kinds.AGREEMENT[kind]) if agreement is not None else None,
            **extra,
        }


def correct_top1(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per sample: is the top-1 prediction the label."""
    logits = np.asarray(logits)
    predictions = logits.reshape(len(labels), -1).argmax(axis=1)
    return predictions == labels


def answers_changed_points(metrics: dict[str, Any]) -> float:
    """How much of an output's answers changed, in points (percent): 100 x (1 -
    agreement); for an output with no answer to compare (dense maps, too few
    samples for neighbours), 100 x (1 - the lowest per-sample cosine)."""
    if metrics.get("agreement") is not None:
        return max(100.0 * (1.0 - metrics["agreement"]), 0.0)
    return max(100.0 * (1.0 - metrics["min_sample_cosine"]), 0.0)
