"""SAE codes for ``vlmsae score --sae`` / ``top-images --sae``: each rank encodes only its rows.

Under ``torchrun`` the metrics stream a share of the rows on each rank (see
:func:`~vlmsae.metrics._source.rank_span`), so a rank needs the SAE codes of those rows only.
:func:`sae_codes_of_rows` encodes the rows of one span and returns a CSR matrix of the full
shape whose other rows are empty (an empty CSR row costs one ``indptr`` entry); the
reconstruction metrics are summed over ranks. In one process the span is every row and the
result is the codes of every row, as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from vlmsae.core import dist
from vlmsae.metrics._source import iter_images, n_cols, n_rows, rank_span, read_rows

ENCODE_ROWS = 4096
"""Rows encoded at a time (a dense ``[rows, d_sae]`` array lives for one block)."""


class SAECodes(NamedTuple):
    """An SAE's codes of one rank's rows, and the reconstruction metrics of all ranks."""

    sae: Any
    """The loaded :class:`~vlmsae.sae.SAE` (eval mode)."""
    codes: sp.csr_matrix
    """``[R, d_sae]`` codes of the rows of the span; the other rows are empty."""
    recon: dict[str, float]
    """R², normalised MSE, MSE, ``n_rows`` and L0 over every rank's rows (global)."""


def image_share_rows(image_R: np.ndarray | None, n: int) -> range:
    """The rows of this rank's share of the *images*: what ``score`` reads after aggregating
    tokens per image (its MS streams ``dist.shard(n_images)`` of the per-image rows).
    ``image_R``: image of each of the ``n`` rows (non-decreasing), ``None`` when every row is
    its own image. All rows in one process."""
    if image_R is None or not dist.is_distributed():
        return rank_span(n)
    _, first_I = np.unique(np.asarray(image_R), return_index=True)
    share = dist.shard(len(first_I))

    def row_of(image: int) -> int:
        return n if image >= len(first_I) else int(first_I[image])

    return range(row_of(share.start), row_of(share.stop))


def sae_codes_of_rows(sae_dir: Path, acts: Any, chunk_rows: int, span: range) -> SAECodes:
    """Encode the rows ``span`` of ``acts`` (a store or array ``[R, d_in]``) with the SAE in
    ``sae_dir``.

    The rows are encoded in blocks of ``min(chunk_rows, ENCODE_ROWS)`` on a grid that starts
    at row 0 whatever the span: a block that crosses an end of the span is encoded whole and
    cut, so every row is encoded in the same batch as in one process and the codes are bit
    for bit those of one process (a matmul's rounding can depend on its batch size). Returns
    the codes (CSR ``[R, d_sae]``, empty outside ``span``) and the reconstruction metrics of
    every rank's rows: under ``torchrun`` each rank passes its own span and the sums are
    all-reduced (every rank must call this)."""
    import torch

    from vlmsae.metrics.recon import ReconAccumulator
    from vlmsae.sae import SAE

    sae = SAE.load(sae_dir)
    sae.eval()
    acc, parts = ReconAccumulator(), []
    step = max(1, min(chunk_rows, ENCODE_ROWS))
    with torch.inference_mode():
        for start in range(span.start - span.start % step, span.stop, step):
            stop = min(n_rows(acts), start + step)
            x_BD = torch.from_numpy(np.ascontiguousarray(read_rows(acts, start, stop, np.float32)))
            codes_BS = sae.encode(x_BD)
            keep = slice(max(span.start, start) - start, min(span.stop, stop) - start)
            x_BD, codes_BS = x_BD[keep], codes_BS[keep]  # this rank's rows of the block
            acc.add(x_BD, sae.decode(codes_BS))
            parts.append(sp.csr_matrix(codes_BS.float().numpy()))
    codes = _place_rows(parts, span, n_rows(acts), sae.cfg.d_sae, np.float32)
    acc.merge_ranks(n_cols(acts))
    recon = acc.result()
    nnz = dist.all_reduce_array(np.array([codes.nnz], np.int64))
    recon["l0"] = float(int(nnz[0]) / max(recon["n_rows"], 1))
    return SAECodes(sae, codes, recon)


def aggregate_share(x: Any, image_R: np.ndarray, aggregate: str, chunk_rows: int) -> Any:
    """One row per image, in memory, for this rank's share of the images only (the rows of
    the other images are left zero: the metrics never read them on this rank); every image
    in one process. ``x``: a store, array or CSR matrix ``[R, K]``."""
    span = image_share_rows(image_R, n_rows(x))
    n_images = len(np.unique(image_R))
    chunks = iter_images(x, chunk_rows, image_R, aggregate, np.float32, span=span)
    blocks = [block for _, block in chunks]
    first = int(np.unique(image_R[: span.start]).size)  # images before the share
    rows = range(first, first + sum(b.shape[0] for b in blocks))
    if sp.issparse(x) or getattr(x, "is_sparse", False):
        return _place_rows(blocks, rows, n_images, n_cols(x), np.float32)
    out = np.zeros((n_images, n_cols(x)), np.float32)
    if blocks:
        out[rows.start : rows.stop] = np.concatenate(blocks)
    return out


def _place_rows(blocks: list, rows: range, n: int, k: int, dtype: Any) -> sp.csr_matrix:
    """CSR ``[n, k]`` holding ``blocks`` (stacked) at ``rows``, every other row empty."""
    above = sp.csr_matrix((rows.start, k), dtype=dtype)
    below = sp.csr_matrix((n - rows.stop, k), dtype=dtype)
    return sp.vstack([above, *blocks, below], format="csr").astype(dtype, copy=False)
