"""Row sources for the metrics: in-memory arrays, CSR matrices, torch tensors or stores.

Every metric streams over rows in chunks so that memory stays bounded; this module turns
whatever the caller has into ``(start, block)`` chunks (a dense ``np.ndarray`` or a
canonical ``scipy.sparse.csr_matrix``) and aggregates several tokens per image into one
row per image when a store holds more than one row per image.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from vlmsae.core import dist

if TYPE_CHECKING:
    from vlmsae.data.store import ActivationStore

Rows = Any  # np.ndarray | sp.csr_matrix | torch.Tensor | ActivationStore


def n_rows(x: Rows) -> int:
    return len(x) if not hasattr(x, "shape") else int(x.shape[0])


def n_cols(x: Rows) -> int:
    return int(x.d) if hasattr(x, "iter_chunks") else int(x.shape[1])


def is_sparse(x: Rows) -> bool:
    return bool(getattr(x, "is_sparse", False)) if hasattr(x, "iter_chunks") else sp.issparse(x)


def _as_block(block: Any, dtype: Any) -> Any:
    if sp.issparse(block):
        csr = sp.csr_matrix(block)
        if not csr.has_canonical_format:
            csr = csr.copy()
            csr.sum_duplicates()
        return csr.astype(dtype, copy=False)
    if hasattr(block, "detach"):  # a torch tensor
        block = block.detach().float().cpu().numpy()
    return np.asarray(block, dtype=dtype)


def read_rows(x: Rows, start: int, stop: int, dtype: Any = np.float64) -> Any:
    """Rows ``start:stop`` of ``x`` as a dense array or canonical CSR matrix."""
    block = x.read(start, stop) if hasattr(x, "iter_chunks") else x[start:stop]
    return _as_block(block, dtype)


def iter_rows(
    x: Rows, chunk_rows: int, dtype: Any = np.float64, *, span: range | None = None
) -> Iterator[tuple[int, Any]]:
    """Yield ``(start, block)`` over the rows of ``x`` (those of ``span``, default all),
    ``chunk_rows`` at a time."""
    if chunk_rows <= 0:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    span = range(n_rows(x)) if span is None else span
    for start in range(span.start, span.stop, chunk_rows):
        yield start, read_rows(x, start, min(span.stop, start + chunk_rows), dtype)


def rank_span(n: int, image_R: np.ndarray | None = None) -> range:
    """The rows this rank reads under several processes (all rows in one): a contiguous
    share, its ends moved to image boundaries so that no image is split between ranks."""
    share = dist.shard(n)
    if image_R is None or not dist.is_distributed():
        return share

    def image_start(row: int) -> int:
        return n if row >= n else int(np.searchsorted(image_R, image_R[row], side="left"))

    return range(image_start(share.start), image_start(share.stop))


def aggregate_rows(block: Any, image_R: np.ndarray, how: str) -> tuple[np.ndarray, Any]:
    """Collapse rows of the same image into one row (``how``: ``"max"`` or ``"mean"``).

    ``image_R`` gives the image index of every row (non-decreasing). Returns the unique
    image indices and the aggregated block (same kind as ``block``). Implicit zeros of a
    sparse block count as values, so ``max`` of a neuron with only negative stored values on
    an image that has unstored rows is 0, like the dense computation.
    """
    if how not in ("max", "mean"):
        raise ValueError(f"aggregate must be 'max' or 'mean', got {how!r}")
    images, first, counts = np.unique(image_R, return_index=True, return_counts=True)
    if len(images) == len(image_R):
        return images, block
    if not sp.issparse(block):
        if how == "mean":
            return images, np.add.reduceat(block, first, axis=0) / counts[:, None]
        return images, np.maximum.reduceat(block, first, axis=0)
    coo = block.tocoo()
    group = np.searchsorted(images, image_R[coo.row])
    shape = (len(images), block.shape[1])
    if how == "mean":
        out = sp.csr_matrix((coo.data, (group, coo.col)), shape=shape)  # sums duplicates
        return images, sp.csr_matrix(out.multiply(1.0 / counts[:, None]))
    order = np.lexsort((coo.col, group))
    g, c, v = group[order], coo.col[order], coo.data[order]
    starts = np.flatnonzero(np.r_[True, (g[1:] != g[:-1]) | (c[1:] != c[:-1])])
    vmax = np.maximum.reduceat(v, starts) if len(v) else v
    n_stored = np.diff(np.r_[starts, len(v)])
    vmax = np.where((vmax < 0) & (n_stored < counts[g[starts]]), 0.0, vmax)
    out = sp.csr_matrix((vmax, (g[starts], c[starts])), shape=shape)
    out.eliminate_zeros()
    return images, out


def iter_images(
    x: Rows,
    chunk_rows: int,
    image_R: np.ndarray | None = None,
    aggregate: str = "max",
    dtype: Any = np.float64,
    *,
    span: range | None = None,
) -> Iterator[tuple[np.ndarray, Any]]:
    """Yield ``(image_indices, block)`` with one row per image, chunks ending at image
    boundaries. Without ``image_R`` every row is its own image. ``span``: only these rows
    (whole images; default all)."""
    n = n_rows(x)
    if image_R is None:
        for start, block in iter_rows(x, chunk_rows, dtype, span=span):
            yield np.arange(start, start + block.shape[0]), block
        return
    image_R = np.asarray(image_R)
    if len(image_R) != n:
        raise ValueError(f"{len(image_R)} image indices for {n} rows")
    if n > 1 and np.any(np.diff(image_R) < 0):
        raise ValueError("rows must be grouped by image (image indices non-decreasing)")
    start, end = (0, n) if span is None else (span.start, span.stop)
    while start < end:
        stop = min(end, start + chunk_rows)
        if stop < end:  # extend to the end of the last image of the chunk
            stop = int(np.searchsorted(image_R, image_R[stop - 1], side="right"))
        yield aggregate_rows(read_rows(x, start, stop, dtype), image_R[start:stop], aggregate)
        start = stop


def image_index_of(store: ActivationStore) -> np.ndarray | None:
    """Image index per row of a store, or None when every row is its own image."""
    if not hasattr(store, "rows"):
        return None
    image_R = np.asarray(store.rows[:, 0])
    if len(image_R) and len(np.unique(image_R)) == len(image_R):
        return None
    return image_R


def check_finite_rows(x: Rows, what: str, chunk_rows: int = 1 << 13, show: int = 5) -> None:
    """Refuse rows holding NaN or Inf, naming the first ``show`` of them (row numbers, and
    the images of a store).

    Raises:
        UserError: some rows are not finite.
    """
    from vlmsae.core.errors import UserError

    bad: list[int] = []
    n_bad = 0
    for start, block in iter_rows(x, chunk_rows, np.float32):
        values = block.data if sp.issparse(block) else block
        if np.isfinite(values).all():
            continue
        if sp.issparse(block):
            coo = block.tocoo()
            rows_bad = np.unique(coo.row[~np.isfinite(coo.data)])
        else:
            rows_bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
        n_bad += len(rows_bad)
        bad.extend(int(r) + start for r in rows_bad[: show - len(bad)])
    if not n_bad:
        return
    where = f"rows {', '.join(map(str, bad))}{', ...' if n_bad > len(bad) else ''}"
    images = x.images if hasattr(x, "images") else []
    if images:  # a store: its rows.npy maps rows to image indices
        where += f" (images {', '.join(images[int(x.rows[i, 0])] for i in bad)})"
    source = f" in {x.dir}" if hasattr(x, "dir") else ""
    raise UserError(
        f"{n_bad} of the {what}{source} hold NaN or Inf: {where}; one such row would make "
        f"every score NaN. Recreate the {what} (check those images), or leave those images "
        "out of both inputs"
    )
