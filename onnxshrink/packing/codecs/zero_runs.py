"""Zero runs: a tensor as the lengths of its zero runs plus its nonzero values.

A value counts as zero when all its ``word`` bytes are zero. Run symbols are
bytes: ``r < 255`` means r zero values followed by the next nonzero value;
``255`` means 255 zero values and no value yet. Zeros after the last nonzero
value are counted separately (``tail``). Used by ``rle`` and ``rle+huffman``.
"""

from __future__ import annotations

import numpy as np

from onnxshrink.errors import PackError

ESCAPE = 255


def nonzero_positions(data: np.ndarray, word: int) -> np.ndarray:
    """Indices of the values of ``data`` (bytes, ``word`` per value) that are not all-zero."""
    if word in (1, 2, 4, 8):
        return np.flatnonzero(data.view(f"<u{word}"))
    return np.flatnonzero(data.reshape(-1, word).any(axis=1))


def zero_run_lengths(positions: np.ndarray, n_values: int, before: int = -1) -> tuple[np.ndarray, int]:
    """Run symbols (uint8) for nonzero ``positions`` among ``n_values``, and the
    tail; ``before``: the nonzero position preceding these (-1: none)."""
    if positions.size == 0:
        return np.zeros(0, dtype=np.uint8), n_values - 1 - before
    gaps = np.empty_like(positions)
    gaps[0] = positions[0] - before
    np.subtract(positions[1:], positions[:-1], out=gaps[1:])
    gaps -= 1
    tail = n_values - 1 - int(positions[-1])
    if int(gaps.max()) < ESCAPE:
        return gaps.astype(np.uint8), tail
    escapes, rest = np.divmod(gaps, ESCAPE)
    ends = np.cumsum(escapes + 1) - 1
    runs = np.full(int(ends[-1]) + 1, ESCAPE, dtype=np.uint8)
    runs[ends] = rest
    return runs, tail


def split(data: np.ndarray, word: int) -> tuple[np.ndarray, int, np.ndarray]:
    """(run symbols, tail, nonzero values as bytes) of ``data``, in chunks that
    stay in cache (positions are int64: 8 bytes for every byte of int8 data)."""
    n_values = data.size // word
    values = data.reshape(-1, word)
    runs, kept, before = [], [], -1
    for start in range(0, n_values, _CHUNK):
        chunk = values[start : start + _CHUNK].reshape(-1)
        positions = nonzero_positions(chunk, word)
        if positions.size == 0:
            continue
        positions += start
        r, _ = zero_run_lengths(positions, n_values, before)
        runs.append(r)
        kept.append(values[positions].reshape(-1))
        before = int(positions[-1])
    tail = n_values - 1 - before
    if not runs:
        return np.zeros(0, dtype=np.uint8), tail, np.zeros(0, dtype=np.uint8)
    return np.concatenate(runs), tail, np.concatenate(kept)


_CHUNK = 1 << 18


def run_positions(runs: np.ndarray, tail: int, n_values: int, what: str) -> np.ndarray:
    """Inverse of :func:`zero_run_lengths`: the nonzero positions (int64).

    Raises PackError when runs, values and tail do not add up to ``n_values``.
    """
    if runs.size and runs[-1] == ESCAPE:
        raise PackError(f"corrupt {what}: the zero runs end in an escape")
    ends = runs.astype(np.int64)
    escaped = bool(runs.size) and int(runs.max()) == ESCAPE
    if escaped:
        ends[runs == ESCAPE] -= 1  # an escape advances 255, not run + 1
    ends += 1
    np.cumsum(ends, out=ends)
    covered = (int(ends[-1]) if ends.size else 0) + tail
    if covered != n_values:
        raise PackError(f"corrupt {what}: zero runs cover {covered} values, not {n_values}")
    ends -= 1
    return ends[runs != ESCAPE] if escaped else ends
