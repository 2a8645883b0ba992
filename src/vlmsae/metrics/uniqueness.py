"""Uniqueness of neurons: pairwise Jaccard similarity of their top-image sets.

Intersections come from one sparse incidence product ``M Mᵀ`` (neurons × images), taken
in blocks of neurons, never a Python loop over K² pairs.

As in the paper's code, only neurons whose 16th highest activation is non-zero take part
(``min_active``, see :func:`~vlmsae.metrics.top_images.kept_neurons`), every pair of them
counts, and the counts are of pairs with Jaccard strictly above 0.0, 0.1, …, 0.9.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from vlmsae.metrics.top_images import MIN_ACTIVE, TopImages, kept_neurons

THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class Uniqueness(NamedTuple):
    thresholds: tuple[float, ...]
    """Jaccard thresholds."""
    n_pairs_above: np.ndarray
    """``int64 [T]``: unordered pairs of kept neurons with Jaccard > each threshold."""
    max_jaccard: np.ndarray
    """``float64 [K]``: each kept neuron's largest Jaccard with another kept neuron (0 if none;
    NaN for neurons the rule drops)."""
    n_pairs: int
    """All unordered pairs of kept neurons with a non-empty top set."""
    kept: np.ndarray
    """``bool [K]``: the neurons that took part (``min_active`` rule)."""

    @property
    def n_dropped(self) -> int:
        """Neurons left out by the ``min_active`` rule."""
        return int((~self.kept).sum())


def incidence(top_idx_Kk: np.ndarray, n_images: int | None = None) -> sp.csr_matrix:
    """Binary ``[K, n_images]`` matrix of top-image sets (-1 entries are ignored)."""
    top = np.asarray(top_idx_Kk, np.int64)
    n_images = max(int(top.max()) + 1, 0) if n_images is None else n_images
    rows, slots = np.nonzero(top >= 0)
    m = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, top[rows, slots])), shape=(len(top), n_images)
    )
    m.data[:] = 1.0  # an image listed twice counts once
    return m


def uniqueness(
    top: TopImages | np.ndarray,
    thresholds: tuple[float, ...] = THRESHOLDS,
    block: int = 4096,
    *,
    min_active: int = MIN_ACTIVE,
) -> Uniqueness:
    """Pairwise Jaccard of top-image sets: counts above thresholds and per-neuron max.

    Args:
        top: :class:`TopImages` (best: the rule then sees the activations) or ``int [K, k]``
            image indices (-1: no image).
        min_active: the paper's rule, 16: neurons whose ``min_active``-th top activation is 0
            are left out; 0 keeps every neuron with its partial set.
    """
    kept_K = kept_neurons(top, min_active)
    idx = np.asarray(top.indices if isinstance(top, TopImages) else top, np.int64)
    m = incidence(np.where(kept_K[:, None], idx, -1))
    size_K = np.asarray(m.sum(axis=1), np.float64).ravel()
    n_k = m.shape[0]
    counts = np.zeros(len(thresholds), np.int64)
    max_j = np.zeros(n_k)
    mt = m.T.tocsr()
    for lo in range(0, n_k, block):
        inter = (m[lo : lo + block] @ mt).tocoo()
        a, b = inter.row + lo, inter.col
        keep = a != b
        a, b, v = a[keep], b[keep], inter.data[keep]
        v = v.astype(np.float64)
        jac = v / (size_K[a] + size_K[b] - v)
        np.maximum.at(max_j, a, jac)
        upper = a < b
        counts += (jac[upper][:, None] > np.asarray(thresholds)[None, :]).sum(axis=0)
    live = int((size_K > 0).sum())
    max_j[~kept_K] = np.nan
    return Uniqueness(tuple(thresholds), counts, max_j, live * (live - 1) // 2, kept_K)
