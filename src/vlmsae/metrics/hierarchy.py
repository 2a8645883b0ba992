"""Hierarchy depth of neurons: how deep in a taxonomy their top images agree.

For every neuron, the lowest common ancestor (LCA) depth of each of the C(k, 2) pairs of
its top images (0: different roots, D: same leaf), summarised by the mean and the
majority depth, then averaged per Matryoshka group as in the paper's analysis.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

INAT_LEVELS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


def inat_label_path(name: str) -> tuple[str, ...]:
    """``NNNNN_Kingdom_Phylum_Class_Order_Family_Genus_species`` → the 7 taxonomy levels."""
    parts = name.split("_")
    if len(parts) < 8 or not parts[0].isdigit():
        raise ValueError(
            f"{name!r} is not an iNaturalist class folder name "
            "(NNNNN_Kingdom_Phylum_Class_Order_Family_Genus_species)"
        )
    return tuple(parts[1:7]) + ("_".join(parts[7:]),)


def label_paths_from_images(paths: Sequence[str], inat: bool | None = None) -> list[tuple]:
    """Taxonomy path of each image from its class folder (parent directory) name.

    iNaturalist names are split into their 7 levels; other folder names are one-level
    labels. ``inat=None`` detects iNaturalist names.
    """
    names = [Path(p).parent.name for p in paths]
    if inat is None:
        inat = bool(names) and all(len(n.split("_")) >= 8 and n[:1].isdigit() for n in names)
    return [inat_label_path(n) if inat else (n,) for n in names]


def encode_taxonomy(label_paths: Sequence[Sequence[str]]) -> np.ndarray:
    """``int64 [N, D]``: id of each image's ancestor at every depth (prefix-unique ids);
    -1 pads shorter paths. Accepts tuples or ``"a/b/c"`` strings."""
    paths = [tuple(p.split("/")) if isinstance(p, str) else tuple(p) for p in label_paths]
    depth = max((len(p) for p in paths), default=0)
    out = np.full((len(paths), depth), -1, np.int64)
    ids: dict[tuple, int] = {}
    for i, p in enumerate(paths):
        for d in range(len(p)):
            out[i, d] = ids.setdefault(p[: d + 1], len(ids))
    return out


class Hierarchy(NamedTuple):
    mean_depth: np.ndarray
    """``float64 [K]``: mean LCA depth over the pairs of top images (NaN: fewer than 2)."""
    majority_depth: np.ndarray
    """``int64 [K]``: most frequent LCA depth (-1: fewer than 2 top images)."""
    group_mean_depth: np.ndarray
    """``float64 [G]``: mean of ``mean_depth`` over each group's neurons."""
    group_majority_depth: np.ndarray
    """``float64 [G]``: mean of ``majority_depth`` over each group's neurons."""


def lca_depth(taxonomy_ND: np.ndarray, top_idx_Kk: np.ndarray, block: int = 4096) -> np.ndarray:
    """``int [K, P]`` LCA depth of every pair of top images (-1 for pairs with a missing image)."""
    top = np.asarray(top_idx_Kk, np.int64)
    a, b = np.triu_indices(top.shape[1], 1)
    out = np.empty((len(top), len(a)), np.int64)
    for lo in range(0, len(top), block):
        t = top[lo : lo + block]
        lab = taxonomy_ND[np.maximum(t, 0)]  # [B, k, D]
        same = (lab[:, a] == lab[:, b]) & (lab[:, a] >= 0)
        depth = np.cumprod(same, axis=2).sum(axis=2)
        depth[(t[:, a] < 0) | (t[:, b] < 0)] = -1
        out[lo : lo + block] = depth
    return out


def hierarchy(
    taxonomy_ND: np.ndarray,
    top_idx_Kk: np.ndarray,
    group_sizes: Sequence[int] | None = None,
    valid_K: np.ndarray | None = None,
) -> Hierarchy:
    """LCA depth summaries per neuron and per Matryoshka group (``group_sizes`` sum to K).

    ``valid_K`` (bool) restricts the group means to some neurons (e.g. not dead ones).
    """
    depth_KP = lca_depth(np.asarray(taxonomy_ND), top_idx_Kk)
    n_k, d_max = depth_KP.shape[0], int(np.asarray(taxonomy_ND).shape[1])
    ok = depth_KP >= 0
    n_ok = ok.sum(axis=1)
    mean = np.where(n_ok > 0, np.where(ok, depth_KP, 0).sum(1) / np.maximum(n_ok, 1), np.nan)
    hist = np.stack([((depth_KP == d) & ok).sum(1) for d in range(d_max + 1)], axis=1)
    majority = np.where(n_ok > 0, hist.argmax(axis=1), -1)
    sizes = list(group_sizes) if group_sizes else [n_k]
    if sum(sizes) != n_k:
        raise ValueError(f"group sizes {sizes} sum to {sum(sizes)}, but there are {n_k} neurons")
    valid = (n_ok > 0) if valid_K is None else (np.asarray(valid_K, bool) & (n_ok > 0))
    g_mean, g_major = [], []
    for lo, hi in zip(np.cumsum([0, *sizes[:-1]]), np.cumsum(sizes), strict=True):
        v = valid[lo:hi]
        g_mean.append(float(mean[lo:hi][v].mean()) if v.any() else np.nan)
        g_major.append(float(majority[lo:hi][v].mean()) if v.any() else np.nan)
    return Hierarchy(mean, majority, np.array(g_mean), np.array(g_major))
