"""Per-neuron data of the browser, computed from an SAE and its activation store.

Everything the neuron pages show that the pipeline does not already write: the codes of
every image (rows of one image max-aggregated, as ``vlmsae score`` does), top images, the
activation histogram over the dataset, nearest neurons by decoder cosine and by top-image
Jaccard, and patch heatmaps (the neuron's code on every patch token) of the top images —
read from the store where it holds every token of an image, or computed with the model
for those images only.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from vlmsae.metrics._source import aggregate_rows, iter_rows

if TYPE_CHECKING:
    from vlmsae.data.store import ActivationStore
    from vlmsae.encoders import Encoder
    from vlmsae.sae import SAE

log = logging.getLogger(__name__)


class Neighbours(NamedTuple):
    """The ``M`` nearest other neurons of every neuron, nearest first."""

    ids: np.ndarray
    """``int64 [S, M]`` neuron ids (-1 pads where fewer exist)."""
    values: np.ndarray
    """``float32 [S, M]`` their similarity (cosine or Jaccard)."""


class Heatmaps(NamedTuple):
    """Patch activations of each neuron on its top images."""

    values: np.ndarray
    """``float16 [S, T, P]``: the neuron's code on each patch token of its ``t``-th top image
    (P = side², row-major from the top left); 0 for padded top slots. Memory: 2·S·T·P bytes
    (1.2 GB for a ×64 SAE of ViT-L/14-336, 576 patches; ``--no-heatmaps`` skips them)."""
    side: int
    """Patches per image side."""
    source: str
    """``"store"`` (read from stored tokens) or ``"model"`` (recomputed for these images)."""


class NeuronData(NamedTuple):
    """What the browser shows per neuron (S neurons over N images)."""

    n_images: int
    top_indices: np.ndarray
    """``int64 [S, T]`` top images, best first (-1 pads)."""
    top_values: np.ndarray
    """``float32 [S, T]`` their activations."""
    n_active: np.ndarray
    """``int64 [S]`` images where the neuron is > 0."""
    max_activation: np.ndarray
    """``float32 [S]`` largest activation over the images (0 for a dead neuron)."""
    hist_counts: np.ndarray
    """``int64 [S, B]`` histogram of the positive activations over ``B`` equal bins of
    ``(0, max_activation]`` (images where the neuron is 0 are ``N - n_active``)."""
    group: np.ndarray
    """``int64 [S]`` Matryoshka group of each neuron (0 for a plain SAE)."""
    near_decoder: Neighbours
    near_jaccard: Neighbours
    heatmaps: Heatmaps | None


class RawNeurons:
    """The store's own dimensions as neurons (the raw neurons SAEs are compared with), in
    the place of an SAE: ``encode`` is the identity, one group, no decoder."""

    def __init__(self, d: int) -> None:
        from types import SimpleNamespace

        self.cfg = SimpleNamespace(
            d_in=d, d_sae=d, group_ends=(d,), group_sizes=(d,), arch="raw neurons",
            model=None, hookpoint=None, layer=None,
        )  # fmt: skip
        self.W_dec = None

    def encode(self, x: Any) -> Any:
        return x

    def eval(self) -> RawNeurons:
        return self


def encode_rows(sae: SAE, store: ActivationStore, chunk_rows: int = 8192) -> sp.csr_matrix:
    """SAE codes of every row of ``store`` as a CSR matrix ``[R, S]`` (a code store of the
    SAE, ``kind="codes"``, is read as it is)."""
    import torch

    if getattr(store, "is_sparse", False):
        blocks = [block for _, block in iter_rows(store, chunk_rows, np.float32)]
        return sp.vstack(blocks, format="csr")
    parts = []
    with torch.inference_mode():
        for _, block in iter_rows(store, chunk_rows, np.float32):
            codes = sae.encode(torch.from_numpy(np.ascontiguousarray(block)))
            parts.append(sp.csr_matrix(codes.float().numpy()))
    return sp.vstack(parts, format="csr")


def per_image(codes_RS: sp.csr_matrix, image_R: np.ndarray | None) -> sp.csr_matrix:
    """One row per image (rows of an image max-aggregated)."""
    if image_R is None:
        return codes_RS
    _, out = aggregate_rows(codes_RS, np.asarray(image_R), "max")
    return sp.csr_matrix(out)


def column_stats(codes_NS: sp.csr_matrix, n_bins: int) -> tuple[np.ndarray, ...]:
    """``(n_active [S], max_activation [S], hist_counts [S, B])`` of per-image codes."""
    csc = codes_NS.tocsc()
    n_s = csc.shape[1]
    col = np.repeat(np.arange(n_s), np.diff(csc.indptr))
    pos = csc.data > 0
    col, data = col[pos], csc.data[pos]
    n_active = np.bincount(col, minlength=n_s).astype(np.int64)
    max_act = np.zeros(n_s, np.float32)
    np.maximum.at(max_act, col, data.astype(np.float32))
    scale = np.where(max_act > 0, max_act, 1.0)[col]
    bins = np.clip(np.ceil(data / scale * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    hist = np.bincount(col * n_bins + bins, minlength=n_s * n_bins).reshape(n_s, n_bins)
    return n_active, max_act, hist.astype(np.int64)


def decoder_neighbours(w_dec_SD: np.ndarray, m: int, chunk: int = 1024) -> Neighbours:
    """The ``m`` neurons of highest decoder cosine with each neuron (itself excluded)."""
    w = np.asarray(w_dec_SD, np.float32)
    w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    n_s = len(w)
    m_eff = min(m, n_s - 1)
    ids = np.full((n_s, m), -1, np.int64)
    vals = np.zeros((n_s, m), np.float32)
    if m_eff <= 0:
        return Neighbours(ids, vals)
    for lo in range(0, n_s, chunk):
        sim = w[lo : lo + chunk] @ w.T
        sim[np.arange(len(sim)), np.arange(lo, lo + len(sim))] = -np.inf
        part = np.argpartition(-sim, m_eff - 1, axis=1)[:, :m_eff]
        part_vals = np.take_along_axis(sim, part, axis=1)
        order = np.argsort(-part_vals, axis=1, kind="stable")
        ids[lo : lo + len(sim), :m_eff] = np.take_along_axis(part, order, axis=1)
        vals[lo : lo + len(sim), :m_eff] = np.take_along_axis(part_vals, order, axis=1)
    return Neighbours(ids, vals)


def jaccard_neighbours(
    top_SK: np.ndarray, valid_SK: np.ndarray, n_images: int, m: int, chunk: int = 4096
) -> Neighbours:
    """The ``m`` neurons whose top-image sets overlap most (Jaccard) with each neuron's;
    only neighbours with a non-empty overlap are listed."""
    n_s, k = top_SK.shape
    rows = np.repeat(np.arange(n_s), k)[valid_SK.ravel()]
    cols = top_SK.ravel()[valid_SK.ravel()]
    inc = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_s, n_images))
    inc.data[:] = 1.0  # an image listed twice counts once
    size = np.asarray(inc.sum(axis=1)).ravel()
    ids = np.full((n_s, m), -1, np.int64)
    vals = np.zeros((n_s, m), np.float32)
    inc_t = inc.T.tocsr()
    for lo in range(0, n_s, chunk):
        inter = (inc[lo : lo + chunk] @ inc_t).tocsr()
        for r in range(inter.shape[0]):
            s = lo + r
            cand = inter.indices[inter.indptr[r] : inter.indptr[r + 1]]
            num = inter.data[inter.indptr[r] : inter.indptr[r + 1]]
            keep = cand != s
            cand, num = cand[keep], num[keep]
            if not len(cand):
                continue
            jac = num / (size[s] + size[cand] - num)
            order = np.lexsort((cand, -jac))[:m]
            ids[s, : len(order)], vals[s, : len(order)] = cand[order], jac[order]
    return Neighbours(ids, vals)


def patch_layout(n_tokens: int) -> tuple[int, int] | None:
    """``(first patch token, side)`` for a ViT sequence of ``n_tokens``: a CLS token then a
    square grid, or a square grid alone; None when neither fits."""
    for first in (1, 0):
        side = math.isqrt(n_tokens - first)
        if side > 1 and side * side == n_tokens - first:
            return first, side
    return None


def _pairs_by_image(top_SK: np.ndarray) -> dict[int, list[tuple[int, int]]]:
    pairs: dict[int, list[tuple[int, int]]] = {}
    for s, t in zip(*np.nonzero(top_SK >= 0), strict=True):
        pairs.setdefault(int(top_SK[s, t]), []).append((int(s), int(t)))
    return pairs


def store_heatmaps(
    codes_RS: sp.csr_matrix, rows_R2: np.ndarray, top_SK: np.ndarray
) -> Heatmaps | None:
    """Heatmaps from a store holding every token of each image (``--tokens all``)."""
    image_R, token_R = np.asarray(rows_R2[:, 0]), np.asarray(rows_R2[:, 1])
    if len(image_R) == 0 or token_R.min() < 0:
        return None
    _, counts = np.unique(image_R, return_counts=True)
    layout = patch_layout(int(counts[0]))
    if layout is None or (counts != counts[0]).any():
        return None
    first, side = layout
    heat = np.zeros((*top_SK.shape, side * side), np.float16)
    starts = np.searchsorted(image_R, np.arange(int(image_R.max()) + 1))
    for image, pairs in _pairs_by_image(top_SK).items():
        lo = int(starts[image])
        tokens = token_R[lo : lo + counts[0]]
        if not np.array_equal(tokens, np.arange(counts[0])):
            return None  # not every token in order: no spatial layout to draw
        neurons = [s for s, _ in pairs]
        block = codes_RS[lo + first : lo + int(counts[0])][:, neurons].toarray()  # [P, n]
        for j, (s, t) in enumerate(pairs):
            heat[s, t] = block[:, j]
    return Heatmaps(heat, side, "store")


def model_heatmaps(
    sae: SAE, encoder: Encoder, layer: int, image_paths: list[str], top_SK: np.ndarray
) -> Heatmaps | None:
    """Heatmaps recomputed with the model for the top images only: the block output at
    ``layer`` for every token, encoded by the SAE."""
    import torch

    from vlmsae.data.sources import load_rgb

    pairs = _pairs_by_image(top_SK)
    heat, side = None, 0
    images = sorted(pairs)
    with torch.inference_mode():
        for lo in range(0, len(images), 32):
            batch = images[lo : lo + 32]
            pil = [load_rgb(image_paths[i]) for i in batch]
            hidden_BTD = encoder.capture(encoder.preprocess(pil), [layer])
            hidden_BTD = hidden_BTD[encoder.layer_index(layer)].float()
            if heat is None:
                layout = patch_layout(int(hidden_BTD.shape[1]))
                if layout is None:
                    return None
                first, side = layout
                heat = np.zeros((*top_SK.shape, side * side), np.float16)
            for image, hidden_TD in zip(batch, hidden_BTD, strict=True):
                neurons = [s for s, _ in pairs[image]]
                codes_TS = sae.encode(hidden_TD[first:])
                block = codes_TS[:, neurons].numpy()
                for j, (s, t) in enumerate(pairs[image]):
                    heat[s, t] = block[:, j]
    return None if heat is None else Heatmaps(heat, side, "model")


def compute_neuron_data(
    sae: SAE,
    store: ActivationStore,
    *,
    top_k: int = 16,
    n_bins: int = 20,
    n_neighbours: int = 5,
    encoder: Encoder | None = None,
    heatmaps: bool = True,
    chunk_rows: int = 8192,
) -> tuple[NeuronData, sp.csr_matrix]:
    """Per-neuron data of ``sae`` over ``store``, and the per-image codes ``[N, S]``.

    Args:
        sae: a loaded :class:`~vlmsae.sae.SAE`.
        store: its :class:`~vlmsae.data.store.ActivationStore` (activations at its hook).
        encoder: an :class:`~vlmsae.encoders.Encoder` to recompute heatmaps with when the
            store holds no patch tokens (optional).
    """
    from vlmsae.metrics._source import image_index_of
    from vlmsae.metrics.top_images import top_images

    codes_RS = encode_rows(sae, store, chunk_rows)
    codes_NS = per_image(codes_RS, image_index_of(store))
    n_images = codes_NS.shape[0]
    top = top_images(codes_NS, top_k)
    n_active, max_act, hist = column_stats(codes_NS, n_bins)
    group = np.searchsorted(np.asarray(sae.cfg.group_ends), np.arange(sae.cfg.d_sae), "right")
    if sae.W_dec is not None:
        near_dec = decoder_neighbours(sae.W_dec.detach().float().numpy(), n_neighbours)
    else:  # raw neurons have no decoder
        n_s = sae.cfg.d_sae
        near_dec = Neighbours(np.full((n_s, 0), -1, np.int64), np.zeros((n_s, 0), np.float32))
    near_jac = jaccard_neighbours(top.indices, top.values > 0, n_images, n_neighbours)
    heat = None
    if heatmaps:
        heat = store_heatmaps(codes_RS, store.rows, np.where(top.values > 0, top.indices, -1))
        layer = store.manifest.get("layer")
        if heat is None and encoder is not None and store.images and layer is not None:
            valid = np.where(top.values > 0, top.indices, -1)
            heat = model_heatmaps(sae, encoder, int(layer), store.images, valid)
    data = NeuronData(
        n_images, top.indices, top.values, n_active, max_act, hist, group.astype(np.int64),
        near_dec, near_jac, heat,
    )  # fmt: skip
    return data, codes_NS
