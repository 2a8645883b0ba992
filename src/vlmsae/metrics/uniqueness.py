"""Uniqueness of neurons: pairwise Jaccard overlap of their highest-activating images.

Intersections of all K² pairs come from one sparse product ``B Bᵀ`` of the binary
neuron × image incidence matrix ``B`` (nnz ≤ K·n), never a Python loop over pairs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class Uniqueness(NamedTuple):
    """Overlap statistics of neurons' top-image sets."""

    n_neurons: int
    """Neurons compared (those with a full set of top images when ``drop_dead``)."""
    pairs_above: dict[str, int]
    """Threshold -> number of neuron pairs (k < l) whose Jaccard index exceeds it."""
    max_jaccard: np.ndarray
    """``float64 [K]``: each neuron's largest Jaccard index with any other neuron (NaN for
    neurons left out)."""

    @property
    def n_pairs(self) -> int:
        return self.n_neurons * (self.n_neurons - 1) // 2


def jaccard_pairs(top_KT: np.ndarray) -> sp.coo_matrix:
    """Jaccard index of every pair of neurons whose top-image sets intersect, as the upper
    triangle (k < l) of a sparse ``[K, K]`` matrix. ``-1`` entries pad and are ignored."""
    k, t = top_KT.shape
    rows, cols = np.nonzero(top_KT >= 0)
    n_img = int(top_KT.max()) + 1 if rows.size else 0
    incidence = sp.csr_matrix(
        (np.ones(rows.size, np.int32), (rows, top_KT[rows, cols])), shape=(k, max(n_img, 1))
    )
    incidence.data[:] = 1  # an image listed twice for one neuron counts once
    incidence.sum_duplicates()
    incidence.data[:] = 1
    sizes = np.asarray(incidence.sum(axis=1)).ravel()
    inter = sp.triu(incidence @ incidence.T, k=1).tocoo()
    union = sizes[inter.row] + sizes[inter.col] - inter.data
    return sp.coo_matrix((inter.data / union, (inter.row, inter.col)), shape=(k, k))


def uniqueness(
    top_KT: np.ndarray,
    top_values_KT: np.ndarray | None = None,
    *,
    drop_dead: bool = True,
    thresholds: tuple[float, ...] = THRESHOLDS,
) -> Uniqueness:
    """Count neuron pairs whose top-image sets overlap by more than each threshold.

    Args:
        top_KT: top image indices per neuron (``TopImages.images``).
        top_values_KT: their values; with ``drop_dead``, neurons whose last value is 0 or
            whose set is incomplete are left out (the paper's dead-neuron rule).
        drop_dead: leave out dead neurons (see above).
        thresholds: Jaccard thresholds reported.
    """
    top_KT = np.asarray(top_KT)
    alive = np.ones(top_KT.shape[0], bool)
    if drop_dead:
        alive &= top_KT[:, -1] >= 0
        if top_values_KT is not None:
            alive &= np.asarray(top_values_KT)[:, -1] > 0
    masked = np.where(alive[:, None], top_KT, -1)
    jac = jaccard_pairs(masked)
    counts = {str(t): int((jac.data > t).sum()) for t in thresholds}
    best = np.zeros(top_KT.shape[0])
    np.maximum.at(best, jac.row, jac.data)
    np.maximum.at(best, jac.col, jac.data)
    best[~alive] = np.nan
    return Uniqueness(int(alive.sum()), counts, best)
