"""The paper's "max MS" and robust companions to it.

The paper's table reports the largest MS over all neurons. A neuron active on two
near-identical images scores 1.0, so with many neurons the maximum mostly counts such
neurons. Beside it this module reports the maximum over neurons active on at least
``min_active`` images (the paper's own rule for uniqueness and hierarchy, 16) and the 99th
percentile, each with the neuron that attains it and how many images it fires on.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from vlmsae.metrics.top_images import MIN_ACTIVE

KEYS = {"max": "max_ms", "max_active": "max_ms_active", "p99": "p99_ms"}
"""Each statistic's key in ``summary.json`` records, in the order tables show them."""
LABELS = {
    "max": "max MS over all neurons (the paper's statistic)",
    "max_active": "max MS over neurons active on >= {min_active} images",
    "p99": "99th percentile of MS over all neurons",
}


class Attained(NamedTuple):
    """One statistic and the neuron that attains it."""

    value: float | None
    """The statistic (None where no neuron qualifies)."""
    neuron: int | None
    """The neuron attaining it (the lowest id among ties)."""
    n_active: int | None
    """Images that neuron is active on."""


def _attained(ms: np.ndarray, n_active: np.ndarray, value: float | None) -> Attained:
    if value is None:
        return Attained(None, None, None)
    k = int(np.flatnonzero(ms == value)[0])
    return Attained(float(value), k, int(n_active[k]))


def max_ms_stats(
    ms: np.ndarray, n_active: np.ndarray, min_active: int = MIN_ACTIVE
) -> dict[str, Attained]:
    """``{"max", "max_active", "p99"}`` → :class:`Attained`, NaN scores left out.

    ``p99`` is the empirical quantile (``inverted_cdf``: a score some neuron has)."""
    ms = np.asarray(ms, np.float64)
    n_active = np.asarray(n_active, np.int64)
    if ms.shape != n_active.shape:
        raise ValueError(f"{ms.shape[0]} scores but {n_active.shape[0]} activity counts")
    ok = np.isfinite(ms)
    active = ok & (n_active >= min_active)
    top = float(ms[ok].max()) if ok.any() else None
    top_active = float(ms[active].max()) if active.any() else None
    p99 = float(np.quantile(ms[ok], 0.99, method="inverted_cdf")) if ok.any() else None
    masked = np.where(active, ms, np.nan)  # the active maximum is attained by an active neuron
    return {
        "max": _attained(ms, n_active, top),
        "max_active": _attained(masked, n_active, top_active),
        "p99": _attained(ms, n_active, p99),
    }


def max_ms_summary(
    ms: np.ndarray, n_active: np.ndarray, min_active: int = MIN_ACTIVE
) -> dict[str, Any]:
    """JSON-ready :func:`max_ms_stats`: flat keys for tables (``max_ms``, ``max_ms_active``,
    ``p99_ms`` and each one's ``_neuron`` / ``_n_active``) plus ``min_active`` and the
    ``rule`` in words."""
    out: dict[str, Any] = {"min_active": int(min_active)}
    for name, got in max_ms_stats(ms, n_active, min_active).items():
        key = KEYS[name]
        out[key], out[f"{key}_neuron"], out[f"{key}_n_active"] = got
    out["rule"] = {k: v.format(min_active=min_active) for k, v in LABELS.items()}
    return out
