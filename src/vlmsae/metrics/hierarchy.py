"""Depth in a taxonomy of the concepts neurons respond to (the paper's Matryoshka analysis).

A taxonomy is a matrix of label paths ``[N, L]`` (one row per image, level 0 the root
side, e.g. kingdom … species). For each neuron, the lowest common ancestor (LCA) of every
pair of its top images has a depth: the number of leading levels the two paths share
(0 = nothing in common, L = same leaf). A neuron's depth is the mean (and majority) over
its C(n, 2) pairs; Matryoshka groups are compared by their neurons' mean depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import NamedTuple

import numpy as np


class LCADepths(NamedTuple):
    mean: np.ndarray
    """``float64 [K]``: mean LCA depth over the pairs of top images (NaN: < 2 images)."""
    majority: np.ndarray
    """``float64 [K]``: most frequent LCA depth (ties: the deeper; NaN: < 2 images)."""


def parse_taxonomy_name(class_dir: str, sep: str = "_") -> tuple[str, ...]:
    """Levels of an iNaturalist-style class folder name: ``"00012_Animalia_..._species"``
    → ``("Animalia", ..., "species")`` (a leading numeric id is dropped)."""
    parts = class_dir.split(sep)
    if parts and parts[0].isdigit():
        parts = parts[1:]
    if not parts or not all(parts):
        raise ValueError(f"cannot read taxonomy levels from class folder name {class_dir!r}")
    return tuple(parts)


def label_paths(paths: Sequence[Sequence[str]]) -> np.ndarray:
    """Integer-coded taxonomy ``int64 [N, L]`` from label paths (one per image).

    Each level's code identifies the whole prefix up to that level, so two images share
    level ``l`` only when they share every level above it. Paths must have equal length.
    """
    depth = {len(p) for p in paths}
    if len(depth) != 1:
        raise ValueError(f"taxonomy paths have different lengths {sorted(depth)}")
    (n_levels,) = depth
    out = np.empty((len(paths), n_levels), np.int64)
    for level in range(n_levels):
        codes: dict[tuple[str, ...], int] = {}
        out[:, level] = [codes.setdefault(tuple(p[: level + 1]), len(codes)) for p in paths]
    return out


def lca_depths(top_KT: np.ndarray, paths_NL: np.ndarray, block: int = 4096) -> LCADepths:
    """LCA depth statistics of each neuron's top images (``-1`` entries are ignored).

    Args:
        top_KT: top image indices ``[K, T]`` (``TopImages.images``).
        paths_NL: integer-coded taxonomy ``[N, L]`` (:func:`label_paths`).
        block: neurons processed at a time (bounds memory).
    """
    top_KT = np.asarray(top_KT)
    k, t = top_KT.shape
    n_levels = paths_NL.shape[1]
    pairs = list(combinations(range(t), 2))
    if not pairs:
        nan = np.full(k, np.nan)
        return LCADepths(nan, nan.copy())
    a_idx = np.array([p[0] for p in pairs])
    b_idx = np.array([p[1] for p in pairs])
    mean, majority = np.full(k, np.nan), np.full(k, np.nan)
    for k0 in range(0, k, block):  # blocks of neurons bound the [block, pairs, L] arrays
        a, b = top_KT[k0 : k0 + block, a_idx], top_KT[k0 : k0 + block, b_idx]
        valid = (a >= 0) & (b >= 0)
        same = paths_NL[np.maximum(a, 0)] == paths_NL[np.maximum(b, 0)]
        depth = np.cumprod(same, axis=2, dtype=np.int8).sum(axis=2, dtype=np.int16)
        n_valid = valid.sum(axis=1)
        ok = n_valid > 0
        total = np.where(valid, depth, 0).sum(axis=1)
        mean[k0 : k0 + block][ok] = total[ok] / n_valid[ok]
        counts = np.stack(
            [((depth == d) & valid).sum(axis=1) for d in range(n_levels + 1)], axis=1
        )
        deepest_mode = n_levels - np.argmax(counts[:, ::-1], axis=1)
        majority[k0 : k0 + block][ok] = deepest_mode[ok]
    return LCADepths(mean, majority)


def depth_by_group(depth_K: np.ndarray, group_sizes: Sequence[int]) -> list[float]:
    """Mean of ``depth_K`` over each Matryoshka group's neurons (NaN-aware)."""
    if sum(group_sizes) != len(depth_K):
        raise ValueError(f"group sizes sum to {sum(group_sizes)}, but there are {len(depth_K)} neurons")
    out, start = [], 0
    for size in group_sizes:
        block = depth_K[start : start + size]
        out.append(float(np.nanmean(block)) if np.isfinite(block).any() else float("nan"))
        start += size
    return out
