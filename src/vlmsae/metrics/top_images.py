"""Highest-activating images (HAI) of every neuron, streamed with bounded memory.

Memory is ``O(K·k)`` plus one chunk: each chunk's candidates are merged with the running
top-k, after dropping every candidate below its neuron's current k-th value.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from vlmsae.core import dist
from vlmsae.core.errors import UserError
from vlmsae.core.progress import tqdm
from vlmsae.metrics._source import Rows, is_sparse, iter_images, n_cols, n_rows, rank_span

MIN_ACTIVE = 16
"""The paper's rule: a neuron enters uniqueness, hierarchy and the "most monosemantic"
rankings only if its 16th highest activation is non-zero (it fires on >= 16 images)."""


class TopImages(NamedTuple):
    """Top-k images per neuron, best first."""

    indices: np.ndarray
    """``int64 [K, k]``: image indices; -1 where a sparse neuron has fewer than k active images."""
    values: np.ndarray
    """``float32 [K, k]``: activations (0 in the slots of missing images of sparse codes)."""

    @property
    def kth_value(self) -> np.ndarray:
        """``[K]``: the k-th largest value (the paper drops neurons where it is 0 as dead)."""
        return self.values[:, -1]

    def kept(self, min_active: int = MIN_ACTIVE) -> np.ndarray:
        """``bool [K]``: neurons the paper's rule keeps; see :func:`kept_neurons`."""
        return kept_neurons(self, min_active)


def kept_neurons(top: TopImages | np.ndarray, min_active: int = MIN_ACTIVE) -> np.ndarray:
    """``bool [K]``: neurons whose ``min_active``-th highest activation is non-zero.

    This is the paper's rule (its code keeps neurons whose 16th top value ``!= 0``, so a raw
    neuron with a negative 16th value stays). Given :class:`TopImages` the rule reads the
    values; given a bare ``[K, k]`` index array it can only see missing images (``-1``), which
    is the same rule for sparse SAE codes. ``min_active=0`` keeps every neuron (the sets may
    then be partial or empty).
    """
    idx = np.asarray(top.indices if isinstance(top, TopImages) else top)
    if min_active < 0:
        raise UserError(f"min_active must be >= 0 (0 keeps every neuron), got {min_active}")
    if min_active == 0:
        return np.ones(len(idx), bool)
    if min_active > idx.shape[1]:
        raise UserError(
            f"min_active={min_active} needs at least {min_active} top images per neuron, but "
            f"the top-image sets hold {idx.shape[1]}; compute them with k >= {min_active} "
            f"(top-images --k {min_active}) or lower min_active (--min-active)"
        )
    kept = idx[:, min_active - 1] >= 0
    if isinstance(top, TopImages):
        kept &= np.asarray(top.values)[:, min_active - 1] != 0
    return kept


def _merge(
    val_Kk: np.ndarray, idx_Kk: np.ndarray, cols: np.ndarray, vals: np.ndarray, imgs: np.ndarray
) -> None:
    """Merge candidates (neuron, value, image) into the running top-k, in place."""
    n_k, k = val_Kk.shape
    keep = vals > val_Kk[cols, -1]
    cols, vals, imgs = cols[keep], vals[keep], imgs[keep]
    if cols.size == 0:
        return
    touched = np.unique(cols)
    all_c = np.concatenate([np.repeat(touched, k), cols])
    all_v = np.concatenate([val_Kk[touched].ravel(), vals])
    all_i = np.concatenate([idx_Kk[touched].ravel(), imgs])
    order = np.lexsort((all_i, -all_v, all_c))  # by neuron, value desc, image asc
    all_c, all_v, all_i = all_c[order], all_v[order], all_i[order]
    first = np.searchsorted(all_c, all_c, side="left")
    rank = np.arange(len(all_c)) - first
    sel = rank < k
    val_Kk[all_c[sel], rank[sel]] = all_v[sel]
    idx_Kk[all_c[sel], rank[sel]] = all_i[sel]


def top_images(
    activations: Rows,
    k: int = 16,
    *,
    image_index: np.ndarray | None = None,
    aggregate: str = "max",
    chunk_rows: int = 1 << 16,
    progress: bool = False,
) -> TopImages:
    """Top-``k`` images of every neuron.

    Args:
        activations: ``[R, K]`` rows (dense, CSR codes, tensor or store).
        k: images kept per neuron.
        image_index: ``[R]`` image of every row (non-decreasing; a store's ``rows[:, 0]``);
            rows of one image are aggregated with ``aggregate`` (``"max"`` or ``"mean"``).
            Without it every row is an image.
        chunk_rows: rows read at a time.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    n_k = n_cols(activations)
    sparse = is_sparse(activations)
    fill = 0.0 if sparse else -np.inf
    val_Kk = np.full((n_k, k), fill, np.float32)
    idx_Kk = np.full((n_k, k), -1, np.int64)
    dist.init_from_env()  # under torchrun: each rank streams its share, then all merge
    span = rank_span(n_rows(activations), image_index)
    chunks = iter_images(activations, chunk_rows, image_index, aggregate, np.float32, span=span)
    for images, block in tqdm(chunks, desc="top images", disable=not progress, leave=False):
        if sp.issparse(block):
            rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
            _merge(val_Kk, idx_Kk, block.indices.astype(np.int64), block.data, images[rows])
        else:
            if block.shape[0] > k:  # the chunk's own top-k per neuron first: k·K candidates
                rows_kK = np.argpartition(-block, k - 1, axis=0)[:k]
                block = np.take_along_axis(block, rows_kK, axis=0)
                images = images[rows_kK].ravel()
            else:
                images = np.repeat(images, n_k)
            cols = np.tile(np.arange(n_k), block.shape[0])
            _merge(val_Kk, idx_Kk, cols, block.ravel(), images)
    if dist.is_distributed():
        val_Kk, idx_Kk = _merge_ranks(val_Kk, idx_Kk, fill)
    return TopImages(idx_Kk, val_Kk)


def _merge_ranks(val_Kk: np.ndarray, idx_Kk: np.ndarray, fill: float):
    """Every rank's top-k merged in rank (= image) order: ties keep the earlier image, as
    one process streaming all rows does."""
    parts = dist.all_gather_object((val_Kk, idx_Kk))
    out_val, out_idx = np.full_like(val_Kk, fill), np.full_like(idx_Kk, -1)
    cols = np.repeat(np.arange(val_Kk.shape[0]), val_Kk.shape[1])
    for vals, imgs in parts:
        found = imgs.ravel() >= 0
        _merge(out_val, out_idx, cols[found], vals.ravel()[found], imgs.ravel()[found])
    return out_val, out_idx
