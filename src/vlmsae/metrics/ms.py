"""The Monosemanticity Score (MS) of Pach et al. (2025), exact and streaming.

For neuron ``k`` with activations ``a_nk`` over ``N`` images, rescaled per neuron to
``ã_nk = (a_nk - min_n a_nk) / (max_n a_nk - min_n a_nk)``, and cosine similarities
``s_nm`` of the images' embeddings::

    MS_k = Σ_{n<m} ã_nk ã_mk s_nm / Σ_{n<m} ã_nk ã_mk

With unit-normalised embeddings ``e_n`` the pair sums have closed forms
(``Σ_{n<m} ã_n ã_m s_nm = (‖Σ_n ã_n e_n‖² − Σ_n ã_n² ‖e_n‖²) / 2`` and
``Σ_{n<m} ã_n ã_m = ((Σ_n ã_n)² − Σ_n ã_n²) / 2``), so all neurons cost one product
``Ãᵀ E``: O(nnz·E) for sparse SAE codes instead of the reference's O(N²·K). Sums are
accumulated in float64 because the numerator is a difference of two large sums.

An embedding of norm 0 has cosine similarity 0 with every image (it is treated as the zero
vector). The score is undefined (NaN) where the denominator is 0: dead or constant neurons,
and neurons whose rescaled activation is non-zero on a single image (numerically: pair
weights below ``DEN_RTOL`` relative to ``(Σ ã)²``).
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from vlmsae.core import dist
from vlmsae.core.errors import UserError
from vlmsae.core.progress import tqdm
from vlmsae.metrics._source import (
    Rows,
    check_finite_rows,
    is_sparse,
    iter_rows,
    n_cols,
    n_rows,
    rank_span,
    read_rows,
)

log = logging.getLogger(__name__)
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
DEN_RTOL = 1e-12
"""MS is undefined where Σ_{n<m} ã_n ã_m ≤ DEN_RTOL · (Σ_n ã_n)²: below rounding level the
closed form's difference of sums cannot tell the pair weight from 0."""


class MSResult(NamedTuple):
    """Per-neuron Monosemanticity Scores and what they were computed from."""

    ms: np.ndarray
    """``float64 [K]``: the score, NaN where undefined."""
    n_active: np.ndarray
    """``int64 [K]``: images where the neuron's activation is > 0."""
    max_activation: np.ndarray
    """``float64 [K]``: largest activation over the images."""
    min_activation: np.ndarray
    """``float64 [K]``: smallest activation over the images (0 for most sparse codes)."""
    n_images: int
    """Number of images ``N`` scored."""

    @property
    def n_undefined(self) -> int:
        """Neurons whose score is NaN (dead, constant, or active on one image only)."""
        return int(np.isnan(self.ms).sum())


class _Range(NamedTuple):
    lo: np.ndarray
    hi: np.ndarray
    n_active: np.ndarray


def _neuron_range(acts: Rows, chunk_rows: int, progress: bool) -> _Range:
    """Pass 1: per-neuron min, max (implicit zeros of sparse rows included) and activity."""
    k = n_cols(acts)
    lo, hi = np.full(k, np.inf), np.full(k, -np.inf)
    n_active = np.zeros(k, np.int64)
    rows = iter_rows(acts, chunk_rows, span=rank_span(n_rows(acts)))  # this rank's share
    for _, block in tqdm(rows, desc="MS range", disable=not progress, leave=False):
        if block.shape[0] == 0:
            continue
        if sp.issparse(block):
            # scipy's axis reductions count implicit zeros where a column is not full
            lo = np.minimum(lo, block.min(axis=0).toarray().ravel())
            hi = np.maximum(hi, block.max(axis=0).toarray().ravel())
            n_active += np.bincount(block.indices[block.data > 0], minlength=k)
        else:
            lo = np.minimum(lo, block.min(axis=0))
            hi = np.maximum(hi, block.max(axis=0))
            n_active += (block > 0).sum(axis=0)
    dist.all_reduce_array(lo, "min")  # over the shares of all ranks (no-op in one process)
    dist.all_reduce_array(hi, "max")
    dist.all_reduce_array(n_active)
    return _Range(lo, hi, n_active)


def _inv_norms(emb_NE: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``1 / ‖e_n‖`` (0 for a zero row) and the squared norm of the unit rows (1 or 0)."""
    norm_N = np.sqrt(np.einsum("ne,ne->n", emb_NE, emb_NE))
    inv_N = np.where(norm_N > 0, 1.0 / np.where(norm_N > 0, norm_N, 1.0), 0.0)
    return inv_N, (norm_N > 0).astype(np.float64)


def _sparse_t_matmul(scaled: sp.csr_matrix, unit_NE: np.ndarray) -> np.ndarray:
    """``scaledᵀ @ unit_NE`` in float64; torch's CSR kernel uses every thread (scipy's one)."""
    import warnings

    import torch

    t = scaled.tocsc()  # the CSC arrays of a matrix are the CSR arrays of its transpose
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        a = torch.sparse_csr_tensor(
            torch.from_numpy(t.indptr.astype(np.int64)),
            torch.from_numpy(t.indices.astype(np.int64)),
            torch.from_numpy(t.data.astype(np.float64)),
            size=(t.shape[1], t.shape[0]),
        )
        dense = torch.from_numpy(np.ascontiguousarray(unit_NE))
        out = torch.empty(a.shape[0], dense.shape[1], dtype=dense.dtype)
        # addmm into the result (beta=0): ``a @ dense`` zero-fills a result and copies it
        return torch.addmm(out, a, dense, beta=0.0, out=out).numpy()


class _Sums:
    """float64 accumulators of one block of neurons."""

    def __init__(self, k: int, e: int) -> None:
        self.shape = (k, e)
        self.v: np.ndarray | None = None  # Σ_n ã_n e_n, [K, E] (allocated by the first add)
        self.s1 = np.zeros(k)  # Σ_n ã_n
        self.s2 = np.zeros(k)  # Σ_n ã_n²
        self.s2e = np.zeros(k)  # Σ_n ã_n² ‖e_n‖²

    def add_dense(self, scaled_NK: np.ndarray, unit_NE: np.ndarray, sq_N: np.ndarray) -> None:
        sq_NK = scaled_NK * scaled_NK
        self._add_v(scaled_NK.T @ unit_NE)
        self.s1 += scaled_NK.sum(axis=0)
        self.s2 += sq_NK.sum(axis=0)
        self.s2e += sq_N @ sq_NK

    def add_sparse(
        self, scaled: sp.csr_matrix, emb_NE: np.ndarray, inv_N: np.ndarray, sq_N: np.ndarray
    ) -> None:
        """Add rows of sparse rescaled codes; ``emb_NE`` unnormalised, ``inv_N`` its inverse
        row norms (folded into the codes' values: cheaper than normalising ``emb_NE``)."""
        k = scaled.shape[1]
        cols, vals = scaled.indices, scaled.data
        rows = np.repeat(np.arange(scaled.shape[0]), np.diff(scaled.indptr))
        over_norm = sp.csr_matrix((vals * inv_N[rows], cols, scaled.indptr), shape=scaled.shape)
        self._add_v(_sparse_t_matmul(over_norm, emb_NE))
        self.s1 += np.bincount(cols, weights=vals, minlength=k)
        self.s2 += np.bincount(cols, weights=vals * vals, minlength=k)
        self.s2e += np.bincount(cols, weights=vals * vals * sq_N[rows], minlength=k)

    def _add_v(self, v_KE: np.ndarray) -> None:
        if self.v is None:  # no zero-filled [K, E] array to page in and add to
            self.v = v_KE
        else:
            self.v += v_KE

    @property
    def v_KE(self) -> np.ndarray:
        if self.v is None:
            self.v = np.zeros(self.shape)
        return self.v

    def scores(self) -> np.ndarray:
        num = np.einsum("ke,ke->k", self.v_KE, self.v_KE) - self.s2e
        den = self.s1 * self.s1 - self.s2
        # pair weights below rounding level of (Σã)² cannot be told from 0: undefined
        ok = den > DEN_RTOL * self.s1 * self.s1
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(ok, num / np.where(ok, den, 1.0), np.nan)


def _accumulate_block(
    acts: Rows, emb: Rows, k0: int, k1: int, rng: _Range, chunk_rows: int, progress: bool
) -> np.ndarray:
    lo, span = rng.lo[k0:k1], rng.hi[k0:k1] - rng.lo[k0:k1]
    live = span > 0
    inv = np.where(live, 1.0 / np.where(live, span, 1.0), 0.0)
    dense_cols = np.flatnonzero(lo != 0)  # sparse columns whose implicit zeros rescale to > 0
    sparse_ok = (lo == 0).astype(np.float64) * inv
    sums = _Sums(k1 - k0, n_cols(emb))
    sparse = is_sparse(acts)
    rows = iter_rows(acts, chunk_rows, span=rank_span(n_rows(acts)))  # this rank's share
    for start, block in tqdm(rows, desc=f"MS {k0}:{k1}", disable=not progress, leave=False):
        stop = start + block.shape[0]
        emb_NE = read_rows(emb, start, stop)
        inv_N, sq_N = _inv_norms(emb_NE)
        if k0 > 0 or k1 < block.shape[1]:
            block = block[:, k0:k1]
        if not sparse:
            scaled = (block - lo) * inv  # constant neurons become all-zero columns
            sums.add_dense(scaled, emb_NE * inv_N[:, None], sq_N)
            continue
        scaled = block.copy()
        scaled.data = scaled.data * sparse_ok[scaled.indices]
        sums.add_sparse(scaled, emb_NE, inv_N, sq_N)
        if len(dense_cols):
            unit_NE = emb_NE * inv_N[:, None]
            sub = _Sums(len(dense_cols), unit_NE.shape[1])
            sub.add_dense(
                (block[:, dense_cols].toarray() - lo[dense_cols]) * inv[dense_cols],
                unit_NE,
                sq_N,
            )
            for name in ("v_KE", "s1", "s2", "s2e"):
                getattr(sums, name)[dense_cols] += getattr(sub, name)
    for part in (sums.v_KE, sums.s1, sums.s2, sums.s2e):  # the sums of all ranks' shares
        dist.all_reduce_array(part)
    return sums.scores()


def monosemanticity(
    activations: Rows,
    embeddings: Rows,
    *,
    chunk_rows: int | None = None,
    max_memory_bytes: int = 1 << 30,
    progress: bool = False,
) -> MSResult:
    """Monosemanticity Score of every neuron, with per-neuron activity statistics.

    Args:
        activations: ``[N, K]``, one row per image: a dense array (raw neurons, may be
            negative), a ``scipy.sparse`` matrix (SAE codes), a torch tensor or an
            :class:`~vlmsae.data.store.ActivationStore`.
        embeddings: ``[N, E]`` image embeddings (array, tensor or store), same row order.
        chunk_rows: images read at a time (default 65,536 for sparse codes, 8,192 dense).
        max_memory_bytes: bound on the float64 ``[K, E]`` accumulator; above it, neurons
            are scored in blocks, one pass over the rows per block.
        progress: show progress bars.

    Under ``torchrun`` (every rank passing the same activations and embeddings) each rank
    streams its share of the rows and the sums are all-reduced: every rank gets the
    scores of one process.
    """
    dist.init_from_env()
    n, k = n_rows(activations), n_cols(activations)
    if n_rows(embeddings) != n:
        raise ValueError(
            f"activations have {n} rows but embeddings have {n_rows(embeddings)}; both need "
            "one row per image in the same order (aggregate tokens per image first)"
        )
    if n < 2:
        raise UserError(
            f"the score needs at least 2 images, got {n}: MS compares pairs of images; "
            "score a store of more images"
        )
    if chunk_rows is None:
        chunk_rows = 1 << 16 if is_sparse(activations) else 1 << 13
    check_finite_rows(embeddings, "embeddings", chunk_rows)  # one NaN row: every MS NaN
    rng = _neuron_range(activations, chunk_rows, progress)
    e = n_cols(embeddings)
    block_k = max(1, min(k, max_memory_bytes // (8 * e)))
    ms = np.empty(k)
    for k0 in range(0, k, block_k):
        k1 = min(k, k0 + block_k)
        ms[k0:k1] = _accumulate_block(activations, embeddings, k0, k1, rng, chunk_rows, progress)
    result = MSResult(ms, rng.n_active, rng.hi, rng.lo, n)
    if result.n_undefined:
        # the callers say it with the name of what they score (score summary, demo lines)
        log.debug("MS undefined for %d of %d neurons (dead or constant)", result.n_undefined, k)
    return result


def monosemanticity_score(activations: Rows, embeddings: Rows, **kwargs: Any) -> np.ndarray:
    """MS of every neuron: ``float64 [K]``, NaN where undefined. See :func:`monosemanticity`."""
    return monosemanticity(activations, embeddings, **kwargs).ms


def summarize_ms(ms: np.ndarray, quantiles: tuple[float, ...] = QUANTILES) -> dict[str, Any]:
    """Mean ± std (sample std, ddof=1, as the paper's ``torch.std``), quantiles, max (and its
    neuron) and the undefined count of scores."""
    ms = np.asarray(ms, dtype=np.float64)
    ok = ms[~np.isnan(ms)]
    out: dict[str, Any] = {"n_neurons": int(ms.size), "n_undefined": int(ms.size - ok.size)}
    if ok.size == 0:
        return {**out, "mean": None, "std": None, "max": None, "argmax": None, "quantiles": {}}
    return {
        **out,
        "mean": float(ok.mean()),
        "std": float(ok.std(ddof=1)) if ok.size > 1 else None,  # torch.std, as the paper
        "min": float(ok.min()),
        "max": float(ok.max()),
        "argmax": int(np.nanargmax(ms)),
        "quantiles": {f"q{round(q * 100):02d}": float(np.quantile(ok, q)) for q in quantiles},
    }


def compare_sae_raw(ms_sae: np.ndarray, ms_raw: np.ndarray) -> dict[str, Any]:
    """Share of (defined) SAE neurons scoring above the best and the median raw neuron."""
    sae = np.asarray(ms_sae, np.float64)
    raw = np.asarray(ms_raw, np.float64)
    sae, raw = sae[~np.isnan(sae)], raw[~np.isnan(raw)]
    if sae.size == 0 or raw.size == 0:
        raise ValueError("both score arrays need at least one defined (non-NaN) score")
    best, median = float(raw.max()), float(np.median(raw))
    return {
        "best_raw": best,
        "median_raw": median,
        "n_sae_defined": int(sae.size),
        "n_raw_defined": int(raw.size),
        "share_above_best_raw": float((sae > best).mean()),
        "share_above_median_raw": float((sae > median).mean()),
        "n_above_best_raw": int((sae > best).sum()),
    }


def embedder_name(manifest: dict[str, Any], fallback: str = "embedding") -> str:
    """A short name of the embedder an embedding store was written with (every MS shown
    names it, since MS depends on it): the model's short name (``dinov2-base``,
    ``toyworld-oracle``), else ``fallback`` (e.g. the store's folder name)."""
    from vlmsae.core.progress import model_label

    model = manifest.get("model")
    return model_label(model) if model else fallback
