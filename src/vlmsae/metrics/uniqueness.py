"""Uniqueness of neurons: pairwise Jaccard similarity of their top-image sets.

Intersections come from one sparse incidence product ``M Mᵀ`` (neurons × images), taken
in blocks of neurons, never a Python loop over K² pairs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class Uniqueness(NamedTuple):
    thresholds: tuple[float, ...]
    """Jaccard thresholds."""
    n_pairs_above: np.ndarray
    """``int64 [T]``: unordered neuron pairs with Jaccard > each threshold."""
    max_jaccard: np.ndarray
    """``float64 [K]``: each neuron's largest Jaccard with another neuron (0 if none)."""
    n_pairs: int
    """All unordered pairs of neurons with a non-empty top set."""


def incidence(top_idx_Kk: np.ndarray, n_images: int | None = None) -> sp.csr_matrix:
    """Binary ``[K, n_images]`` matrix of top-image sets (-1 entries are ignored)."""
    top = np.asarray(top_idx_Kk, np.int64)
    n_images = int(top.max()) + 1 if n_images is None else n_images
    rows, slots = np.nonzero(top >= 0)
    m = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, top[rows, slots])), shape=(len(top), n_images)
    )
    m.data[:] = 1.0  # an image listed twice counts once
    return m


def uniqueness(
    top_idx_Kk: np.ndarray, thresholds: tuple[float, ...] = THRESHOLDS, block: int = 4096
) -> Uniqueness:
    """Pairwise Jaccard of top-image sets: counts above thresholds and per-neuron max."""
    m = incidence(top_idx_Kk)
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
    return Uniqueness(tuple(thresholds), counts, max_j, live * (live - 1) // 2)
