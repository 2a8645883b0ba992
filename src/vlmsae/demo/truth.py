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
    """Purity of each neuron's top images: over the attributes, the largest fraction of its
    top images that share one value.

    Args:
        top_images_KT: image indices ``[K, T]`` (``-1`` pads neurons with fewer images).
        labels: attribute name -> integer value per image ``[N]``.

    Returns ``float64 [K]``; NaN for a neuron without top images.
    """
    purity_K = np.full(top_images_KT.shape[0], np.nan)
    for k, row in enumerate(top_images_KT):
        row = row[row >= 0]
        if row.size == 0:
            continue
        best = 0.0
        for values in labels.values():
            counts = np.bincount(values[row])
            best = max(best, counts.max() / row.size)
        purity_K[k] = best
    return purity_K


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


def increasing_share(values_by_x: Mapping[Any, Sequence[float]]) -> tuple[int, int]:
    """How many series grow from their first to their last point: ``(growing, total)``.

    ``values_by_x`` maps a series name to its values ordered by x (e.g. expansion).
    """
    growing = total = 0
    for series in values_by_x.values():
        finite = [v for v in series if np.isfinite(v)]
        if len(finite) >= 2:
            total += 1
            growing += finite[-1] > finite[0]
    return growing, total
