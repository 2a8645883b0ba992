"""Highest-activating images (HAI) of every neuron, streamed with bounded memory.

Rows are read in chunks; each chunk's candidates are merged with the running top-``n``
of every neuron, so memory is ``O(K·n + chunk)`` whatever the number of rows. Sparse
codes (CSR) are handled as (neuron, image, value) triples and never densified. When a
store holds several rows per image (tokens), rows are aggregated per image first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

AGGREGATES = ("max", "mean")


class TopImages(NamedTuple):
    """The ``n`` highest-activating images of every neuron, best first."""

    images: np.ndarray
    """``int64 [K, n]``: image indices; ``-1`` pads a neuron with fewer than ``n``
    candidates (sparse codes: images where it is positive)."""
    values: np.ndarray
    """``float32 [K, n]``: their activations; ``values[:, -1]`` is the ``n``-th value
    (0 marks the neurons the paper drops as dead)."""


def _n_rows(acts: Any) -> int:
    return len(acts) if hasattr(acts, "manifest") else int(acts.shape[0])


def _read(acts: Any, start: int, stop: int) -> Any:
    block = acts.read(start, stop) if hasattr(acts, "manifest") else acts[start:stop]
    if hasattr(block, "detach"):  # torch tensor
        block = block.detach().float().cpu().numpy()
    return sp.csr_matrix(block) if sp.issparse(block) else np.asarray(block, np.float32)


def _merge_sparse(best_img, best_val, neuron, img, val) -> None:
    """Merge (neuron, image, value) candidates into the running top, in place. Ties go to
    the lower image index, so the result does not depend on the chunking."""
    k, n = best_img.shape
    kept = np.nonzero(best_img >= 0)
    all_neuron = np.concatenate([kept[0], neuron])
    all_img = np.concatenate([best_img[kept], img])
    all_val = np.concatenate([best_val[kept], val])
    order = np.lexsort((all_img, -all_val, all_neuron))
    all_neuron, all_img, all_val = all_neuron[order], all_img[order], all_val[order]
    rank = np.arange(len(all_neuron)) - np.searchsorted(all_neuron, all_neuron)
    sel = rank < n
    best_img.fill(-1)
    best_val.fill(0)
    best_img[all_neuron[sel], rank[sel]] = all_img[sel]
    best_val[all_neuron[sel], rank[sel]] = all_val[sel]


def _merge_dense(best_img, best_val, chunk_CK: np.ndarray, image_ids: np.ndarray) -> None:
    """Merge a dense chunk ``[C, K]`` into the running top, in place (ties: lower image)."""
    n = best_img.shape[1]
    cand_val = np.concatenate([best_val, chunk_CK.T], axis=1)
    cand_img = np.concatenate(
        [best_img, np.broadcast_to(image_ids, (best_img.shape[0], len(image_ids)))], axis=1
    )
    cand_val = np.where(cand_img >= 0, cand_val, -np.inf)
    order = np.lexsort((cand_img, -cand_val), axis=1)[:, :n]
    val = np.take_along_axis(cand_val, order, axis=1)
    img = np.take_along_axis(cand_img, order, axis=1)
    empty = ~np.isfinite(val)
    best_val[:] = np.where(empty, 0, val)
    best_img[:] = np.where(empty, -1, img)


def aggregate_per_image(block: Any, image_R: np.ndarray, how: str) -> tuple[Any, np.ndarray]:
    """Rows of the same image collapsed to one (``max`` or ``mean``): (block, image ids)."""
    images, inverse, counts = np.unique(image_R, return_inverse=True, return_counts=True)
    if len(images) == len(image_R):
        return block, images
    if sp.issparse(block):
        coo = block.tocoo()
        group = inverse[coo.row]
        shape = (len(images), block.shape[1])
        if how == "mean":
            summed = sp.csr_matrix((coo.data, (group, coo.col)), shape=shape)
            return sp.csr_matrix(summed.multiply(1.0 / counts[:, None])), images
        # max of codes >= 0: the largest stored value of each (image, neuron)
        order = np.lexsort((-coo.data, coo.col, group))
        g, c, v = group[order], coo.col[order], coo.data[order]
        first = np.r_[True, (g[1:] != g[:-1]) | (c[1:] != c[:-1])]
        return sp.csr_matrix((v[first], (g[first], c[first])), shape=shape), images
    out = np.full((len(images), block.shape[1]), -np.inf if how == "max" else 0.0, np.float32)
    if how == "max":
        np.maximum.at(out, inverse, block)
    else:
        np.add.at(out, inverse, block)
        out /= counts[:, None]
    return out, images


def _chunks(acts: Any, image_R: np.ndarray | None, chunk_rows: int) -> Iterator[tuple]:
    """(block, image ids of its rows), chunk boundaries on image boundaries."""
    n, start = _n_rows(acts), 0
    while start < n:
        stop = min(n, start + chunk_rows)
        if image_R is not None and stop < n:
            stop = int(np.searchsorted(image_R, image_R[stop - 1], side="right"))
        ids = np.arange(start, stop) if image_R is None else np.asarray(image_R[start:stop])
        yield _read(acts, start, stop), ids
        start = stop


def top_images(
    acts: Any,
    n: int = 16,
    *,
    image_index: np.ndarray | None = None,
    aggregate: str = "max",
    chunk_rows: int = 1 << 15,
) -> TopImages:
    """The ``n`` highest-activating images of every neuron.

    Args:
        acts: ``[rows, K]``: a dense array (raw neurons), ``scipy.sparse`` CSR (SAE codes),
            a torch tensor, or an :class:`~vlmsae.data.store.ActivationStore`.
        n: images kept per neuron (the paper: 16).
        image_index: image of every row, non-decreasing; read from a store's ``rows.npy``
            when ``acts`` is a store; ``None`` = one row per image.
        aggregate: ``max`` or ``mean`` over the rows of one image.
        chunk_rows: rows read at a time (bounds memory).

    For sparse codes only positive activations compete.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    if image_index is None and hasattr(acts, "manifest"):
        rows_R = np.asarray(acts.rows[:, 0])
        image_index = rows_R if len(np.unique(rows_R)) != len(rows_R) else None
    if image_index is not None:
        image_index = np.asarray(image_index)
        if len(image_index) != _n_rows(acts) or np.any(np.diff(image_index) < 0):
            raise ValueError("image_index needs one non-decreasing entry per row")
    k = int(acts.d) if hasattr(acts, "manifest") else int(acts.shape[1])
    best_img = np.full((k, n), -1, np.int64)
    best_val = np.zeros((k, n), np.float32)
    for block, ids in _chunks(acts, image_index, chunk_rows):
        if image_index is not None:
            block, ids = aggregate_per_image(block, ids, aggregate)
        if sp.issparse(block):
            coo = block.tocoo()
            pos = coo.data > 0
            _merge_sparse(
                best_img,
                best_val,
                coo.col[pos].astype(np.int64),
                ids[coo.row[pos]].astype(np.int64),
                coo.data[pos].astype(np.float32),
            )
        else:
            _merge_dense(best_img, best_val, np.asarray(block, np.float32), ids.astype(np.int64))
    return TopImages(best_img, best_val)
