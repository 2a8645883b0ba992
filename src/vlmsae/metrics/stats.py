"""Small statistics for findings: mean ± std over seeds, bootstrap percentile intervals and
Spearman's correlation with a bootstrap interval. Pure numpy (SciPy for ranks), seeded,
NaN-aware: non-finite values are left out and counted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import rankdata

N_BOOT = 1000
LEVEL = 0.95


class MeanStd(NamedTuple):
    """Mean and sample standard deviation (ddof=1) of the finite values."""

    mean: float
    """NaN without finite values."""
    std: float
    """NaN with fewer than 2 finite values."""
    n: int
    """Finite values used."""

    def __str__(self) -> str:
        return self.format()

    def format(self, digits: int = 3) -> str:
        """``mean ± std`` to ``digits`` decimals (``mean`` alone for one value, ``–`` none)."""
        if not np.isfinite(self.mean):
            return "–"
        text = f"{self.mean:.{digits}f}"
        return text + (f" ± {self.std:.{digits}f}" if np.isfinite(self.std) else "")

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


class Interval(NamedTuple):
    """An estimate with a bootstrap percentile interval."""

    estimate: float
    """The statistic on the data itself (NaN where undefined)."""
    lo: float
    """Lower end of the interval (NaN where undefined)."""
    hi: float
    """Upper end."""
    n: int
    """Finite units (values or pairs) used."""
    level: float = LEVEL
    """Coverage of the interval."""

    def excludes(self, value: float = 0.0) -> bool:
        """True where the whole interval lies on one side of ``value``."""
        return bool(np.isfinite(self.lo) and (self.lo > value or self.hi < value))

    def above(self, value: float) -> bool:
        """True where the whole interval lies above ``value`` (False where undefined)."""
        return bool(np.isfinite(self.lo) and self.lo > value)

    def __str__(self) -> str:
        if not np.isfinite(self.estimate):
            return f"– (n={self.n})"
        if not np.isfinite(self.lo):
            return f"{self.estimate:.3f} (n={self.n})"
        pct = round(100 * self.level)
        return f"{self.estimate:.3f} [{self.lo:.3f}, {self.hi:.3f}] ({pct}% CI, n={self.n})"

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


def mean_std(values: Any) -> MeanStd:
    """Mean ± sample std of the finite entries of ``values``."""
    x = np.asarray(values, np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return MeanStd(float("nan"), float("nan"), 0)
    std = float(x.std(ddof=1)) if x.size > 1 else float("nan")
    return MeanStd(float(x.mean()), std, int(x.size))


def _percentiles(boot: np.ndarray, level: float) -> tuple[float, float]:
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap(
    values: Any,
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
) -> Interval:
    """``statistic`` of the finite ``values`` with a percentile bootstrap interval.

    ``statistic`` maps a 1-D array to a number (vectorised along axis 1 if it accepts
    ``axis=``; plain callables are looped). One value gives the estimate without an interval.
    """
    x = np.asarray(values, np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, level)
    est = float(statistic(x))
    if x.size < 2:
        return Interval(est, float("nan"), float("nan"), 1, level)
    rng = np.random.default_rng(seed)
    samples = x[rng.integers(0, x.size, size=(n_boot, x.size))]
    try:
        boot = np.asarray(statistic(samples, axis=1), np.float64)  # type: ignore[call-arg]
    except TypeError:
        boot = np.array([statistic(s) for s in samples], np.float64)
    return Interval(est, *_percentiles(boot, level), int(x.size), level)


def bootstrap_strata(
    strata: Any,
    *,
    nested: bool = False,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
) -> Interval:
    """The mean of all values of all ``strata`` (a sequence of 1-D arrays: the items of each
    seed, say) with a percentile bootstrap interval. Non-finite values are left out.

    ``nested=False`` resamples values *within* each stratum (a stratified bootstrap: every
    resample keeps each stratum; the strata themselves are held fixed). ``nested=True`` first
    resamples the strata (with replacement), then values within each one drawn (a two-level
    bootstrap: where the strata are replicates, such as seeds, their spread counts too).
    """
    groups = [np.asarray(g, np.float64).ravel() for g in strata]
    groups = [g[np.isfinite(g)] for g in groups]
    groups = [g for g in groups if g.size]
    n = sum(g.size for g in groups)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, level)
    est = float(np.concatenate(groups).mean())
    if n < 2:
        return Interval(est, float("nan"), float("nan"), n, level)
    rng = np.random.default_rng(seed)
    sums_GB = np.stack([g[rng.integers(0, g.size, size=(n_boot, g.size))].sum(1) for g in groups])
    if not nested:
        return Interval(est, *_percentiles(sums_GB.sum(0) / n, level), n, level)
    sizes_G = np.array([g.size for g in groups], np.float64)
    pick_BG = rng.integers(0, len(groups), size=(n_boot, len(groups)))
    picked_sums = np.take_along_axis(sums_GB.T, pick_BG, axis=1).sum(1)
    return Interval(est, *_percentiles(picked_sums / sizes_G[pick_BG].sum(1), level), n, level)


def _spearman_rows(a_BN: np.ndarray, b_BN: np.ndarray) -> np.ndarray:
    """Spearman's ρ of each row pair (average ranks for ties; NaN for a constant row)."""
    ra = rankdata(a_BN, axis=1)
    rb = rankdata(b_BN, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1.0), np.nan)


def spearman_interval(
    a: Any, b: Any, *, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0
) -> Interval:
    """Spearman's ρ over the entries where both are finite, with a bootstrap interval over
    those pairs (resampled together). Fewer than 3 pairs, or a constant side: NaN."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spearman needs equal lengths, got {a.size} and {b.size}")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = int(ok.sum())
    if n < 3:
        return Interval(float("nan"), float("nan"), float("nan"), n, level)
    est = float(_spearman_rows(a[None], b[None])[0])
    if not np.isfinite(est):
        return Interval(est, float("nan"), float("nan"), n, level)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    step = max(1, (1 << 22) // n)  # bounded memory: ~4M resampled pairs at a time
    boot = np.concatenate(
        [_spearman_rows(a[i], b[i]) for i in np.split(idx, range(step, n_boot, step))]
    )
    return Interval(est, *_percentiles(boot, level), n, level)
