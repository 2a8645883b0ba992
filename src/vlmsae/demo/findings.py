"""The paper's findings, measured on the demo with intervals and untrained baselines.

Each finding is a statistic over a population (neurons pooled over SAEs and seeds, or
units of SAEs such as one seed of one configuration) with a seeded bootstrap interval. A
correlation reproduces only where its interval excludes 0 (it is a check of the score, so
the untrained SAEs' ρ is shown, not required). A claim about trained SAEs reproduces only
where its interval lies above both its null value and the mean the untrained SAEs of the
same configurations reach (the larger of the two kinds, ``init`` and ``random``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vlmsae.demo.analysis import SAEScores
from vlmsae.demo.baselines import KINDS
from vlmsae.demo.claims import testable_claims
from vlmsae.demo.config import DemoConfig
from vlmsae.demo.numbers import Numbers
from vlmsae.demo.truth import Finding
from vlmsae.metrics.stats import bootstrap, spearman_interval

UnitFn = Callable[[list[SAEScores]], list[float]]
"""SAEs of one kind → one value per unit (e.g. per seed of a configuration)."""


def _fmt(v: float) -> str:
    return f"{v:.3f}" if np.isfinite(v) else "–"


def _pairs(
    saes: list[SAEScores], key: Callable, first: Callable, second: Callable
) -> list[tuple[SAEScores, SAEScores]]:
    """Pairs of SAEs sharing ``key``: the one where ``first`` holds, the one where ``second``."""
    by: dict[Any, dict[int, SAEScores]] = {}
    for s in saes:
        side = 0 if first(s) else 1 if second(s) else None
        if side is not None:
            by.setdefault(key(s), {})[side] = s
    return [(v[0], v[1]) for v in by.values() if len(v) == 2]


class _Measure:
    """Trained SAEs, their baselines, and the bootstrap settings of one demo run."""

    def __init__(self, cfg: DemoConfig, nums: Numbers) -> None:
        self.cfg, self.nums = cfg, nums
        self.trained = nums.scores.saes
        self.base = nums.scores.baselines

    def num(self, s: SAEScores, key: str) -> float:
        if s.kind == "trained":
            return self.nums.trained[s.run.name].get(key, float("nan"))
        return self.nums.baseline[s.run.config][s.kind].get(key, float("nan"))

    def diffs(self, pairs: list[tuple], key: str) -> list[float]:
        return [self.num(a, key) - self.num(b, key) for a, b in pairs]

    def baseline(self, fn: UnitFn) -> float:
        """The larger over the untrained kinds of the mean of ``fn``'s unit values."""
        means = []
        for kind in KINDS:
            vals = np.asarray(fn([s for s in self.base if s.kind == kind]), np.float64)
            if np.isfinite(vals).any():
                means.append(float(np.nanmean(vals)))
        return max(means) if means else float("nan")

    def claim(
        self, claim: str, fn: UnitFn, null: float, what: str, *, use_baseline: bool = True
    ) -> tuple[Finding, dict]:
        """The claim holds where the interval of ``fn``'s unit values lies above ``null`` and
        (``use_baseline``: an MS statistic) above the untrained SAEs' mean."""
        got = bootstrap(fn(self.trained), seed=self.cfg.seed, n_boot=self.cfg.n_boot)
        base = self.baseline(fn)
        bar = max(null, base) if use_baseline and np.isfinite(base) else null
        evidence = f"{what}: {got}; untrained SAEs {_fmt(base)}"
        evidence += f", so it must clear {_fmt(bar)}" if use_baseline else ""
        return Finding(claim, got.above(bar), evidence), {
            "interval": got.to_dict(),
            "baseline": base,
            "bar": bar,
        }

    def correlation(
        self, field: str, claim: str, minimum: float, against: str = "ms_dino"
    ) -> tuple[Finding, dict]:
        def rho(saes: list[SAEScores]):
            saes = [s for s in saes if s.run.k == self.cfg.k]
            a = np.concatenate([getattr(s.neurons, against) for s in saes])
            b = np.concatenate([getattr(s.neurons, field) for s in saes])
            return spearman_interval(a, b, seed=self.cfg.seed, n_boot=self.cfg.n_boot)

        got = rho(self.trained)
        base = {k: rho([s for s in self.base if s.kind == k]).estimate for k in KINDS}
        holds = got.excludes(0.0) and got.estimate >= minimum
        evidence = f"ρ = {got} over neurons of the SAEs at k = {self.cfg.k}; untrained: " + (
            ", ".join(f"{k} ρ = {_fmt(v)}" for k, v in base.items())
        )
        return Finding(claim, holds, evidence), {"interval": got.to_dict(), "baseline": base}


def findings(cfg: DemoConfig, nums: Numbers) -> tuple[list[Finding], dict[str, Any]]:
    """Every claim with its interval, baseline and verdict; and the numbers for summary.json."""
    m = _Measure(cfg, nums)
    at_k = lambda saes: [s for s in saes if s.run.k == cfg.k]  # noqa: E731
    lo_e, hi_e = min(cfg.expansions), max(cfg.expansions)
    k_lo, k_hi = min(cfg.k_sweep), max(cfg.k_sweep)

    def share(saes):
        return [m.num(s, "share_above_median_raw_dino") for s in at_k(saes)]

    def growth(key: str) -> UnitFn:
        return lambda saes: m.diffs(
            _pairs(
                at_k(saes),
                lambda s: (s.run.hook, s.run.arch, s.run.seed),
                lambda s: s.run.expansion == hi_e,
                lambda s: s.run.expansion == lo_e,
            ),
            key,
        )

    def k_pairs(saes):
        sweep_hook = next((s.run.hook for s in saes if s.run.k == k_lo), None)
        sweep = [s for s in saes if s.run.arch == "batchtopk" and s.run.hook == sweep_hook]
        exp = max((s.run.expansion for s in sweep if s.run.k == k_lo), default=None)
        sweep = [s for s in sweep if s.run.expansion == exp]
        return _pairs(
            sweep, lambda s: s.run.seed, lambda s: s.run.k == k_lo, lambda s: s.run.k == k_hi
        )

    def depth_gap(saes):
        mats = [s for s in at_k(saes) if s.run.arch == "matryoshka" and len(s.depth_by_group) > 1]
        return [s.depth_by_group[-1] - s.depth_by_group[0] for s in mats]

    def mat_gain(saes):
        pairs = _pairs(
            at_k(saes),
            lambda s: (s.run.hook, s.run.expansion, s.run.seed),
            lambda s: s.run.arch == "matryoshka",
            lambda s: s.run.arch == "batchtopk",
        )
        return m.diffs(pairs, "mean_ms_dino")

    robust = f"Max MS (toy DINOv2) over neurons active on ≥ {cfg.min_active} images"
    per_run = "per hook × arch × seed"
    measured = {
        "spearman_dino_oracle": m.correlation(
            "ms_oracle",
            "MS under the independent embedder (toy DINOv2) tracks MS under the oracle "
            "(Spearman ≥ 0.7)",
            0.7,
        ),
        "spearman_clip_oracle": m.correlation(
            "ms_oracle",
            "MS under the decomposed model's own embedding (toy CLIP) tracks MS under the "
            "oracle (Spearman ≥ 0.7)",
            0.7,
            against="ms_clip",
        ),
        "spearman_ms_purity": m.correlation(
            "purity",
            "A neuron's MS (toy DINOv2) tracks the label purity of its top images (ρ > 0)",
            0.0,
        ),
        "share_above_median_raw": m.claim(
            "Most SAE neurons score above the median raw neuron (MS, toy DINOv2)",
            share,
            0.5,
            "share per SAE",
        ),
        "max_ms_growth": m.claim(
            "Max MS (toy DINOv2) grows with expansion (the paper's max over all neurons)",
            growth("max_ms_dino"),
            0.0,
            f"×{hi_e} − ×{lo_e} {per_run}",
        ),
        "max_ms_active_growth": m.claim(
            f"{robust} grows with expansion",
            growth("max_ms_active_dino"),
            0.0,
            f"×{hi_e} − ×{lo_e} {per_run}",
        ),
        "smaller_k_higher_ms": m.claim(
            "Smaller K gives higher mean MS (toy DINOv2)",
            lambda saes: m.diffs(k_pairs(saes), "mean_ms_dino"),
            0.0,
            f"K {k_lo} − K {k_hi} per seed",
        ),
        "smaller_k_lower_r2": m.claim(
            "Smaller K gives lower R²",
            lambda saes: [-d for d in m.diffs(k_pairs(saes), "r2")],
            0.0,
            f"R²(K {k_hi}) − R²(K {k_lo}) per seed",
            use_baseline=False,
        ),
        "matryoshka_first_group_shallower": m.claim(
            "Matryoshka's first group is shallower than its last",
            depth_gap,
            0.0,
            "last − first group mean LCA depth per SAE",
        ),
        "matryoshka_ge_batchtopk": m.claim(
            "Matryoshka ≥ BatchTopK in mean MS (toy DINOv2) at equal width",
            mat_gain,
            0.0,
            "Matryoshka − BatchTopK per hook × expansion × seed",
        ),
    }
    measured.update(testable_claims(cfg, m, growth))
    return [f for f, _ in measured.values()], {k: d for k, (_, d) in measured.items()}
