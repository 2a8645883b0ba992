"""Statistics helpers of the findings: intervals hold their estimate, NaN is left out, the
bootstrap is seeded, Spearman's ρ agrees with SciPy's."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

from vlmsae.metrics.stats import bootstrap, bootstrap_strata, mean_std, spearman_interval

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
maybe_nan = st.one_of(finite, st.just(float("nan")), st.just(float("inf")))


@settings(max_examples=60, deadline=None)
@given(st.lists(maybe_nan, min_size=0, max_size=40), st.integers(0, 2**31 - 1))
def test_bootstrap_mean_interval_holds_the_estimate(values, seed):
    res = bootstrap(values, seed=seed, n_boot=200)
    x = np.array(values, np.float64)
    x = x[np.isfinite(x)]
    assert res.n == x.size
    if x.size == 0:
        assert np.isnan(res.estimate) and np.isnan(res.lo)
        return
    assert res.estimate == pytest.approx(x.mean(), rel=1e-12, abs=1e-9)
    if x.size == 1:
        assert np.isnan(res.lo) and not res.excludes(0.0)
        return
    tol = 1e-9 * (1 + np.abs(x).max())
    assert res.lo - tol <= res.estimate <= res.hi + tol
    assert x.min() - tol <= res.lo <= res.hi <= x.max() + tol
    assert bootstrap(values, seed=seed, n_boot=200) == res  # seeded: reproducible


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(maybe_nan, maybe_nan), min_size=0, max_size=30))
def test_spearman_interval_matches_scipy_and_stays_in_range(pairs):
    a = np.array([p[0] for p in pairs], np.float64)
    b = np.array([p[1] for p in pairs], np.float64)
    res = spearman_interval(a, b, n_boot=100)
    ok = np.isfinite(a) & np.isfinite(b)
    assert res.n == ok.sum()
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        assert np.isnan(res.lo)
        return
    assert res.estimate == pytest.approx(spearmanr(a[ok], b[ok]).statistic, abs=1e-9)
    assert -1 - 1e-9 <= res.lo <= res.hi <= 1 + 1e-9


def test_a_correlation_of_noise_does_not_exclude_zero_and_a_real_one_does():
    x = np.arange(-200.0, 201.0)
    u_shape = spearman_interval(x, x**2)  # dependent, but with no monotone trend: ρ = 0
    assert u_shape.estimate == pytest.approx(0.0, abs=1e-12)
    assert not u_shape.excludes(0.0) and u_shape.lo < 0 < u_shape.hi
    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    real = spearman_interval(x, x + 0.5 * rng.normal(size=400))
    assert real.excludes(0.0) and real.above(0.5)
    assert "95% CI" in str(real)


def test_mean_std_over_seeds():
    m = mean_std([1.0, 2.0, np.nan, 3.0])
    assert (m.mean, m.std, m.n) == (2.0, 1.0, 3)
    assert str(m) == "2.000 ± 1.000"
    one = mean_std([0.5])
    assert one.mean == 0.5 and np.isnan(one.std) and str(one) == "0.500"
    assert mean_std([]).n == 0 and str(mean_std([np.nan])) == "–"


def test_bootstrap_other_statistics():
    x = np.arange(10.0)
    med = bootstrap(x, np.median, seed=1)
    assert med.estimate == 4.5 and med.lo <= 4.5 <= med.hi
    plain = bootstrap(x, lambda v: float(np.max(v)), seed=1)  # no axis=: looped
    assert plain.estimate == 9.0 and plain.hi == 9.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=30), st.integers(0, 2**31 - 1))
def test_one_stratum_is_the_plain_bootstrap(values, seed):
    plain = bootstrap(values, seed=seed, n_boot=200)
    for nested in (False, True):  # one stratum: nothing to resample above the values
        got = bootstrap_strata([values], nested=nested, seed=seed, n_boot=200)
        assert got.n == plain.n and got.estimate == pytest.approx(plain.estimate)
        assert (got.lo, got.hi) == pytest.approx((plain.lo, plain.hi), abs=1e-9)


def test_strata_keep_their_sizes_and_their_spread_only():
    rng = np.random.default_rng(0)
    # two seeds far apart: pooled resampling mixes their shares, stratified cannot
    strata = [rng.normal(0, 0.1, 50), rng.normal(10, 0.1, 50)]
    got = bootstrap_strata(strata, seed=1)
    pooled = bootstrap(np.concatenate(strata), seed=1)
    assert got.estimate == pytest.approx(np.concatenate(strata).mean())
    assert got.n == 100 and got.lo <= got.estimate <= got.hi
    assert (got.hi - got.lo) < 0.2 * (pooled.hi - pooled.lo)
    # constant strata: nothing to resample, a zero-width interval at the pooled mean
    const = bootstrap_strata([np.ones(3), np.zeros(5), [np.nan]])
    assert const.estimate == const.lo == const.hi == pytest.approx(3 / 8) and const.n == 8
    assert np.isnan(bootstrap_strata([[], [np.nan]]).estimate)
    one = bootstrap_strata([[2.0], []])
    assert one.estimate == 2.0 and np.isnan(one.lo)


def test_nested_strata_carry_the_spread_between_replicates():
    """Seeds that disagree: the two-level bootstrap's interval spans them, the stratified one
    (strata held fixed) does not; single-value strata get an interval only when nested."""
    rng = np.random.default_rng(0)
    strata = [rng.normal(0, 0.1, 50), rng.normal(10, 0.1, 50), rng.normal(5, 0.1, 50)]
    fixed = bootstrap_strata(strata, seed=2)
    nested = bootstrap_strata(strata, nested=True, seed=2)
    assert fixed.estimate == nested.estimate == pytest.approx(5, abs=0.05)
    assert fixed.hi - fixed.lo < 0.1 and nested.lo < 2 and nested.hi > 8
    ones = bootstrap_strata([[1.0], [0.0], [1.0]], nested=True, seed=0)
    assert ones.lo == 0.0 and ones.hi == 1.0 and ones.n == 3
    assert bootstrap_strata([[1.0], [0.0], [1.0]]).lo == pytest.approx(2 / 3)
