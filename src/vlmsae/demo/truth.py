"""Checks of the method against the toy world's ground truth.

Pure functions over arrays: label purity of a neuron's top images, rank correlations,
and the paper's qualitative findings, each reported as measured (holds or not).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import spearmanr


def label_purity(top_images_KT: np.ndarray, labels: Mapping[str, np.ndarray]) -> np.ndarray:
    """Purity of each neuron's top images: over the attributes and their values, the
    largest fraction of its top images that hold one value.

    Args:
        top_images_KT: image indices ``[K, T]`` (``-1`` pads neurons with fewer images).
        labels: attribute name -> the integer value of each image ``[N]``, or which values
            each image holds ``bool [N, V]`` (several where an image shows several objects).

    Returns ``float64 [K]``; NaN for a neuron without top images.
    """
    valid_KT = top_images_KT >= 0
    n_K = valid_KT.sum(1)
    safe_KT = np.where(valid_KT, top_images_KT, 0)
    best_K = np.zeros(top_images_KT.shape[0])
    for values in labels.values():
        held_KTV = _membership(values)[safe_KT] & valid_KT[:, :, None]
        best_K = np.maximum(best_K, held_KTV.sum(1).max(1, initial=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_K > 0, best_K / n_K, np.nan)


def _membership(values: np.ndarray) -> np.ndarray:
    """``bool [N, V]`` of integer values ``[N]`` (one-hot), or the membership matrix itself."""
    values = np.asarray(values)
    if values.ndim == 2:
        return values.astype(bool)
    return np.eye(int(values.max()) + 1 if values.size else 1, dtype=bool)[values]


def spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Spearman's rank correlation over the entries where both are finite, and their count."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan"), int(ok.sum())
    rho = spearmanr(a[ok], b[ok]).statistic
    return float(rho), int(ok.sum())


class Finding(NamedTuple):
    """One of the paper's claims, measured here."""

    claim: str
    holds: bool
    evidence: str


def finding_rows(findings: Sequence[Finding]) -> list[list[Any]]:
    return [[f.claim, "reproduced" if f.holds else "NOT reproduced", f.evidence] for f in findings]
