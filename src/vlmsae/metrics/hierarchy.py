"""Hierarchy depth of neurons: how deep in a taxonomy their top images agree.

For every neuron, the lowest common ancestor (LCA) depth of each of the C(k, 2) pairs of
its top images (0: different roots, D: same leaf), summarised by the mean and the
majority depth, then averaged per Matryoshka group as in the paper's analysis.

The paper's code fixes four conventions, all defaults here: only neurons whose 16th top
activation is non-zero count (``min_active``); each neuron's mean depth is rounded to an
integer (half to even, like Python's ``round``) before the group mean (``round_depth``);
a tie for the majority depth goes to the depth met first, with the pairs enumerated as
``itertools.combinations`` over the top images from the weakest to the strongest (the
order of ``argsort(a)[-k:]``); iNaturalist class names are split at every underscore.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from vlmsae.metrics.top_images import MIN_ACTIVE, TopImages, kept_neurons

INAT_LEVELS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


def _looks_inat(name: str) -> bool:
    parts = name.split("_")
    return len(parts) > len(INAT_LEVELS) and parts[0].isdigit()


def inat_label_path(name: str) -> tuple[str, ...]:
    """``NNNNN_Kingdom_Phylum_Class_Order_Family_Genus_species`` → its taxonomy path.

    Split as the paper's code splits it: every underscore-separated part after the number
    is one level, so a name with more parts than the 7 levels (an epithet holding an
    underscore, a subspecies) gives a longer path, and two images of one such class share
    more than 7 levels."""
    parts = name.split("_")
    if not _looks_inat(name):
        raise ValueError(
            f"{name!r} is not an iNaturalist class folder name "
            "(NNNNN_Kingdom_Phylum_Class_Order_Family_Genus_species)"
        )
    return tuple(parts[1:])


def label_paths_from_images(paths: Sequence[str], inat: bool | None = None) -> list[tuple]:
    """Taxonomy path of each image from its class folder (parent directory) name.

    iNaturalist names are split into their levels; other folder names are one-level
    labels. ``inat=None`` detects iNaturalist names.
    """
    names = [Path(p).parent.name for p in paths]
    if inat is None:
        inat = bool(names) and all(_looks_inat(n) for n in names)
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
    """``int64 [K]``: most frequent LCA depth, ties to the first met (-1: fewer than 2)."""
    group_mean_depth: np.ndarray
    """``float64 [G]``: mean over each group's kept neurons of ``mean_depth``, rounded per
    neuron first when ``round_depth`` (the paper's convention)."""
    group_majority_depth: np.ndarray
    """``float64 [G]``: mean of ``majority_depth`` over each group's kept neurons."""
    kept: np.ndarray
    """``bool [K]``: neurons that enter the group means."""


def lca_depth(taxonomy_ND: np.ndarray, top_idx_Kk: np.ndarray, block: int = 4096) -> np.ndarray:
    """``int [K, P]`` LCA depth of every pair of top images, in ``combinations`` order
    over the columns (-1 for pairs with a missing image)."""
    top = np.asarray(top_idx_Kk, np.int64)
    a, b = np.triu_indices(top.shape[1], 1)  # row-major: the order of itertools.combinations
    out = np.empty((len(top), len(a)), np.int64)
    for lo in range(0, len(top), block):
        t = top[lo : lo + block]
        lab = taxonomy_ND[np.maximum(t, 0)]  # [B, k, D]
        same = (lab[:, a] == lab[:, b]) & (lab[:, a] >= 0)
        depth = np.cumprod(same, axis=2).sum(axis=2)
        depth[(t[:, a] < 0) | (t[:, b] < 0)] = -1
        out[lo : lo + block] = depth
    return out


def majority_first_met(depth_KP: np.ndarray, d_max: int) -> np.ndarray:
    """``int64 [K]``: the most frequent non-negative value of each row; among tied counts the
    one that occurs first in the row (``Counter.most_common(1)``); -1 for an empty row."""
    ok = depth_KP >= 0
    n_p = depth_KP.shape[1]
    hist, first = [], []
    pos = np.arange(n_p)
    for d in range(d_max + 1):
        hit = (depth_KP == d) & ok
        hist.append(hit.sum(1))
        first.append(np.where(hit, pos, n_p).min(axis=1, initial=n_p))
    hist_KD, first_KD = np.stack(hist, axis=1), np.stack(first, axis=1)
    tied = hist_KD == hist_KD.max(axis=1, keepdims=True)
    best = np.where(tied, first_KD, n_p + 1).argmin(axis=1)
    return np.where(ok.any(axis=1), best, -1)


def hierarchy(
    taxonomy_ND: np.ndarray,
    top: TopImages | np.ndarray,
    group_sizes: Sequence[int] | None = None,
    valid_K: np.ndarray | None = None,
    *,
    min_active: int = MIN_ACTIVE,
    round_depth: bool = True,
) -> Hierarchy:
    """LCA depth summaries per neuron and per Matryoshka group (``group_sizes`` sum to K).

    Args:
        taxonomy_ND: :func:`encode_taxonomy` of the images' label paths.
        top: :class:`TopImages` (best first, as :func:`top_images` returns them) or their
            ``int [K, k]`` indices; pairs are enumerated from the weakest image up.
        valid_K: (bool) a further restriction of the group means (e.g. a group of interest).
        min_active: the paper's rule (16): neurons whose ``min_active``-th top activation is
            0 leave the group means; 0 keeps every neuron with at least one pair.
        round_depth: round each neuron's mean depth to an integer before the group mean,
            as the paper's code does; False averages the exact means.
    """
    kept_K = kept_neurons(top, min_active)
    idx = np.asarray(top.indices if isinstance(top, TopImages) else top, np.int64)
    tax = np.asarray(taxonomy_ND)
    depth_KP = lca_depth(tax, idx[:, ::-1])  # weakest first, as the paper's argsort[-k:]
    n_k, d_max = depth_KP.shape[0], int(tax.shape[1])
    ok = depth_KP >= 0
    n_ok = ok.sum(axis=1)
    mean = np.where(n_ok > 0, np.where(ok, depth_KP, 0).sum(1) / np.maximum(n_ok, 1), np.nan)
    majority = majority_first_met(depth_KP, d_max)
    sizes = list(group_sizes) if group_sizes else [n_k]
    if sum(sizes) != n_k:
        raise ValueError(f"group sizes {sizes} sum to {sum(sizes)}, but there are {n_k} neurons")
    valid = kept_K & (n_ok > 0)
    if valid_K is not None:
        valid &= np.asarray(valid_K, bool)
    per_neuron = np.round(mean) if round_depth else mean  # np.round: half to even, as round()
    g_mean, g_major = [], []
    for lo, hi in zip(np.cumsum([0, *sizes[:-1]]), np.cumsum(sizes), strict=True):
        v = valid[lo:hi]
        g_mean.append(float(per_neuron[lo:hi][v].mean()) if v.any() else np.nan)
        g_major.append(float(majority[lo:hi][v].mean()) if v.any() else np.nan)
    return Hierarchy(mean, majority, np.array(g_mean), np.array(g_major), valid)
