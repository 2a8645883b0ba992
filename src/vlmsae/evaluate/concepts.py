"""Concept detection: which single latent detects each labelled concept best.

For latent ``s`` and concept ``c`` over ``N`` images, "latent active" (value > 0) is read as a
prediction of "concept present": ``F1 = 2 TP / (n_active_s + n_pos_c)``, where ``TP`` is the
number of images on which both hold. Every ``TP`` of every (concept, latent) pair is one
sparse product ``Yᵀ B`` of the label matrix ``Y [N, C]`` and the activity matrix
``B [N, S]``, accumulated over chunks of images (a store never needs to fit in memory).
Only pairs with ``TP > 0`` can have ``F1 > 0``, so the best latent of a concept is read from
the stored entries of that product alone.

AUROC is computed only for the best-F1 latent of each concept (all latents × concepts would
cost a sort per latent and a product per pair): exactly, from ranks with ties averaged
(the Mann-Whitney statistic), the zeros of a sparse column counted as one tied block.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from vlmsae.evaluate.config import DETECTOR_F1
from vlmsae.metrics._source import iter_rows, n_cols, n_rows


class ConceptDetection(NamedTuple):
    """Best single-latent detector of every concept, and best concept of every latent."""

    best_latent: np.ndarray
    """``int64 [C]`` latent with the highest F1 for each concept (ties: lowest id); -1 when
    no latent is ever active on an image of the concept."""
    best_f1: np.ndarray
    """``float64 [C]`` its F1 (0 where ``best_latent`` is -1)."""
    precision: np.ndarray
    """``float64 [C]`` its precision ``TP / n_active`` (NaN where ``best_latent`` is -1)."""
    recall: np.ndarray
    """``float64 [C]`` its recall ``TP / n_positive``."""
    auroc: np.ndarray
    """``float64 [C]`` AUROC of the best latent's activation as a score for the concept
    (exact, ties averaged; NaN where there is no best latent or no negative image)."""
    n_positive: np.ndarray
    """``int64 [C]`` images holding each concept."""
    latent_concept: np.ndarray
    """``int64 [S]`` concept each latent detects best (ties: lowest id); -1 when it is never
    active on an image holding a concept."""
    latent_f1: np.ndarray
    """``float64 [S]`` that F1 (0 where ``latent_concept`` is -1)."""
    n_active: np.ndarray
    """``int64 [S]`` images on which each latent is active."""
    n_images: int


class OverlapCounts(NamedTuple):
    """What every F1 is computed from."""

    tp: sp.csr_matrix
    """``int32 [C, S]`` images where concept ``c`` is present and latent ``s`` active (only
    pairs that co-occur are stored)."""
    n_active: np.ndarray
    """``int64 [S]`` images where each latent is active."""
    n_positive: np.ndarray
    """``int64 [C]`` images holding each concept."""
    n_images: int


def _active(block: Any) -> sp.csr_matrix:
    """``int32`` CSR of where a block (dense or CSR) is > 0."""
    if sp.issparse(block):
        out = sp.csr_matrix(block, copy=True)
        out.data = (out.data > 0).astype(np.int32)
        out.eliminate_zeros()
        return out
    return sp.csr_matrix(np.asarray(block) > 0, dtype=np.int32)


def _as_labels(labels: Any) -> sp.csr_matrix:
    y = sp.csr_matrix(labels, dtype=np.int32, copy=True)
    y.data = (y.data != 0).astype(np.int32)
    y.eliminate_zeros()
    return y


def count_overlaps(codes: Any, labels: Any, chunk_rows: int = 1 << 16) -> OverlapCounts:
    """TP of every (concept, latent) pair, latent activity and concept counts, streamed over
    ``codes`` (CSR / dense array / store ``[N, S]``) in chunks of ``chunk_rows`` images."""
    y_NC = _as_labels(labels)
    n, s = n_rows(codes), n_cols(codes)
    if y_NC.shape[0] != n:
        raise ValueError(f"{y_NC.shape[0]} label rows for {n} images of codes")
    parts: list[sp.csr_matrix] = []
    n_active = np.zeros(s, np.int64)
    for start, block in iter_rows(codes, chunk_rows, np.float32):
        b_BS = _active(block)
        n_active += np.bincount(b_BS.indices, minlength=s)
        parts.append(y_NC[start : start + b_BS.shape[0]].T.tocsr() @ b_BS)
    tp = parts[0] if len(parts) == 1 else sp.csr_matrix(sum(parts[1:], parts[0]))
    n_pos = np.bincount(y_NC.indices, minlength=y_NC.shape[1]).astype(np.int64)
    return OverlapCounts(tp, n_active, n_pos, n)


def _row_argmax(m: sp.csr_matrix, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``m`` (CSR without duplicates, columns in any order; ``values`` aligned with
    ``m.data``): the column of the largest value (ties: the lowest column) and that value;
    -1 / 0 for an empty row."""
    n = m.shape[0]
    best_col, best_val = np.full(n, -1, np.int64), np.zeros(n)
    counts = np.diff(m.indptr)
    rows_nz = np.flatnonzero(counts)
    if not rows_nz.size:
        return best_col, best_val
    starts = m.indptr[rows_nz]
    row_max = np.maximum.reduceat(values, starts)
    at_max = values == np.repeat(row_max, counts[rows_nz])
    cols = np.where(at_max, m.indices, np.iinfo(m.indices.dtype).max)
    best_col[rows_nz] = np.minimum.reduceat(cols, starts)  # no sort: any column order
    best_val[rows_nz] = row_max
    return best_col, best_val


def _gather(m: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``float64`` entries ``m[rows[i], cols[i]]``."""
    if not len(rows):
        return np.zeros(0)
    return np.asarray(m[rows, cols], np.float64).ravel()


def _f1(tp: sp.csr_matrix, n_active: np.ndarray, n_pos: np.ndarray) -> np.ndarray:
    rows = np.repeat(np.arange(tp.shape[0]), np.diff(tp.indptr))
    return 2.0 * tp.data / (n_active[tp.indices] + n_pos[rows])


def concept_detection(
    codes: Any, labels: Any, *, chunk_rows: int = 1 << 16, auroc: bool = True
) -> ConceptDetection:
    """Best single-latent detector (F1, precision, recall, AUROC) of every concept and the
    best concept of every latent.

    Args:
        codes: ``[N, S]`` activations of ``S`` latents (or neurons) on ``N`` images: a CSR
            matrix, a dense array or a store, streamed ``chunk_rows`` images at a time. A
            latent is active on an image where its value is > 0.
        labels: ``[N, C]`` concept presence (any nonzero is present), sparse or dense.
        auroc: also compute the AUROC of each concept's best latent (a second pass).
    """
    counts = count_overlaps(codes, labels, chunk_rows)
    tp, n_active, n_pos = counts.tp, counts.n_active, counts.n_positive
    f1 = _f1(tp, n_active, n_pos)
    best_latent, best_f1 = _row_argmax(tp, f1)
    tp_c = np.zeros(len(n_pos))
    has = best_latent >= 0
    tp_c[has] = _gather(tp, np.flatnonzero(has), best_latent[has])
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(has, tp_c / np.maximum(n_active[best_latent], 1), np.nan)
        recall = tp_c / n_pos
    tp_csc = tp.tocsc()
    tp_t = sp.csr_matrix((tp_csc.data, tp_csc.indices, tp_csc.indptr), shape=tp.shape[::-1])
    latent_concept, latent_f1 = _row_argmax(tp_t, _f1(tp_t, n_pos, n_active))
    au = np.full(len(n_pos), np.nan)
    if auroc and has.any():
        au = best_latent_auroc(codes, labels, best_latent, chunk_rows=chunk_rows)
    return ConceptDetection(best_latent, best_f1, precision, recall, au, n_pos,
                            latent_concept, latent_f1, n_active, counts.n_images)  # fmt: skip


def _column_ranks(col_NU: sp.csc_matrix) -> tuple[sp.csc_matrix, np.ndarray]:
    """Average ranks (1-based, ties averaged) of every value of each column of a sparse
    matrix, its implicit zeros included: the ranks of the stored entries minus the rank of
    zero (a CSC of the same pattern), and the rank of zero per column."""
    n = col_NU.shape[0]
    delta = np.zeros(col_NU.nnz)
    rank0 = np.zeros(col_NU.shape[1])
    for u in range(col_NU.shape[1]):
        lo, hi = col_NU.indptr[u], col_NU.indptr[u + 1]
        vals = np.concatenate([col_NU.data[lo:hi], [0.0]])
        weight = np.concatenate([np.ones(hi - lo), [n - (hi - lo)]])
        uniq, inv = np.unique(vals, return_inverse=True)
        w = np.bincount(inv, weights=weight)
        avg = np.cumsum(w) - w + (w + 1) / 2  # ranks before the tie block, then its mean
        rank0[u] = avg[inv[-1]]
        delta[lo:hi] = avg[inv[:-1]] - rank0[u]
    return sp.csc_matrix((delta, col_NU.indices, col_NU.indptr), shape=col_NU.shape), rank0


def best_latent_auroc(
    codes: Any, labels: Any, latent_C: np.ndarray, *, chunk_rows: int = 1 << 16
) -> np.ndarray:
    """AUROC of latent ``latent_C[c]``'s activation as a score for concept ``c`` (NaN where
    the latent is -1 or the concept has no positive or no negative image); exact, ties
    averaged: ``(Σ ranks of positives − P(P+1)/2) / (P·Q)``."""
    y_NC = _as_labels(labels)
    n = n_rows(codes)
    latents, slot_C = np.unique(np.where(latent_C >= 0, latent_C, 0), return_inverse=True)
    cols = [sp.csc_matrix(block[:, latents]) for _, block in iter_rows(codes, chunk_rows)]
    col_NU = sp.vstack(cols, format="csc")
    col_NU.eliminate_zeros()
    delta_NU, rank0_U = _column_ranks(col_NU)
    # Σ over the positives of (rank − rank of zero), for every (concept, its latent)
    pos_delta = _gather(y_NC.T.tocsr() @ delta_NU.tocsr(), np.arange(len(latent_C)), slot_C)
    p = np.bincount(y_NC.indices, minlength=y_NC.shape[1]).astype(np.float64)
    q = n - p
    rank_sum = p * rank0_U[slot_C] + pos_delta
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (rank_sum - p * (p + 1) / 2) / (p * q)
    return np.where((latent_C >= 0) & (p > 0) & (q > 0), out, np.nan)


def latent_claims(det: ConceptDetection, threshold: float = DETECTOR_F1) -> np.ndarray:
    """``int64 [C]`` latents that claim each concept: whose best concept it is, at F1 ≥
    ``threshold``. A concept claimed by more than one latent is split among them."""
    keep = (det.latent_concept >= 0) & (det.latent_f1 >= threshold)
    return np.bincount(det.latent_concept[keep], minlength=len(det.best_f1)).astype(np.int64)


def detection_summary(det: ConceptDetection, threshold: float = DETECTOR_F1) -> dict[str, Any]:
    """Share of concepts with a detector at F1 ≥ ``threshold``, mean best F1 and AUROC, and
    the splitting counts, over the concepts with at least one positive and one negative
    image."""
    ok = (det.n_positive > 0) & (det.n_positive < det.n_images)
    claims = latent_claims(det, threshold)
    f1 = det.best_f1[ok]
    au = det.auroc[ok]
    return {
        "n_concepts": int(ok.sum()),
        "n_concepts_undefined": int((~ok).sum()),
        "threshold": threshold,
        "share_detected": float((f1 >= threshold).mean()) if f1.size else float("nan"),
        "n_detected": int((f1 >= threshold).sum()),
        "mean_best_f1": float(f1.mean()) if f1.size else float("nan"),
        "median_best_f1": float(np.median(f1)) if f1.size else float("nan"),
        "mean_auroc": float(np.nanmean(au)) if np.isfinite(au).any() else float("nan"),
        "n_latents": len(det.latent_f1),
        "n_latents_alive": int((det.n_active > 0).sum()),
        "n_latents_detecting": int(
            np.sum((det.latent_f1 >= threshold) & (det.latent_concept >= 0))
        ),
        "n_concepts_split": int((claims[ok] > 1).sum()),
    }
