"""Per-SAE numbers of the demo and their aggregation over seeds.

Every trained SAE gives one dict of numbers (R², L0, dead fraction, the share of latents
alive (active on a held-out image) and kept (active on ``min_active``), the MS statistics under
every embedding (the independent toy DINOv2 first) with the neuron attaining each, the median
and 90th percentile of MS over the kept neurons, depth per group, uniqueness); a
configuration's numbers are their mean ± std over seeds; the untrained baselines give the
same numbers for the same configurations.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np

from vlmsae.demo.analysis import NeuronScores, SAEScores, Scores
from vlmsae.metrics.maxms import max_ms_stats
from vlmsae.metrics.stats import MeanStd, mean_std

STAT_LABELS = {
    "max_ms": "max MS (paper: all neurons)",
    "max_ms_active": "max MS (active ≥ {m} images)",
    "p99_ms": "p99 MS",
}


def _nan(fn, a: np.ndarray) -> float:
    return float(fn(a)) if np.isfinite(a).any() else float("nan")


def sae_numbers(s: SAEScores, raw: NeuronScores, min_active: int) -> dict[str, float]:
    """The numbers of one SAE (trained or untrained) beside the raw neurons of its hook; NaN
    where undefined."""
    n = s.neurons
    out: dict[str, float] = {"r2": s.r2, "l0": s.l0, "dead_fraction": s.dead_fraction}
    kept = n.n_active >= min_active
    for emb, ms in (("dino", n.ms_dino), ("clip", n.ms_clip), ("oracle", n.ms_oracle)):
        out[f"mean_ms_{emb}"] = _nan(np.nanmean, ms)
        for q in (50, 90):  # percentiles over the kept neurons: a statistic width alone
            got = ms[kept & np.isfinite(ms)]  # does not raise (the max over more draws does)
            out[f"p{q}_ms_active_{emb}"] = float(np.percentile(got, q)) if got.size else np.nan
        for name, got in max_ms_stats(ms, n.n_active, min_active).items():
            key = {"max": "max_ms", "max_active": "max_ms_active", "p99": "p99_ms"}[name]
            out[f"{key}_{emb}"] = float("nan") if got.value is None else got.value
            out[f"{key}_{emb}_n_active"] = float("nan") if got.n_active is None else got.n_active
    for suffix, ms, raw_ms in (("", n.ms_clip, raw.ms_clip), ("_dino", n.ms_dino, raw.ms_dino)):
        defined = np.isfinite(ms)  # "": the toy CLIP's MS (the tables); _dino: the findings'
        median_raw = _nan(np.nanmedian, raw_ms)
        out[f"share_above_median_raw{suffix}"] = (
            float((ms[defined] > median_raw).mean()) if defined.any() else float("nan")
        )
    out["alive"] = float((n.n_active > 0).sum())
    out["alive_share"] = float((n.n_active > 0).mean())
    out["kept_share"] = float((n.n_active >= min_active).mean())
    for g, depth in enumerate(s.depth_by_group):
        out[f"depth_group{g + 1}"] = depth
    out.update(s.recovery or {})
    if s.groups is not None:
        for g, (counts, level, depth) in enumerate(zip(*s.groups, strict=True), 1):
            out[f"object_depth_group{g}"] = depth
            out[f"object_level_group{g}"] = level
            for what, c in counts.items():
                out[f"n_{what}_group{g}"] = float(c)
    if s.uniqueness is not None:
        out["uniqueness_n_pairs"] = s.uniqueness["n_pairs"]
        for t, c in s.uniqueness["pairs_above"].items():
            out[f"jaccard_above_{t}"] = c
    return out


def by_config(saes: Iterable[SAEScores]) -> dict[str, list[SAEScores]]:
    """Trained SAEs grouped by configuration (one entry per seed), in planned order."""
    groups: dict[str, list[SAEScores]] = defaultdict(list)
    for s in saes:
        groups[s.run.config].append(s)
    return dict(groups)


def aggregate(per_seed: list[dict[str, float]]) -> dict[str, MeanStd]:
    """Mean ± std over seeds of every number the seeds share."""
    keys = [k for k in per_seed[0] if all(k in d for d in per_seed)]
    return {k: mean_std([d[k] for d in per_seed]) for k in keys}


class Numbers:
    """Per-seed and aggregated numbers of a demo run, and its baselines."""

    def __init__(self, scores: Scores, min_active: int) -> None:
        self.min_active = min_active
        self.scores = scores
        raw = scores.raw
        self.trained = {
            s.run.name: sae_numbers(s, raw[s.run.hook], min_active) for s in scores.saes
        }
        self.configs = {
            c: aggregate([self.trained[s.run.name] for s in runs])
            for c, runs in by_config(scores.saes).items()
        }
        self.baseline: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
        for s in scores.baselines:
            self.baseline[s.run.config][s.kind] = sae_numbers(s, raw[s.run.hook], min_active)

    def seed_values(self, config: str, key: str) -> list[float]:
        """The per-seed values of ``key`` for one configuration."""
        runs = by_config(self.scores.saes)[config]
        return [self.trained[s.run.name].get(key, float("nan")) for s in runs]

    def summary(self) -> dict[str, Any]:
        """JSON-ready: per-seed numbers, per-configuration mean/std/n, baselines."""
        return {
            "saes": self.trained,
            "configs": {
                c: {k: v.to_dict() for k, v in agg.items()} for c, agg in self.configs.items()
            },
            "baselines": {c: dict(kinds) for c, kinds in self.baseline.items()},
            "min_active": self.min_active,
        }
