"""Hessian-based pruning with reconstruction: layer-wise OBS as in SparseGPT.

For a layer ``Y = W X`` with input Hessian ``H = XᵀX``, columns (input
features) are visited in order; each weight chosen for pruning is zeroed and
its error ``(w - 0) / [H⁻¹]_qq`` is spread over the not-yet-visited columns
through the upper Cholesky factor of ``H⁻¹`` (Frantar & Alistarh, 2023).
Masks are picked per block of columns by ``w² / [U]_qq²``, so the pruned set
adapts to the updates made so far. Work is vectorised over groups and rows;
the only Python loop is over the columns of a block.
"""

from __future__ import annotations

import weakref
from typing import Callable

import numpy as np

from onnxshrink.stats.blas import single_threaded
from onnxshrink.stats.layer_inputs import HESSIAN_MAX_FEATURES as MAX_FEATURES  # noqa: F401  (re-exported)
from onnxshrink.stats.masks import lowest_per_row, n_m_mask


# LAPACK factorisations run on blocks of at most this size, the rest is
# matmul: small blocks stay on OpenBLAS's single-thread path even where
# blas.single_threaded cannot reach the library (see blas.py for why).
_BLOCK = 64


def _small_inverse(a: np.ndarray) -> np.ndarray:
    """Inverses of small square matrices [g, n, n] (n <= _BLOCK)."""
    eye = np.broadcast_to(np.eye(a.shape[-1]), a.shape)
    return np.linalg.solve(a, eye)


def cholesky_lower(a: np.ndarray) -> np.ndarray:
    """Lower Cholesky factors of the SPD matrices ``a`` [g, n, n] (blocked, right-looking)."""
    a = np.array(a, dtype=np.float64, copy=True)
    n = a.shape[-1]
    lower = np.zeros_like(a)
    for k in range(0, n, _BLOCK):
        e = min(k + _BLOCK, n)
        lkk = np.linalg.cholesky(a[:, k:e, k:e])
        lower[:, k:e, k:e] = lkk
        if e < n:
            lik = np.matmul(a[:, e:, k:e], _small_inverse(lkk).transpose(0, 2, 1))
            lower[:, e:, k:e] = lik
            a[:, e:, e:] -= np.matmul(lik, lik.transpose(0, 2, 1))
    return lower


def lower_inverse(lower: np.ndarray) -> np.ndarray:
    """Inverses of lower-triangular matrices [g, n, n], by halves."""
    n = lower.shape[-1]
    if n <= _BLOCK:
        return np.tril(_small_inverse(lower))
    h = (n // 2 + _BLOCK - 1) // _BLOCK * _BLOCK
    top = lower_inverse(lower[:, :h, :h])
    bottom = lower_inverse(lower[:, h:, h:])
    out = np.zeros_like(lower)
    out[:, :h, :h] = top
    out[:, h:, h:] = bottom
    out[:, h:, :h] = -np.matmul(np.matmul(bottom, lower[:, h:, :h]), top)
    return out


def inverse_cholesky(hessian: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """Upper Cholesky factors ``U`` of ``(H + λI)⁻¹ = UᵀU`` per group, and the
    mask of dead features (never non-zero in the data). Damping grows until
    ``H`` is positive definite."""
    h = np.array(hessian, dtype=np.float64, copy=True)
    diag = np.einsum("gii->gi", h)
    dead = diag <= 0
    gi, fi = np.nonzero(dead)
    h[gi, fi, fi] = 1.0
    scale = np.where(diag.mean(axis=1) > 0, diag.mean(axis=1), 1.0)
    eye = np.eye(h.shape[-1])
    # With J the order reversal: if JHJ = LLᵀ then H⁻¹ = UᵀU for U = J L⁻¹ J (upper).
    flipped = h[:, ::-1, ::-1]
    for attempt in range(6):
        lam = damp * (10.0 ** attempt)
        try:
            lower = cholesky_lower(flipped + lam * scale[:, None, None] * eye)
        except np.linalg.LinAlgError:
            continue
        return np.ascontiguousarray(lower_inverse(lower)[:, ::-1, ::-1]), dead
    raise np.linalg.LinAlgError("the Hessian is not positive definite even with heavy damping")


# The last factorisation, for the Hessian array it came from: the sensitivity
# scan prunes each layer at a dozen levels in a row, all from one Hessian.
_last_factor: tuple[weakref.ref, float, np.ndarray, np.ndarray] | None = None


def _inverse_cholesky_of(hessian: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`inverse_cholesky`, reused while the same ``hessian`` array (not
    a copy; arrays are not changed in place here) comes back with the same ``damp``."""
    global _last_factor
    if _last_factor is not None:
        ref, last_damp, u, dead = _last_factor
        if ref() is hessian and last_damp == damp:
            return u, dead
    u, dead = inverse_cholesky(hessian, damp)
    try:
        _last_factor = (weakref.ref(hessian), damp, u, dead)
    except TypeError:  # not weak-referenceable (a view of something else is fine; a list is not)
        _last_factor = None
    return u, dead


@single_threaded()
def obs_prune(
    weights: np.ndarray,
    hessian: np.ndarray,
    *,
    sparsity: float = 0.0,
    n_m: tuple[int, int] | None = None,
    block_size: int = 128,
    damp: float = 0.01,
    quantize: Callable[[np.ndarray, int], np.ndarray] | None = None,
) -> np.ndarray:
    """Prune ``weights`` [groups, rows, features] to ``sparsity`` (or an N:M
    pattern along features) and update the kept weights to compensate.
    ``hessian`` is [groups, features, features]. Returns a new float64 array
    whose pruned entries are exactly zero.

    With ``quantize`` (kept values of one column [groups, rows] and its
    feature index -> those values on the quantization grid, zero kept zero),
    each kept weight is rounded in the same sweep and its rounding error is
    spread like a pruning error: GPTQ at ``sparsity=0``, SparseGPT's joint
    prune-and-quantize otherwise."""
    w = np.array(weights, dtype=np.float64, copy=True)
    u, dead = _inverse_cholesky_of(hessian, damp)
    gi, fi = np.nonzero(dead)
    w[gi, :, fi] = 0.0
    groups, rows, features = w.shape
    if n_m is not None:
        block_size = max(n_m[1], block_size - block_size % n_m[1])
    for start in range(0, features, block_size):
        stop = min(start + block_size, features)
        count = stop - start
        w1 = w[:, :, start:stop].copy()
        q1 = np.zeros_like(w1)
        err1 = np.zeros_like(w1)
        u1 = u[:, start:stop, start:stop]
        d = np.einsum("gii->gi", u1)  # [g, count]
        if n_m is None:
            scores = w1**2 / (d[:, None, :] ** 2)
            mask1 = lowest_per_row(scores.reshape(groups, -1), sparsity).reshape(w1.shape)
        else:
            mask1 = np.zeros(w1.shape, bool)
        for i in range(count):
            if n_m is not None and i % n_m[1] == 0:
                part = w1[:, :, i:i + n_m[1]] ** 2 / (d[:, None, i:i + n_m[1]] ** 2)
                mask1[:, :, i:i + n_m[1]] = n_m_mask(part, *n_m)
            col = w1[:, :, i]
            q = np.where(mask1[:, :, i], 0.0, col)
            if quantize is not None:
                q = quantize(q, start + i)
            q1[:, :, i] = q
            err = (col - q) / d[:, None, i]
            w1[:, :, i:] -= err[:, :, None] * u1[:, None, i, i:]
            err1[:, :, i] = err
        w[:, :, start:stop] = q1
        if stop < features:
            w[:, :, stop:] -= np.matmul(err1, u[:, start:stop, stop:])
    return w


@single_threaded()
def reconstruction_error(original: np.ndarray, pruned: np.ndarray, hessian: np.ndarray) -> float:
    """Relative output error ``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` of a layer, from its Hessian."""
    delta = pruned - original
    num = float((np.matmul(delta, hessian) * delta).sum())
    den = float((np.matmul(original, hessian) * original).sum())
    return num / den if den > 0 else 0.0
